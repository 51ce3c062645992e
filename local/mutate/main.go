// Command mutate plants known bugs in a scratch copy of the repository, one
// at a time, runs the tests that should catch each, and prints a table of
// caught and not caught. A mutation the tests do not catch is a guarantee
// nothing would defend. It exits 1 when any mutation survives or no longer
// applies (its snippet is gone from the code: update the list).
//
//	go run ./local/mutate [-run REGEXP] [-timeout 10m]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"invoicing/shared/testenv"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mutate:", err)
		os.Exit(1)
	}
}

type result struct {
	m       mutation
	outcome string // caught, NOT CAUGHT, does not apply, does not build
	took    time.Duration
	detail  string
}

func run() error {
	only := flag.String("run", "", "only the mutations whose name matches this regular expression")
	timeout := flag.Duration("timeout", 10*time.Minute, "limit for one mutation's tests")
	flag.Parse()
	var filter *regexp.Regexp
	if *only != "" {
		var err error
		if filter, err = regexp.Compile(*only); err != nil {
			return err
		}
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	scratch, err := os.MkdirTemp("", "invoicing-mutate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	if err := copyTracked(root, scratch); err != nil {
		return err
	}

	var results []result
	// The tests of this run name their databases and vhosts with a tag of
	// its own and keep their temporary files in a folder of its own, so
	// what a killed test leaves can be removed without touching other runs.
	tag := "m" + testenv.UniqueName("")
	tmp, err := os.MkdirTemp("", "invoicing-mutate-tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	env := append(os.Environ(), testenv.RunTagEnv+"="+tag, "TMPDIR="+tmp)
	for _, m := range mutations {
		if filter != nil && !filter.MatchString(m.Name) {
			continue
		}
		fmt.Fprintf(os.Stderr, "== %s (%s -run %s)\n", m.Name, m.Package, m.Run)
		r := try(scratch, m, *timeout, env)
		fmt.Fprintf(os.Stderr, "   %s in %s\n", r.outcome, r.took.Round(time.Second))
		// A test killed by its timeout runs no cleanup: remove what it left.
		if err := removeLeftovers(tag, tmp); err != nil {
			fmt.Fprintln(os.Stderr, "   cleaning up:", err)
		}
		results = append(results, r)
	}

	fmt.Println("| mutation | package | tests | result | time |")
	fmt.Println("|---|---|---|---|---|")
	caught := 0
	for _, r := range results {
		if r.outcome == "caught" {
			caught++
		}
		fmt.Printf("| %s | %s | %s | %s | %s |\n", r.m.Name, strings.TrimPrefix(r.m.Package, "./"), r.m.Run, r.outcome, r.took.Round(time.Second))
	}
	fmt.Printf("\n%d of %d mutations caught\n", caught, len(results))
	for _, r := range results {
		if r.outcome != "caught" && r.detail != "" {
			fmt.Printf("\n%s: %s\n%s\n", r.m.Name, r.outcome, r.detail)
		}
	}
	if caught != len(results) {
		return errors.New("some mutations were not caught")
	}
	return nil
}

// try applies m to the scratch copy, runs its tests and restores the file.
func try(scratch string, m mutation, timeout time.Duration, env []string) result {
	start := time.Now()
	path := filepath.Join(scratch, m.File)
	orig, err := os.ReadFile(path)
	if err != nil {
		return result{m: m, outcome: "does not apply", detail: err.Error()}
	}
	if n := bytes.Count(orig, []byte(m.Old)); n != 1 {
		return result{m: m, outcome: "does not apply", detail: fmt.Sprintf("snippet found %d times in %s, want once", n, m.File)}
	}
	mutated := bytes.Replace(orig, []byte(m.Old), []byte(m.New), 1)
	for _, e := range m.Also {
		if n := bytes.Count(mutated, []byte(e.Old)); n != 1 {
			return result{m: m, outcome: "does not apply", detail: fmt.Sprintf("snippet %q found %d times in %s, want once", e.Old, n, m.File)}
		}
		mutated = bytes.Replace(mutated, []byte(e.Old), []byte(e.New), 1)
	}
	if err := os.WriteFile(path, mutated, 0o644); err != nil {
		return result{m: m, outcome: "does not apply", detail: err.Error()}
	}
	defer os.WriteFile(path, orig, 0o644)

	vet := exec.Command("go", "vet", m.Package)
	vet.Dir, vet.Env = scratch, env
	if out, err := vet.CombinedOutput(); err != nil {
		return result{m: m, outcome: "does not build", took: time.Since(start), detail: tail(out)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-timeout", timeout.String(), "-run", m.Run, m.Package)
	cmd.Dir, cmd.Env = scratch, env
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	switch {
	case ctx.Err() != nil:
		return result{m: m, outcome: "caught", took: took, detail: "tests timed out"}
	case err != nil:
		return result{m: m, outcome: "caught", took: took}
	case bytes.Contains(out, []byte("no tests to run")):
		return result{m: m, outcome: "NOT CAUGHT", took: took, detail: "no test matched -run " + m.Run}
	}
	return result{m: m, outcome: "NOT CAUGHT", took: took, detail: tail(out)}
}

func tail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

func repoRoot() (string, error) {
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return "", fmt.Errorf("find the repository: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// copyTracked copies the files git tracks (as they are in the working tree)
// and the untracked ones it does not ignore.
func copyTracked(root, dst string) error {
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("list files: %w", err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, name))
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted in the working tree
		}
		if err != nil {
			return err
		}
		target := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		info, err := os.Stat(filepath.Join(root, name))
		if err != nil {
			return err
		}
		if err := os.WriteFile(target, b, info.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}

// removeLeftovers drops the databases and vhosts named with tag (see
// testenv.RunTagEnv) and empties tmp, the tests' temporary folder.
func removeLeftovers(tag, tmp string) error {
	dbPrefix, vhostPrefix := testenv.TestNamePrefixes(tag)
	dbs, err := testenv.ListDatabases(dbPrefix)
	if err != nil {
		return err
	}
	vhosts, err := testenv.ListVhosts(vhostPrefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range dbs {
		errs = append(errs, testenv.DropDatabase(n))
	}
	for _, n := range vhosts {
		errs = append(errs, testenv.Rabbitmqctl("delete_vhost", n))
	}
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(tmp, e.Name())))
	}
	return errors.Join(errs...)
}
