// Package testenv gives tests their own PostgreSQL database and RabbitMQ
// vhost on the real servers, a TCP proxy that can cut connections, and the
// service binaries built once per test process. Everything a test creates is
// removed when it ends.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/shared/postgres"
)

// Servers the tests use; override with TEST_DATABASE_URL and TEST_BROKER_URL.
var (
	adminDatabaseURL = envOr("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	brokerURL        = envOr("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// RequireServers skips the test under go test -short. make test never passes
// -short, so there every such test runs.
func RequireServers(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL and RabbitMQ; skipped with -short")
	}
}

// UniqueName returns prefix followed by random hex, safe as an identifier.
func UniqueName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// RunTagEnv names an environment variable that a harness running tests
// (local/mutate) sets to a tag of lowercase letters and digits: the names
// of the databases and vhosts those tests create then carry it, so the
// harness can remove what a killed test left without touching what other
// runs on the same servers own.
const RunTagEnv = "INVOICING_TEST_RUN_TAG"

// TestNamePrefixes returns the prefixes of the database and vhost names
// that Database and Vhost give under tag (see RunTagEnv).
func TestNamePrefixes(tag string) (database, vhost string) {
	if tag == "" {
		return "test_", "test-"
	}
	return "test_" + tag + "_", "test-" + tag + "-"
}

func runTag() string {
	tag := os.Getenv(RunTagEnv)
	for _, c := range tag {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return "" // not a tag this package made names with
		}
	}
	return tag
}

// Database creates an empty database for the test and drops it afterwards.
// It returns the database's URL.
func Database(t testing.TB) string {
	t.Helper()
	prefix, _ := TestNamePrefixes(runTag())
	return forTest(t, CreateDatabase, prefix)
}

// Vhost creates a RabbitMQ vhost for the test, lets the broker user use it,
// and deletes it afterwards. It returns the broker URL for the vhost.
func Vhost(t testing.TB) string {
	t.Helper()
	_, prefix := TestNamePrefixes(runTag())
	return forTest(t, CreateVhost, prefix)
}

// forTest creates a uniquely named resource with create and removes it when
// the test ends.
func forTest(t testing.TB, create func(name string) (string, func() error, error), prefix string) string {
	t.Helper()
	RequireServers(t)
	url, remove, err := create(UniqueName(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := remove(); err != nil {
			t.Error(err)
		}
	})
	return url
}

// withAdmin runs fn on a connection to the test server's admin database.
func withAdmin(fn func(ctx context.Context, conn *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminDatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	return fn(ctx, conn)
}

// CreateDatabase creates database name on the test server and returns its
// URL and a function that drops it. Harnesses outside tests use it too.
func CreateDatabase(name string) (string, func() error, error) {
	err := withAdmin(func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	drop := func() error { return DropDatabase(name) }
	u, _ := url.Parse(adminDatabaseURL)
	u.Path = "/" + name
	return u.String(), drop, nil
}

// ListDatabases returns the databases whose name starts with prefix.
func ListDatabases(prefix string) (names []string, err error) {
	err = withAdmin(func(ctx context.Context, conn *pgx.Conn) error {
		rows, _ := conn.Query(ctx, `SELECT datname FROM pg_database WHERE starts_with(datname, $1)`, prefix)
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return names, err
}

// DropDatabase drops database name, closing its connections.
func DropDatabase(name string) error {
	err := withAdmin(func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		return err
	})
	if err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// ListVhosts returns the broker's vhosts whose name starts with prefix.
func ListVhosts(prefix string) ([]string, error) {
	bin, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		bin = "/usr/sbin/rabbitmqctl"
	}
	out, err := exec.Command(bin, "list_vhosts", "--quiet", "--no-table-headers").Output()
	if err != nil {
		return nil, fmt.Errorf("rabbitmqctl list_vhosts: %w", err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, prefix) {
			names = append(names, line)
		}
	}
	return names, nil
}

// CreateVhost creates RabbitMQ vhost name, lets the broker user use it, and
// returns its broker URL and a function that deletes it.
func CreateVhost(name string) (string, func() error, error) {
	u, err := url.Parse(brokerURL)
	if err != nil {
		return "", nil, fmt.Errorf("parse TEST_BROKER_URL: %w", err)
	}
	if err := Rabbitmqctl("add_vhost", name); err != nil {
		return "", nil, err
	}
	remove := func() error { return Rabbitmqctl("delete_vhost", name) }
	if err := Rabbitmqctl("set_permissions", "-p", name, u.User.Username(), ".*", ".*", ".*"); err != nil {
		_ = remove()
		return "", nil, err
	}
	u.Path = "/" + url.PathEscape(name)
	u.RawPath = u.Path
	return u.String(), remove, nil
}

// Rabbitmqctl runs the broker's control command (on this machine).
func Rabbitmqctl(args ...string) error {
	bin, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		bin = "/usr/sbin/rabbitmqctl"
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Getenv returns a getenv function over vars, for run(ctx, args, getenv, ...).
func Getenv(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// Eventually polls cond every 20ms until it is true or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MigratedDatabase creates a database for the test, applies migrations and
// returns its URL and a pool closed when the test ends.
func MigratedDatabase(t testing.TB, migrations fs.FS) (string, *pgxpool.Pool) {
	t.Helper()
	url := Database(t)
	pool, err := postgres.Prepare(context.Background(), postgres.Setup{
		URL: url, Migrate: true, Migrations: migrations, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return url, pool
}
