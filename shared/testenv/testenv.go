// Package testenv gives tests their own PostgreSQL database and RabbitMQ
// vhost on the real servers, a TCP proxy that can cut connections, and the
// service binaries built once per test process. Everything a test creates is
// removed when it ends.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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

// Database creates an empty database for the test and drops it afterwards.
// It returns the database's URL.
func Database(t testing.TB) string {
	t.Helper()
	RequireServers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminDatabaseURL)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	name := UniqueName("test_")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, adminDatabaseURL)
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, _ := url.Parse(adminDatabaseURL)
	u.Path = "/" + name
	return u.String()
}

// Vhost creates a RabbitMQ vhost for the test, lets the broker user use it,
// and deletes it afterwards. It returns the broker URL for the vhost.
func Vhost(t testing.TB) string {
	t.Helper()
	RequireServers(t)
	name := UniqueName("test-")
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatalf("parse TEST_BROKER_URL: %v", err)
	}
	rabbitmqctl(t, "add_vhost", name)
	t.Cleanup(func() { rabbitmqctl(t, "delete_vhost", name) })
	rabbitmqctl(t, "set_permissions", "-p", name, u.User.Username(), ".*", ".*", ".*")
	u.Path = "/" + url.PathEscape(name)
	u.RawPath = u.Path
	return u.String()
}

func rabbitmqctl(t testing.TB, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		bin = "/usr/sbin/rabbitmqctl"
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
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
