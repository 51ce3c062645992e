package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// InTx runs a transaction whose BEGIN and first statements travel in one
// round trip: queue adds statements (with callbacks for their results) to a
// batch that begins the transaction; when all of them succeeded, then, if
// not nil, runs more statements in the open transaction; then it commits.
// Any failure rolls everything back.
func InTx(ctx context.Context, pool *pgxpool.Pool, queue func(*pgx.Batch), then func(pgx.Tx) error) (err error) {
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	queue(b)
	br := pool.SendBatch(ctx, b)
	tx := br.Tx()
	defer func() {
		if err != nil && tx != nil {
			if rbErr := tx.Rollback(context.WithoutCancel(ctx)); rbErr != nil && !errors.Is(rbErr, pgx.ErrTxClosed) {
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
	return tx.Commit(ctx)
}
