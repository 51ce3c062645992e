package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildMu sync.Mutex
	built   = map[string]string{}
	binDir  string
)

// Main runs a package's tests and removes the binaries they built.
// Packages whose tests call Binary use it as their TestMain.
func Main(m *testing.M) {
	dir, err := os.MkdirTemp("", "invoicing-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// Binary builds the main package at pkg (an import path such as
// "invoicing/functions/orders") once per test process and returns its path.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	if binDir == "" {
		t.Fatal("testenv.Binary needs TestMain to call testenv.Main")
	}
	out := filepath.Join(binDir, filepath.Base(pkg))
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

// Process is a running service binary.
type Process struct {
	cmd  *exec.Cmd
	URL  string
	Port int
	logs *LogBuffer
	done chan struct{}
	err  error
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := PickPort()
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	return port
}

// PickPort returns a loopback TCP port that was free a moment ago.
func PickPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Start runs bin with env (PORT is set to a free port) and waits until
// GET /health answers 200. The process is killed when the test ends.
func Start(t testing.TB, bin string, env map[string]string) *Process {
	t.Helper()
	p, err := StartProcess(bin, FreePort(t), env, nil, 30*time.Second)
	stopAtEnd(t, p, filepath.Base(bin), err)
	return p
}

// stopAtEnd kills p when the test ends, failing it on a data race report and
// showing p's output when it failed; it fails the test now when err is set.
func stopAtEnd(t testing.TB, p *Process, name string, err error) {
	t.Helper()
	if p != nil {
		t.Cleanup(func() {
			p.Kill()
			if strings.Contains(p.Logs(), "WARNING: DATA RACE") {
				t.Errorf("%s reported a data race", name)
			}
			if t.Failed() {
				t.Logf("%s output:\n%s", name, p.Logs())
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// StartProcess runs bin on port with env added to this process's
// environment, and waits up to timeout until GET /health answers 200. Its
// output goes to logs, or is kept for Logs when logs is nil. On a failure
// after the start it returns the process too, for its logs.
func StartProcess(bin string, port int, env map[string]string, logs *os.File, timeout time.Duration) (*Process, error) {
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p, err := launch(cmd, fmt.Sprintf("http://127.0.0.1:%d", port), port, logs)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-p.done:
			return p, fmt.Errorf("%s exited at start: %v\n%s", bin, p.err, p.Logs())
		default:
		}
		resp, err := http.Get(p.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("%s not healthy after %s\n%s", bin, timeout, p.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// launch starts cmd with its output going to logs, or kept for Logs when
// logs is nil.
func launch(cmd *exec.Cmd, url string, port int, logs *os.File) (*Process, error) {
	kept := &LogBuffer{}
	if logs != nil {
		cmd.Stdout, cmd.Stderr = logs, logs
	} else {
		cmd.Stdout, cmd.Stderr = kept, kept
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Process{cmd: cmd, URL: url, Port: port, logs: kept, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Logs returns what the process wrote so far.
func (p *Process) Logs() string { return p.logs.String() }

// Kill sends SIGKILL and waits for the process to exit.
func (p *Process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and returns the exit error (nil for exit 0), or an
// error when the process does not exit within timeout.
func (p *Process) Stop(timeout time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("process did not exit within %s of SIGTERM", timeout)
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) { _ = p.cmd.Process.Signal(sig) }

// PeakRSS returns the process's peak resident set size (VmHWM) in bytes.
func (p *Process) PeakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM for pid %d", p.cmd.Process.Pid)
}

// LogBuffer collects what a process or a logger writes, from any goroutine,
// so a test can wait on a log line instead of sleeping.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *LogBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *LogBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Count returns how many times text occurs in what was written.
func (s *LogBuffer) Count(text string) int { return strings.Count(s.String(), text) }

// Records returns the JSON log records whose message contains msg.
func (s *LogBuffer) Records(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(s.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && strings.Contains(fmt.Sprint(rec["msg"]), msg) {
			out = append(out, rec)
		}
	}
	return out
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }
