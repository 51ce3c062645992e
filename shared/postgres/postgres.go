// Package postgres opens pgx pools, creates a service's database when asked,
// and applies its embedded migrations under an advisory lock so that several
// instances starting together migrate once.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/exaring/otelpgx"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"invoicing/shared/telemetry"
)

// DefaultConnectTimeout bounds dialling and the start-up handshake of a
// new connection when the database URL sets no connect_timeout.
const DefaultConnectTimeout = 5 * time.Second

// DefaultPingTimeout bounds the health check of an idle connection before use.
const DefaultPingTimeout = 2 * time.Second

// Open returns a pool for url. configure, when not nil, can adjust the pool
// config (size, tracer) before it is created. The pool is not pinged: a
// service starts even while its database is briefly unreachable. A URL
// without connect_timeout gets DefaultConnectTimeout: a database that
// accepts TCP but never answers must not hold a caller for minutes.
func Open(ctx context.Context, url string, configure func(*pgxpool.Config)) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	// pgxpool pings a connection that sat idle for over a second before
	// handing it out (a Lambda container thawed after minutes, a server
	// after a quiet night); bound that ping, so a connection that died
	// meanwhile is replaced rather than waited on.
	if cfg.PingTimeout == 0 {
		cfg.PingTimeout = DefaultPingTimeout
	}
	if telemetry.Enabled() {
		cfg.ConnConfig.Tracer = otelpgx.NewTracer(otelpgx.WithSpanNameFunc(spanName), otelpgx.WithDisableAcquireTracer())
	}
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	return pool, nil
}

var statementTarget = regexp.MustCompile(`(?is)\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM|FROM)\s+([a-z_][a-z0-9_.]*)`)

// spanName names a statement's span by its operation and first table
// ("INSERT outbox", "SELECT orders"): low-cardinality, unlike the SQL text,
// which is kept in the db.query.text attribute.
func spanName(sql string) string {
	fields := strings.Fields(sql)
	if len(fields) == 0 {
		return "SQL"
	}
	op := strings.ToUpper(fields[0])
	matches := statementTarget.FindAllStringSubmatch(sql, -1)
	if len(matches) == 0 {
		return op
	}
	if op == "WITH" {
		// A CTE statement is named by what it changes, if anything.
		for _, m := range matches {
			if kw := strings.ToUpper(strings.Fields(m[1])[0]); kw != "FROM" {
				return kw + " " + m[2]
			}
		}
		op = "SELECT"
	}
	if op == "SELECT" || op == "INSERT" || op == "UPDATE" || op == "DELETE" {
		for _, m := range matches {
			kw := strings.ToUpper(strings.Fields(m[1])[0])
			if kw == op || (kw == "FROM" && op == "SELECT") {
				return op + " " + m[2]
			}
		}
	}
	return op + " " + matches[0][2]
}

// EnsureDatabase creates the database named in url when it does not exist,
// connecting to the "postgres" maintenance database with the same credentials.
func EnsureDatabase(ctx context.Context, url string) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("parse database url: %w", err)
	}
	name := cfg.Database
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to maintenance database: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // created meanwhile by another instance
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Migrate applies the *.sql migrations in fsys (goose format) to the pool's
// database. A PostgreSQL advisory lock serialises concurrent callers.
func Migrate(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS, log *slog.Logger) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys, goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	for _, r := range results {
		log.Info("migration applied", "version", r.Source.Version, "file", r.Source.Path, "duration_ms", r.Duration.Milliseconds())
	}
	return nil
}

// IsDataError reports whether err is PostgreSQL refusing a statement for
// the data it carries: SQLSTATE class 22 (data exception: a value out of
// range, malformed or too long) or class 23 (integrity constraint
// violation: check, not null, foreign key, unique, exclusion). Sending the
// same data again cannot succeed, so a caller may give up on it. Every
// other error may pass with time and is worth retrying: an unreachable
// server, a read-only transaction on a replica promoted late after a
// failover (25006), a table a migration has not created yet (42P01), an
// internal error (XX000), a timeout.
func IsDataError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "23")
}

// IsUnavailable reports whether err means the database could not be reached
// or the connection broke, as opposed to a statement being rejected. Callers
// retry the former and treat the latter as a fault of the data.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			strings.HasPrefix(pgErr.Code, "53"), // insufficient resources
			strings.HasPrefix(pgErr.Code, "57"), // operator intervention (shutdown, cancel)
			strings.HasPrefix(pgErr.Code, "40"): // serialization failure, deadlock
			return true
		}
		return false
	}
	// Anything else (dial failures, broken connections, timeouts) is about
	// reaching the server, not about the statement.
	return true
}
