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
// have committed or not. Xact is its transaction id, for Settle, when the
// transaction was run by InSettleableTx (0 otherwise: no transaction has
// id 0). A failure before COMMIT was sent is never one of these: the server
// rolls back a transaction whose connection is lost.
type CommitUnknownError struct {
	Xact uint64
	Err  error
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
// that the server did not answer: that one is a *CommitUnknownError, which
// Settle cannot settle (see InSettleableTx).
func InTx(ctx context.Context, pool *pgxpool.Pool, queue func(*pgx.Batch), then func(pgx.Tx) error) error {
	return inTx(ctx, pool, false, queue, then)
}

// InOneTrip runs the statements queue adds to a batch in one round trip, as
// one implicit transaction: the server commits them together when the
// batch ends, or rolls them all back when one of them fails on the server.
// It suits a transaction that needs nothing from the client between its
// statements. An error is not a rollback: when the answer does not come
// back (the connection broke, ctx ended), or a result callback of the
// batch fails, the server may have committed. The caller must be able to
// run the statements again.
func InOneTrip(ctx context.Context, pool *pgxpool.Pool, queue func(*pgx.Batch)) error {
	b := &pgx.Batch{}
	queue(b)
	return pool.SendBatch(ctx, b).Close()
}

// InSettleableTx is InTx for a transaction whose unanswered COMMIT the
// caller means to settle: the batch that begins it also asks for its
// transaction id (no extra round trip), which a *CommitUnknownError then
// carries for Settle. Asking assigns the id at once, which a transaction
// that writes gets anyway; one that turns out to write nothing now writes
// a commit record too.
func InSettleableTx(ctx context.Context, pool *pgxpool.Pool, queue func(*pgx.Batch), then func(pgx.Tx) error) error {
	return inTx(ctx, pool, true, queue, then)
}

func inTx(ctx context.Context, pool *pgxpool.Pool, settleable bool, queue func(*pgx.Batch), then func(pgx.Tx) error) (err error) {
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	var xact uint64
	if settleable {
		// pg_current_xact_id is xid8 (PostgreSQL 13+): the 32-bit xid
		// with its epoch, never reused, scanned as a uint64.
		b.Queue(`SELECT pg_current_xact_id()`).QueryRow(func(row pgx.Row) error { return row.Scan(&xact) })
	}
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
	return commit(ctx, tx, xact)
}

// commit commits tx, whose transaction id is xact (0 when unknown). When
// the server's answer does not come back, it returns a *CommitUnknownError:
// the caller must not assume either outcome.
func commit(ctx context.Context, tx pgx.Tx, xact uint64) error {
	err := tx.Commit(ctx)
	if err == nil || IsRejected(err) || errors.Is(err, pgx.ErrTxCommitRollback) || errors.Is(err, pgx.ErrTxClosed) {
		return err
	}
	return &CommitUnknownError{Xact: xact, Err: err}
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

// XactStatus is the outcome of a transaction as Settle found it.
type XactStatus string

const (
	XactCommitted  XactStatus = "committed"
	XactAborted    XactStatus = "aborted"
	XactInProgress XactStatus = "in progress"
)

// settlePoll is how often Settle asks for the status of a transaction that
// is still in progress.
const settlePoll = 20 * time.Millisecond

// Settle finds out, on another connection, how the transaction xact (from
// a *CommitUnknownError) ended, and makes that outcome final first:
//
//  1. A server session whose transaction is xact (pg_stat_activity's
//     backend_xid) still runs it: it is ended with pg_terminate_backend,
//     waiting until it is gone, so that a COMMIT still on its way (in a
//     socket buffer, in a pooler) can never take effect later. One that
//     already took effect stays.
//  2. Then pg_xact_status(xact) is asked until it says committed or
//     aborted, or ctx ends: a session Settle cannot see (another role
//     without pg_read_all_stats) ends its transaction by itself once its
//     connection is gone.
//
// It decides by the transaction, never by the process id pgx learned at
// connect time: behind a pooler (RDS Proxy, PgBouncer) that id belongs to
// the pooler, not to a PostgreSQL backend; no session has it, or an
// unrelated one does. A transaction id names one transaction in the whole
// cluster, whichever connection ran it, and its status is kept by the
// server after it ends. pg_xact_status and xid8 need PostgreSQL 13+.
//
// It returns XactCommitted or XactAborted; XactInProgress with an error
// when ctx ended first; "" with an error when the status could not be
// read. Only XactAborted means that nothing of the transaction is stored.
func Settle(ctx context.Context, pool *pgxpool.Pool, xact uint64) (XactStatus, error) {
	if xact == 0 {
		return "", errors.New("settle: the transaction's id is unknown")
	}
	wait := time.Second
	if deadline, ok := ctx.Deadline(); ok {
		wait = time.Until(deadline) / 2
	}
	if wait < time.Millisecond {
		return "", context.DeadlineExceeded
	}
	// backend_xid is the 32-bit xid, which names xact while it runs. The
	// session is looked up and signalled in one statement, so that it has
	// no time to end xact and start another between the two.
	var gone bool
	err := pool.QueryRow(ctx, `
		SELECT coalesce(bool_and(pg_terminate_backend(pid, $2)), true)
		FROM pg_stat_activity WHERE backend_xid = $1::xid8::xid AND pid <> pg_backend_pid()`,
		xact, wait.Milliseconds()).Scan(&gone)
	if err != nil {
		return "", fmt.Errorf("end the session of transaction %d: %w", xact, err)
	}
	if !gone {
		return "", fmt.Errorf("the session of transaction %d did not end within %s", xact, wait)
	}
	for {
		var status *string // NULL: too old for the server to remember
		if err := pool.QueryRow(ctx, `SELECT pg_xact_status($1::xid8)`, xact).Scan(&status); err != nil {
			return "", fmt.Errorf("status of transaction %d: %w", xact, err)
		}
		switch {
		case status == nil:
			return "", fmt.Errorf("status of transaction %d: no longer known", xact)
		case XactStatus(*status) == XactCommitted, XactStatus(*status) == XactAborted:
			return XactStatus(*status), nil
		case XactStatus(*status) != XactInProgress:
			return "", fmt.Errorf("status of transaction %d: %q", xact, *status)
		}
		select {
		case <-ctx.Done():
			return XactInProgress, fmt.Errorf("transaction %d still in progress: %w", xact, ctx.Err())
		case <-time.After(settlePoll):
		}
	}
}
