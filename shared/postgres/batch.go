package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// rollbackTimeout bounds the ROLLBACK after a failure: the transaction is
// lost either way, and a connection that does not answer it is closed, which
// makes the server roll back too.
const rollbackTimeout = 2 * time.Second

// CommitUnknownError reports that COMMIT was sent but its answer never came
// (the connection broke, or ctx ended while waiting): the transaction may
// have committed or not. Backend is the server process that ran it, for
// Settle. A failure before COMMIT was sent is never one of these: the
// server rolls back a transaction whose connection is lost.
type CommitUnknownError struct {
	Backend uint32
	Err     error
}

func (e *CommitUnknownError) Error() string {
	return "commit outcome unknown: " + e.Err.Error()
}

func (e *CommitUnknownError) Unwrap() error { return e.Err }

// InTx runs a transaction whose BEGIN and first statements travel in one
// round trip: queue adds statements (with callbacks for their results) to a
// batch that begins the transaction; when all of them succeeded, then, if
// not nil, runs more statements in the open transaction; then it commits.
// Any failure rolls everything back, except a failure of the COMMIT itself
// that the server did not answer: that one is a *CommitUnknownError.
func InTx(ctx context.Context, pool *pgxpool.Pool, queue func(*pgx.Batch), then func(pgx.Tx) error) (err error) {
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	queue(b)
	br := pool.SendBatch(ctx, b)
	tx := br.Tx()
	defer func() {
		if err != nil && tx != nil {
			rbCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			if rbErr := tx.Rollback(rbCtx); rbErr != nil && !errors.Is(rbErr, pgx.ErrTxClosed) {
				err = errors.Join(err, rbErr)
			}
		}
	}()
	if err := br.Close(); err != nil {
		return err
	}
	if tx == nil {
		return errors.New("batch began no transaction")
	}
	if then != nil {
		if err := then(tx); err != nil {
			return err
		}
	}
	return Commit(ctx, tx)
}

// Commit commits tx. When the server's answer does not come back, it
// returns a *CommitUnknownError: the caller must not assume either outcome.
func Commit(ctx context.Context, tx pgx.Tx) error {
	backend := tx.Conn().PgConn().PID()
	err := tx.Commit(ctx)
	if err == nil || IsRejected(err) || errors.Is(err, pgx.ErrTxCommitRollback) || errors.Is(err, pgx.ErrTxClosed) {
		return err
	}
	return &CommitUnknownError{Backend: backend, Err: err}
}

// IsRejected reports whether the server answered with an error, so the
// transaction it belongs to is rolled back for sure. It says nothing about
// why: see IsDataRejected.
func IsRejected(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr)
}

// IsDataRejected reports whether the server rejected a statement for what
// it was asked to do (a constraint, a trigger, bad input, a conflict), not
// because it is shutting down, out of resources or losing the connection.
// Only such a failure can be cured by running the statements again in
// smaller pieces.
func IsDataRejected(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	for _, class := range []string{"08", "53", "57", "58"} { // connection, resources, operator intervention, system
		if strings.HasPrefix(pgErr.Code, class) {
			return false
		}
	}
	return true
}

// Settle makes the outcome of a transaction whose COMMIT went unanswered
// final, so that what the database shows afterwards stays true: on another
// connection it ends the server process that ran it (backend, from a
// *CommitUnknownError) and waits until that process is gone. A COMMIT still
// on its way, or waiting in that process's socket, can then never take
// effect; one already applied stays. It fails when ctx ends first.
func Settle(ctx context.Context, pool *pgxpool.Pool, backend uint32) error {
	wait := time.Second
	if deadline, ok := ctx.Deadline(); ok {
		wait = time.Until(deadline) / 2
	}
	if wait < time.Millisecond {
		return context.DeadlineExceeded
	}
	var gone bool
	err := pool.QueryRow(ctx, `
		SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)
		            THEN pg_terminate_backend($1, $2)
		            ELSE true END`, int32(backend), wait.Milliseconds()).Scan(&gone)
	if err != nil {
		return fmt.Errorf("end backend %d: %w", backend, err)
	}
	if !gone {
		return fmt.Errorf("backend %d did not end within %s", backend, wait)
	}
	return nil
}
