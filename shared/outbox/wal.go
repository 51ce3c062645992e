package outbox

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"invoicing/shared/rabbit"
)

// The WAL path keeps events out of any table: the transaction that stores
// an order writes its event into the WAL with pg_logical_emit_message, and
// WALRelay reads the events back through a logical replication slot, in
// commit order, and acknowledges a position to the slot only once the
// broker confirmed every event before it. The server keeps the WAL from the
// slot's acknowledged position on, so an event is published at least once
// whatever crashes. It needs wal_level = logical.

// WALPrefix is the prefix of the logical decoding messages that carry events.
const WALPrefix = "invoicing.outbox"

// Publication is the (empty) publication the pgoutput plugin is started
// with; the events travel as messages, not as table changes.
const Publication = "invoicing_outbox"

const emitSQL = `SELECT count(pg_logical_emit_message(true, '` + WALPrefix + `', m)) FROM unnest($1::bytea[]) AS m`

// Emit queues on b, a batch that runs in a transaction, the statement that
// writes msgs into the WAL; they become visible to WALRelay when the
// transaction commits.
func Emit(ctx context.Context, b *pgx.Batch, msgs ...Message) {
	if len(msgs) == 0 {
		return
	}
	b.Queue(emitSQL, emitArgs(ctx, msgs))
}

// EmitTx runs Emit's statement in tx.
func EmitTx(ctx context.Context, tx pgx.Tx, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, emitSQL, emitArgs(ctx, msgs)); err != nil {
		return fmt.Errorf("emit events: %w", err)
	}
	return nil
}

func emitArgs(ctx context.Context, msgs []Message) [][]byte {
	now := time.Now()
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		if m.Headers == nil {
			m.Headers = TraceHeaders(ctx)
		}
		out[i] = encodeEnvelope(m, now)
	}
	return out
}

// encodeEnvelope writes m as length-prefixed fields: event id, created at
// (Unix microseconds), type, exchange, routing key, header pairs, body.
func encodeEnvelope(m Message, at time.Time) []byte {
	n := 16 + 8 + 4*4 + len(m.Type) + len(m.Exchange) + len(m.RoutingKey) + len(m.Body) + 4
	for k, v := range m.Headers {
		n += 8 + len(k) + len(v)
	}
	b := make([]byte, 0, n)
	b = append(b, m.EventID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(at.UnixMicro()))
	str := func(s []byte) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	str([]byte(m.Type))
	str([]byte(m.Exchange))
	str([]byte(m.RoutingKey))
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Headers)))
	for k, v := range m.Headers {
		str([]byte(k))
		str([]byte(v))
	}
	str(m.Body)
	return b
}

var errEnvelope = errors.New("malformed event envelope")

func decodeEnvelope(b []byte) (Message, time.Time, error) {
	var m Message
	if len(b) < 24 {
		return m, time.Time{}, errEnvelope
	}
	copy(m.EventID[:], b)
	at := time.UnixMicro(int64(binary.BigEndian.Uint64(b[16:])))
	b = b[24:]
	var bad bool
	str := func() []byte {
		if len(b) < 4 {
			bad = true
			return nil
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(len(b)-4) < uint64(n) {
			bad = true
			return nil
		}
		s := b[4 : 4+n]
		b = b[4+n:]
		return s
	}
	m.Type, m.Exchange, m.RoutingKey = string(str()), string(str()), string(str())
	if len(b) < 4 {
		return m, at, errEnvelope
	}
	nh := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(nh) > uint64(len(b))/8 {
		return m, at, errEnvelope
	}
	m.Headers = make(map[string]string, nh)
	for range nh {
		k := str()
		m.Headers[string(k)] = string(str())
	}
	m.Body = append([]byte(nil), str()...)
	if bad || len(b) != 0 {
		return m, at, errEnvelope
	}
	return m, at, nil
}

// WALRelay publishes the events Emit wrote, reading them from a logical
// replication slot. One relay at a time can read a slot; another one waits,
// retrying, until the slot is free.
type WALRelay struct {
	// ConnString is the database's URL; the relay adds replication=database.
	ConnString string
	// Slot is the replication slot's name; it is created when missing.
	Slot      string
	Publisher publisher
	Log       *slog.Logger
	// BatchSize is the most events one publish holds.
	BatchSize int
	// PublishTimeout bounds one batch's publish and confirms.
	PublishTimeout time.Duration
	// StatusInterval is how often the relay reports its position to the
	// server when nothing else makes it; 0 means 1s.
	StatusInterval time.Duration
}

type walTxn struct {
	end  pglogrepl.LSN
	msgs []rabbit.Message
}

// Run streams and publishes until ctx ends; failures reconnect with backoff
// and start again from the slot's acknowledged position.
func (r *WALRelay) Run(ctx context.Context) error {
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = 100 * time.Millisecond
	retry.MaxInterval = 10 * time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := r.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			retry.Reset()
		}
		delay := retry.NextBackOff()
		r.Log.Warn("outbox WAL relay failed; retrying", "err", err, "retry_in", delay.String())
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
	return nil
}

// Prepare creates the publication and the slot when they are missing.
func (r *WALRelay) Prepare(ctx context.Context) error {
	conn, err := pgconn.Connect(ctx, r.ConnString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// Two statements: a slot cannot be created in a transaction that wrote.
	if _, err := conn.Exec(ctx, `
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = '`+Publication+`') THEN
    CREATE PUBLICATION `+Publication+`;
  END IF;
END $$`).ReadAll(); err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `
SELECT pg_create_logical_replication_slot('`+r.Slot+`', 'pgoutput')
WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '`+r.Slot+`')`).ReadAll()
	return err
}

func (r *WALRelay) stream(ctx context.Context) error {
	if err := r.Prepare(ctx); err != nil {
		return fmt.Errorf("prepare slot: %w", err)
	}
	cfg, err := pgconn.ParseConfig(r.ConnString)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect for replication: %w", err)
	}
	defer conn.Close(context.Background())
	err = pglogrepl.StartReplication(ctx, conn, r.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + Publication + "'", "messages 'true'"},
	})
	if err != nil {
		return fmt.Errorf("start replication: %w", err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	txns := make(chan walTxn, 256)
	var acked atomic.Uint64   // the position every event before which was confirmed
	var inflight atomic.Int64 // transactions handed over and not yet confirmed
	done := make(chan struct{})
	go func() {
		defer close(done)
		cancel(r.publishLoop(ctx, txns, &acked, &inflight))
	}()
	err = r.read(ctx, conn, txns, &acked, &inflight)
	cancel(err)
	<-done
	return context.Cause(ctx)
}

func (r *WALRelay) statusInterval() time.Duration {
	if r.StatusInterval > 0 {
		return r.StatusInterval
	}
	return time.Second
}

// read owns the replication connection: it decodes transactions, hands
// those that carry events to the publisher, and reports the acknowledged
// position to the server.
func (r *WALRelay) read(ctx context.Context, conn *pgconn.PgConn, txns chan<- walTxn, acked *atomic.Uint64, inflight *atomic.Int64) error {
	var cur *walTxn
	var sent pglogrepl.LSN
	report := func(force bool) error {
		pos := pglogrepl.LSN(acked.Load())
		if pos == sent && !force {
			return nil
		}
		sent = pos
		return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos,
		})
	}
	// advanceIdle acknowledges pos when no transaction is open or waiting
	// for the broker: everything before it was then either published or
	// carried no event.
	advanceIdle := func(pos pglogrepl.LSN) {
		if cur == nil && inflight.Load() == 0 {
			advance(acked, pos)
		}
	}
	next := time.Now().Add(r.statusInterval())
	for {
		if time.Now().After(next) {
			if err := report(false); err != nil {
				return fmt.Errorf("send status: %w", err)
			}
			next = time.Now().Add(r.statusInterval())
		}
		rctx, cancel := context.WithDeadline(ctx, next)
		raw, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := raw.(type) {
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return err
				}
				advanceIdle(ka.ServerWALEnd)
				if ka.ReplyRequested {
					if err := report(true); err != nil {
						return fmt.Errorf("send status: %w", err)
					}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return err
				}
				lm, err := pglogrepl.Parse(xld.WALData)
				if err != nil {
					return fmt.Errorf("decode: %w", err)
				}
				switch m := lm.(type) {
				case *pglogrepl.BeginMessage:
					cur = &walTxn{}
				case *pglogrepl.LogicalDecodingMessage:
					if m.Prefix != WALPrefix || cur == nil {
						continue
					}
					om, at, err := decodeEnvelope(m.Content)
					if err != nil {
						r.Log.Error("outbox WAL event dropped", "lsn", m.LSN.String(), "err", err)
						continue
					}
					parent := otel.GetTextMapPropagator().Extract(context.Background(), propagation.MapCarrier(om.Headers))
					cur.msgs = append(cur.msgs, rabbit.Message{
						Context: parent, Exchange: om.Exchange, RoutingKey: om.RoutingKey,
						MessageID: om.EventID.String(), Type: om.Type, Timestamp: at, Body: om.Body,
					})
				case *pglogrepl.CommitMessage:
					if cur == nil {
						continue
					}
					cur.end = m.TransactionEndLSN
					t := *cur
					cur = nil
					if len(t.msgs) == 0 {
						advanceIdle(t.end)
						continue
					}
					inflight.Add(1)
					select {
					case txns <- t:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			}
		}
	}
}

// publishLoop publishes the transactions read, as many as are waiting (up
// to BatchSize events) at a time, and acknowledges their end once the
// broker confirmed them.
func (r *WALRelay) publishLoop(ctx context.Context, txns <-chan walTxn, acked *atomic.Uint64, inflight *atomic.Int64) error {
	var batch []walTxn
	var msgs []rabbit.Message
	for {
		batch, msgs = batch[:0], msgs[:0]
		select {
		case <-ctx.Done():
			return ctx.Err()
		case t := <-txns:
			batch = append(batch, t)
			msgs = append(msgs, t.msgs...)
		}
	more:
		for len(msgs) < r.BatchSize {
			select {
			case t := <-txns:
				batch = append(batch, t)
				msgs = append(msgs, t.msgs...)
			default:
				break more
			}
		}
		pctx, cancel := context.WithTimeout(ctx, r.PublishTimeout)
		err := r.Publisher.Publish(pctx, msgs)
		cancel()
		if err != nil {
			return fmt.Errorf("publish %d events: %w", len(msgs), err)
		}
		advance(acked, batch[len(batch)-1].end)
		inflight.Add(-int64(len(batch)))
	}
}

// advance moves acked forward to pos; it never moves it back.
func advance(acked *atomic.Uint64, pos pglogrepl.LSN) {
	for {
		old := acked.Load()
		if uint64(pos) <= old || acked.CompareAndSwap(old, uint64(pos)) {
			return
		}
	}
}
