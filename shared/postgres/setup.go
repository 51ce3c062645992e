package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/exaring/otelpgx"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/shared/telemetry"
)

// Setup describes how a service gets its database ready at start.
type Setup struct {
	URL      string
	MaxConns int
	// Create makes the database when it does not exist (local runs, tests).
	Create bool
	// Migrate applies Migrations before the pool is returned.
	Migrate    bool
	Migrations fs.FS
	Log        *slog.Logger
	// Configure, when set, adjusts the pool config (a tracer, say).
	Configure func(*pgxpool.Config)
}

// Prepare creates the database if asked, opens the pool and migrates.
func Prepare(ctx context.Context, s Setup) (*pgxpool.Pool, error) {
	if s.Create {
		if err := EnsureDatabase(ctx, s.URL); err != nil {
			return nil, err
		}
	}
	pool, err := Open(ctx, s.URL, func(c *pgxpool.Config) {
		if s.MaxConns > 0 {
			c.MaxConns = int32(s.MaxConns)
		}
		if s.Configure != nil {
			s.Configure(c)
		}
	})
	if err != nil {
		return nil, err
	}
	// Pool gauges (connections in use, idle, acquire waits) for the metrics.
	if telemetry.Enabled() {
		if err := otelpgx.RecordStats(pool); err != nil {
			pool.Close()
			return nil, fmt.Errorf("pool metrics: %w", err)
		}
	}
	if s.Migrate {
		if err := Migrate(ctx, pool, s.Migrations, s.Log); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return pool, nil
}

// Filter is one equality condition of a page query; a zero Value (empty
// string, uuid.Nil) means no condition.
type Filter struct {
	Column string
	Value  any
}

// PageQuery completes selectFrom ("SELECT ... FROM t") into a keyset page:
// rows matching filters whose id is below after, newest (highest UUIDv7)
// first, at most limit rows.
func PageQuery(selectFrom string, filters []Filter, after uuid.UUID, limit int) (string, []any) {
	q := selectFrom + ` WHERE true`
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		q += fmt.Sprintf(` AND %s $%d`, cond, len(args))
	}
	for _, f := range filters {
		if f.Value == "" || f.Value == uuid.Nil {
			continue
		}
		add(f.Column+" =", f.Value)
	}
	if after != uuid.Nil {
		add("id <", after)
	}
	args = append(args, limit)
	q += fmt.Sprintf(` ORDER BY id DESC LIMIT $%d`, len(args))
	return q, args
}

// GetOne runs a query for at most one row and scans it with scan, returning
// notFound when there is none.
func GetOne[T any](ctx context.Context, pool *pgxpool.Pool, scan pgx.RowToFunc[T], notFound error, sql string, args ...any) (T, error) {
	rows, _ := pool.Query(ctx, sql, args...)
	v, err := pgx.CollectExactlyOneRow(rows, scan)
	if errors.Is(err, pgx.ErrNoRows) {
		return v, notFound
	}
	return v, err
}
