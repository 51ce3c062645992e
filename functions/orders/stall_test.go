package orders

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/shared/event"
	"invoicing/shared/outbox"
	"invoicing/shared/postgres"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
	"invoicing/shared/web"
)

// proxiedPool returns a proxy in front of the test's database and a pool
// that goes through it. The pool holds one connection (a relay's listener
// takes its own out of the pool) and never pings it when idle, so that a
// stall hits a connection in use rather than a new one, whose
// connect_timeout would end the wait by itself.
func (s *service) proxiedPool(t *testing.T) (*testenv.Proxy, *pgxpool.Pool) {
	t.Helper()
	dbURL := s.pool.Config().ConnString()
	proxy, proxied := testenv.ProxyURL(t, dbURL)
	pool, err := postgres.Open(context.Background(), proxied, func(c *pgxpool.Config) {
		c.MaxConns = 1
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	// Before pool.Close, which waits for connections still in use.
	t.Cleanup(proxy.Cut)
	return proxy, pool
}

// proxiedBroker returns a proxy in front of the test's vhost and the broker
// URL through it.
func (s *service) proxiedBroker(t *testing.T) (*testenv.Proxy, string) {
	t.Helper()
	return testenv.ProxyURL(t, s.brokerURL)
}

// returnsWithin runs f and fails the test when it has not returned within
// bound; it returns f's error.
func returnsWithin(t *testing.T, bound time.Duration, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- f() }()
	select {
	case err := <-done:
		t.Logf("%s returned after %s: %v", what, time.Since(start).Round(time.Millisecond), err)
		return err
	case <-time.After(bound):
		t.Fatalf("%s still running %s after it started", what, bound)
		return nil
	}
}

// The database stops answering (a black hole: connections stay open,
// nothing comes back). A sweep gives up at its batch deadline (DBTimeout +
// PublishTimeout) instead of waiting in a socket read for the kernel to
// give up, a shutdown ends Run at once, and no row is lost or published
// twice: once the database answers, each event is published exactly once.
func TestRelayDatabaseStallIsBounded(t *testing.T) {
	s := newService(t, true)
	proxy, pool := s.proxiedPool(t)
	session := rabbit.NewSession(s.brokerURL, "relay-test", s.log)
	t.Cleanup(func() { session.Close() })
	newRelay := func(dbTimeout time.Duration) *outbox.Relay {
		return &outbox.Relay{
			Pool: pool, Publisher: rabbit.NewPublisher(session), Log: s.log, BatchSize: 10,
			PublishTimeout: time.Second, DBTimeout: dbTimeout, Interval: 50 * time.Millisecond, Workers: 2,
		}
	}
	relay := newRelay(2 * time.Second)
	recv := receive(t, s.brokerURL)
	ctx := context.Background()

	// A sweep whose connection stalls, in the claim.
	warm := s.createOrders(t, 1, "warm")
	if n, err := relay.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v", n, err)
	}
	claimed := s.createOrders(t, 5, "claim-stalled")
	proxy.Stall()
	// Far above the 3 s batch deadline (and the 2 s rollback bound after
	// it), far below the socket's own timeout (minutes).
	const bound = 15 * time.Second
	err := returnsWithin(t, bound, "Sweep through a stalled database", func() error {
		n, err := relay.Sweep(ctx)
		if n != 0 {
			t.Errorf("Sweep published %d rows with the database stalled", n)
		}
		return err
	})
	if !errors.Is(err, outbox.ErrBatchTimeout) {
		t.Errorf("Sweep = %v, want %v", err, outbox.ErrBatchTimeout)
	}
	if n := s.count(t, "outbox"); n != len(claimed) {
		t.Fatalf("%d rows in the outbox, want %d", n, len(claimed))
	}

	// Run, on connections already in use, stalled; then a shutdown. The
	// batch deadline is long here: a batch that has not claimed rows must
	// not wait for it.
	proxy.Restore()
	runCtx, shutdown := context.WithCancel(ctx)
	defer shutdown()
	running := newRelay(30 * time.Second)
	runDone := make(chan error, 1)
	go func() { runDone <- running.Run(runCtx) }()
	// The listener takes its connection out of the pool; the stall must
	// find the workers' connection established, not being made.
	testenv.Eventually(t, 20*time.Second, "the relay to publish the outbox, listening, with its connection", func() bool {
		var listening int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND query ILIKE 'listen %'`).Scan(&listening); err != nil {
			t.Fatal(err)
		}
		st := pool.Stat()
		return s.count(t, "outbox") == 0 && listening == 1 && st.ConstructingConns() == 0 && st.TotalConns() == 1
	})
	proxy.Stall()
	testenv.Eventually(t, 10*time.Second, "a relay worker waiting on the stalled database", func() bool {
		return pool.Stat().AcquiredConns() > 0
	})
	later := s.createOrders(t, 5, "run-stalled")
	shutdown()
	select {
	case err := <-runDone:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Run still running 10 s after shutdown, with the database stalled")
	}

	proxy.Restore()
	if n := s.count(t, "outbox"); n != len(later) {
		t.Fatalf("%d rows in the outbox after Run stopped, want %d", n, len(later))
	}
	testenv.Eventually(t, 20*time.Second, "every row published once the database answers", func() bool {
		_, err := relay.Sweep(ctx)
		return err == nil && s.count(t, "outbox") == 0
	})
	all := append(append(warm, claimed...), later...)
	recv.byOrder(t, all, 20*time.Second)
	perOrder := map[uuid.UUID]int{}
	for _, d := range recv.stop(t) {
		e, err := event.Parse(d.Body)
		if err != nil {
			t.Fatal(err)
		}
		perOrder[e.OrderID]++
	}
	for _, o := range all {
		if perOrder[o.ID] != 1 {
			t.Errorf("order %s published %d times", o.ID, perOrder[o.ID])
		}
	}
	if len(perOrder) != len(all) {
		t.Errorf("%d orders published, want %d", len(perOrder), len(all))
	}
}

// /health/ready of orders depends on PostgreSQL only, and answers within
// its 2 s check timeout whatever its dependencies do: a stalled broker
// (a black hole, which amqp091 ignores contexts for) shows as unavailable
// and leaves the service ready; a stalled database makes it unready.
func TestReadyAnswersInTimeWhenDependenciesStall(t *testing.T) {
	s := newService(t, true)
	dbProxy, pool := s.proxiedPool(t)
	brokerProxy, brokerURL := s.proxiedBroker(t)
	session := rabbit.NewSession(brokerURL, "orders-test", s.log)
	t.Cleanup(func() { session.Close() })
	h := NewServer(s.log, s.store, 1<<20, map[string]web.Check{"postgres": pool.Ping, "rabbitmq": session.Check})

	cases := []struct {
		name                       string
		stall                      []*testenv.Proxy
		code                       int
		status, postgres, rabbitmq string
	}{
		{"broker stalled", []*testenv.Proxy{brokerProxy}, http.StatusOK, "degraded", "ok", "unavailable"},
		{"database stalled", []*testenv.Proxy{dbProxy}, http.StatusServiceUnavailable, "unavailable", "unavailable", "ok"},
		{"both stalled", []*testenv.Proxy{dbProxy, brokerProxy}, http.StatusServiceUnavailable, "unavailable", "unavailable", "unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Connections in use when the stall begins.
			testenv.Eventually(t, 20*time.Second, "ready with both dependencies answering", func() bool {
				code, got, _ := s.health(t, h, "/health/ready")
				return code == http.StatusOK && got.Status == "ok"
			})
			for _, p := range tc.stall {
				p.Stall()
			}
			defer func() {
				for _, p := range tc.stall {
					p.Restore()
				}
			}()
			for _, path := range []string{"/health/ready", "/health"} {
				var code int
				var got healthAnswer
				var body string
				// The check timeout is 2 s; load balancers usually give a
				// probe 5 s.
				returnsWithin(t, 4*time.Second, "GET "+path, func() error {
					code, got, body = s.health(t, h, path)
					return nil
				})
				if code != tc.code || got.Status != tc.status || got.Checks["postgres"] != tc.postgres || got.Checks["rabbitmq"] != tc.rabbitmq {
					t.Errorf("%s: %d %s", path, code, body)
				}
			}
		})
	}
}
