package orders

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/functions/orders/migrations"
	"invoicing/shared/postgres"
	"invoicing/shared/testenv"
)

// underTest names the proxied pool's connections in pg_stat_activity.
const underTest = "orders-under-test"

// proxied is the orders API whose pool reaches PostgreSQL through a proxy
// the test controls; its pool field is a direct pool, for arranging and
// checking.
type proxied struct {
	*service
	proxy *testenv.Proxy
}

// newProxiedService starts the service; setup, if any, adjusts the proxy
// before the service's pool connects through it.
func newProxiedService(t *testing.T, writers, maxBatch int, timeouts Timeouts, setup ...func(*testenv.Proxy)) *proxied {
	t.Helper()
	url, direct := testenv.MigratedDatabase(t, migrations.FS)
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.NewProxy(t, u.Host)
	for _, f := range setup {
		f(proxy)
	}
	u.Host = proxy.Addr()
	q := u.Query()
	q.Set("application_name", underTest)
	u.RawQuery = q.Encode()
	pool, err := postgres.Open(context.Background(), u.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store := NewStore(pool, writers, maxBatch, WithTimeouts(timeouts))
	t.Cleanup(store.Close)
	// Runs first: a test that failed with the database stalled must not
	// hang in Close.
	t.Cleanup(proxy.Cut)
	log := slog.New(slog.DiscardHandler)
	return &proxied{
		service: &service{pool: direct, store: store, handler: NewServer(log, store, 1<<20, nil), log: log},
		proxy:   proxy,
	}
}

// post sends POST /orders for customer in the background; headers
// alternate name, value.
func (s *proxied) post(customer string, headers ...string) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		done <- s.do("POST", "/orders", fmt.Sprintf(`{"customerId":%q,"totalAmount":100}`, customer), headers...)
	}()
	return done
}

// gates holds inserts of orders back until the test opens them: a trigger
// makes the order of customer "first" wait for advisory lock 1 and every
// other order for advisory lock 2, both held by the test. An order of
// customer "poison" is then rejected.
type gates struct {
	t    *testing.T
	pool *pgxpool.Pool
	conn *pgxpool.Conn
}

func closeGates(t *testing.T, pool *pgxpool.Pool) *gates {
	t.Helper()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
		CREATE FUNCTION gate_orders() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.customer_id = 'first' THEN PERFORM pg_advisory_xact_lock_shared(1);
			ELSE PERFORM pg_advisory_xact_lock_shared(2);
			END IF;
			IF NEW.customer_id = 'poison' THEN RAISE EXCEPTION 'poison order'; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER gate_orders BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION gate_orders();`); err != nil {
		t.Fatal(err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(1), pg_advisory_lock(2)`); err != nil {
		t.Fatal(err)
	}
	g := &gates{t: t, pool: pool, conn: conn}
	t.Cleanup(func() {
		_, _ = conn.Exec(context.Background(), `SELECT pg_advisory_unlock_all()`)
		conn.Release()
	})
	return g
}

func (g *gates) open(gate int) {
	g.t.Helper()
	if _, err := g.conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, gate); err != nil {
		g.t.Fatal(err)
	}
}

// awaitWaiter waits until an insert waits at gate.
func (g *gates) awaitWaiter(gate int) {
	g.t.Helper()
	testenv.Eventually(g.t, 30*time.Second, fmt.Sprintf("an insert waiting at gate %d", gate), func() bool {
		var n int
		err := g.pool.QueryRow(context.Background(), `
			SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND NOT granted AND objid = $1
			  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, gate).Scan(&n)
		return err == nil && n > 0
	})
}

// formBatch makes the creates that submit starts form one batch of the
// store's only writer: a create of customer "first" goes ahead and waits
// at gate 1; submit runs; once its n creates wait for the writer, gate 1
// opens and they are taken together. It returns the first create's answer.
func formBatch(t *testing.T, s *proxied, g *gates, n int, submit func()) <-chan *httptest.ResponseRecorder {
	t.Helper()
	first := s.post("first")
	g.awaitWaiter(1)
	submit()
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d creates waiting for the writer", n), func() bool {
		return s.store.writer.waiting.Load() == int64(n)
	})
	g.open(1)
	return first
}

type problem struct {
	Status  int
	Detail  string
	OrderID string `json:"orderId"`
	Outcome string
}

func decodeProblem(t *testing.T, rec *httptest.ResponseRecorder) problem {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q, want application/problem+json: %d %s", ct, rec.Code, rec.Body)
	}
	var p problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("decode problem %q: %v", rec.Body, err)
	}
	return p
}

// A COMMIT that reached the server but whose answer was lost: the order is
// stored, so the client must be told 201, not "retry", which would store it
// twice.
func TestUnconfirmedCommitOfAStoredOrderIs201(t *testing.T) {
	for _, tc := range []struct {
		name    string
		headers []string
	}{
		{"without idempotency key", nil},
		{"with idempotency key", []string{"Idempotency-Key", "unconfirmed-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newProxiedService(t, 2, 16, Timeouts{DB: 10 * time.Second, Lookup: 5 * time.Second})
			fired := s.proxy.CutAfter("commit", 300*time.Millisecond)
			rec := <-s.post("c", tc.headers...)
			select {
			case <-fired: // closed just after the cut, maybe after the answer
			case <-time.After(30 * time.Second):
				t.Fatal("no COMMIT was cut")
			}
			if rec.Code != http.StatusCreated {
				t.Fatalf("status %d, want 201 for a committed order: %s", rec.Code, rec.Body)
			}
			o := decode[Order](t, rec)
			if got := rec.Header().Get("Location"); got != "/orders/"+o.ID.String() {
				t.Errorf("Location %q", got)
			}
			if n := s.count(t, "orders"); n != 1 {
				t.Errorf("%d orders, want 1", n)
			}
			if n := s.count(t, "outbox"); n != 1 {
				t.Errorf("%d outbox rows, want 1", n)
			}
			if tc.headers != nil {
				replay := <-s.post("c", tc.headers...)
				if replay.Code != http.StatusCreated || replay.Header().Get("Idempotent-Replayed") != "true" || replay.Body.String() != rec.Body.String() {
					t.Errorf("replay: %d %v %s", replay.Code, replay.Header(), replay.Body)
				}
				if n := s.count(t, "orders"); n != 1 {
					t.Errorf("%d orders after the replay, want 1", n)
				}
			}
		})
	}
}

// The same for a batch shared by several creates: each is answered 201 and
// stored once (not retried alone into a primary key violation).
func TestUnconfirmedCommitOfASharedBatchIs201(t *testing.T) {
	s := newProxiedService(t, 1, 64, Timeouts{DB: 30 * time.Second, Lookup: 5 * time.Second})
	g := closeGates(t, s.pool)
	const n = 6
	answers := make([]<-chan *httptest.ResponseRecorder, n)
	first := formBatch(t, s, g, n, func() {
		for i := range answers {
			answers[i] = s.post(fmt.Sprintf("c%d", i))
		}
	})
	if rec := <-first; rec.Code != http.StatusCreated {
		t.Fatalf("first: %d %s", rec.Code, rec.Body)
	}
	g.awaitWaiter(2) // the batch is in the database, held before its COMMIT
	fired := s.proxy.CutAfter("commit", 300*time.Millisecond)
	g.open(2)
	<-fired
	for i, a := range answers {
		if rec := <-a; rec.Code != http.StatusCreated {
			t.Errorf("create %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	if got := s.count(t, "orders"); got != n+1 {
		t.Errorf("%d orders, want %d", got, n+1)
	}
	if got := s.count(t, "outbox"); got != n+1 {
		t.Errorf("%d outbox rows, want %d", got, n+1)
	}
}

// When the COMMIT's answer is lost and the order cannot be looked up
// either, the client is told that the outcome is unknown, with the order's
// id to check, not that nothing was stored.
func TestUnconfirmedCommitThatCannotBeCheckedIsUnknown(t *testing.T) {
	s := newProxiedService(t, 2, 16, Timeouts{DB: 10 * time.Second, Lookup: 500 * time.Millisecond})
	// The connection is closed 2s after COMMIT reached the server; by
	// then the order is visible and the database stalled.
	fired := s.proxy.CutAfter("commit", 2*time.Second)
	answer := s.post("c")
	testenv.Eventually(t, 30*time.Second, "the order committed", func() bool { return s.count(t, "orders") == 1 })
	s.proxy.Stall()
	select {
	case <-fired:
		t.Fatal("the connection was cut before the database stalled; lengthen the settle time")
	default:
	}
	rec := <-answer
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503: %s", rec.Code, rec.Body)
	}
	p := decodeProblem(t, rec)
	var stored uuid.UUID
	if err := s.pool.QueryRow(context.Background(), `SELECT id FROM orders`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if p.Outcome != "unknown" || p.OrderID != stored.String() || !strings.Contains(p.Detail, "/orders/"+stored.String()) {
		t.Errorf("problem %+v does not say the outcome of order %s is unknown", p, stored)
	}
	if strings.Contains(p.Detail, "nothing was stored") {
		t.Errorf("detail claims nothing was stored: %s", p.Detail)
	}
}

// A batch whose connection broke before its COMMIT was stored by no one:
// each create is told so. Retrying each order alone would only make sense
// for a row the server rejected; here it would wait on the same broken
// database once per order.
func TestNoPerRowRetryWhenTheConnectionBreaks(t *testing.T) {
	s := newProxiedService(t, 1, 64, Timeouts{DB: 30 * time.Second, Lookup: 5 * time.Second})
	g := closeGates(t, s.pool)
	const n = 5
	answers := make([]<-chan *httptest.ResponseRecorder, n)
	var fired <-chan struct{}
	first := formBatch(t, s, g, n, func() {
		for i := range answers {
			answers[i] = s.post(fmt.Sprintf("cut-here-%d", i))
		}
		// Only the batch's connection breaks, right after its
		// statements reach the server; the proxy still serves others.
		fired = s.proxy.CutAfter("cut-here-", 300*time.Millisecond)
	})
	if rec := <-first; rec.Code != http.StatusCreated {
		t.Fatalf("first: %d %s", rec.Code, rec.Body)
	}
	<-fired
	g.open(2) // a retry, if any, is not held back
	for i, a := range answers {
		rec := <-a
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("create %d: %d %s, want 503", i, rec.Code, rec.Body)
			continue
		}
		if p := decodeProblem(t, rec); !strings.Contains(p.Detail, "nothing was stored") {
			t.Errorf("create %d: %+v", i, p)
		}
	}
	if got := s.count(t, "orders"); got != 1 {
		t.Errorf("%d orders, want only the first", got)
	}
}

// After a batch failed for one bad row, the others are retried alone, but
// not a create whose client left meanwhile: it is answered with its
// context's error and not stored.
func TestNoRetryForAClientThatLeft(t *testing.T) {
	s := newProxiedService(t, 1, 64, Timeouts{DB: 30 * time.Second, Lookup: 5 * time.Second})
	g := closeGates(t, s.pool)
	leaverCtx, leave := context.WithCancel(context.Background())
	defer leave()
	customers := []string{"c0", "poison", "leaver", "c3"}
	errs := make([]error, len(customers))
	var wg sync.WaitGroup
	first := formBatch(t, s, g, len(customers), func() {
		for i, c := range customers {
			ctx := context.Background()
			if c == "leaver" {
				ctx = leaverCtx
			}
			wg.Go(func() {
				_, _, errs[i] = s.store.Create(ctx, NewOrder(c, 1, "BRL", time.Now()), nil, Response{})
			})
		}
	})
	if rec := <-first; rec.Code != http.StatusCreated {
		t.Fatalf("first: %d %s", rec.Code, rec.Body)
	}
	g.awaitWaiter(2) // the batch is in the database: past the check for clients that left
	leave()
	g.open(2)
	wg.Wait()
	for i, c := range customers {
		switch c {
		case "poison":
			if errs[i] == nil || !strings.Contains(errs[i].Error(), "poison order") {
				t.Errorf("poison: %v", errs[i])
			}
		case "leaver":
			if !errors.Is(errs[i], context.Canceled) {
				t.Errorf("leaver: %v, want context.Canceled", errs[i])
			}
		default:
			if errs[i] != nil {
				t.Errorf("%s: %v", c, errs[i])
			}
		}
	}
	var stored string
	if err := s.pool.QueryRow(context.Background(), `SELECT coalesce(string_agg(customer_id, ',' ORDER BY customer_id), '') FROM orders`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if got := stored; got != "c0,c3,first" {
		t.Errorf("stored customers %s, want c0,c3,first", got)
	}
}

// A database that accepts connections but never answers: every create is
// answered within its budget with a 503 problem, none with a false 201,
// and no order answered "nothing was stored" shows up once it answers again.
func TestStalledDatabaseAnswersPromptly(t *testing.T) {
	timeouts := Timeouts{DB: time.Second, Lookup: 500 * time.Millisecond}
	s := newProxiedService(t, 2, 16, timeouts)
	if rec := <-s.post("warm-up"); rec.Code != http.StatusCreated {
		t.Fatalf("warm-up: %d %s", rec.Code, rec.Body)
	}
	s.proxy.Stall()
	const n = 12
	start := time.Now()
	answers := make([]<-chan *httptest.ResponseRecorder, n)
	for i := range answers {
		var headers []string
		if i%3 == 0 {
			headers = []string{"Idempotency-Key", fmt.Sprintf("stalled-%d", i)}
		}
		answers[i] = s.post(fmt.Sprintf("c%d", i), headers...)
	}
	unknown := map[string]bool{}
	guard := time.After(60 * time.Second) // before the fix, they never came
	for i, a := range answers {
		var rec *httptest.ResponseRecorder
		select {
		case rec = <-a:
		case <-guard:
			t.Fatalf("create %d not answered after %s with the database stalled", i, time.Since(start))
		}
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("create %d: %d %s, want 503", i, rec.Code, rec.Body)
			continue
		}
		if p := decodeProblem(t, rec); p.Outcome == "unknown" {
			unknown[p.OrderID] = true
		}
	}
	elapsed := time.Since(start)
	t.Logf("%d creates answered 503 within %s with the database stalled (DB timeout %s, lookup %s)", n, elapsed, timeouts.DB, timeouts.Lookup)
	// Generous for a loaded machine, yet far from the minutes it took.
	if limit := 10 * (timeouts.DB + timeouts.Lookup); elapsed > limit {
		t.Errorf("answers took %s, want about %s", elapsed, timeouts.DB+timeouts.Lookup)
	}

	s.proxy.Restore()
	testenv.Eventually(t, 30*time.Second, "the stalled connections to end", func() bool {
		var left int
		err := s.pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle'`, underTest).Scan(&left)
		return err == nil && left == 0
	})
	rows, _ := s.pool.Query(context.Background(), `SELECT id::text FROM orders WHERE customer_id <> 'warm-up'`)
	for rows.Next() {
		var id string
		_ = rows.Scan(&id)
		if !unknown[id] {
			t.Errorf("order %s is stored, but its client was told nothing was stored", id)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// noBackend is a pooler's process id that no PostgreSQL backend has: Linux
// pids stay below 2^22.
func noBackend(real uint32) uint32 { return 1<<30 | real }

// Behind a pooler (RDS Proxy, PgBouncer) the process id a client learns is
// not its backend's. A COMMIT held up on its way must not be taken for one
// that will never land: here it is sent on to the server only after the
// client was answered. The answer must stay true once it is: "nothing was
// stored" only if the order can no longer appear. Settling ends the
// session that still waits in the transaction, which aborts it for good.
func TestUnconfirmedCommitBehindAPoolerIsNotDeniedWhileItCanLand(t *testing.T) {
	for _, tc := range []struct {
		name    string
		headers []string
	}{
		{"without idempotency key", nil},
		{"with idempotency key", []string{"Idempotency-Key", "pooled-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newProxiedService(t, 2, 16, Timeouts{DB: 10 * time.Second, Lookup: 5 * time.Second},
				func(p *testenv.Proxy) { p.FakeBackendPIDs(noBackend) })
			hold := s.proxy.HoldAfter("commit", 300*time.Millisecond)
			start := time.Now()
			rec := <-s.post("c", tc.headers...)
			answered := time.Since(start)
			select {
			case <-hold.Fired():
			case <-time.After(30 * time.Second):
				t.Fatal("no COMMIT was held")
			}
			// The COMMIT arrives late, if its session is still there.
			hold.Release()
			testenv.Eventually(t, 30*time.Second, "no session left in the create's transaction", func() bool {
				var n int
				err := s.pool.QueryRow(context.Background(),
					`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'`, underTest).Scan(&n)
				return err == nil && n == 0
			})
			// The session that still waited for the COMMIT is ended, so
			// the transaction is aborted for good: that is the answer.
			stored := s.count(t, "orders")
			if rec.Code != http.StatusServiceUnavailable {
				t.Fatalf("status %d, want 503: %s", rec.Code, rec.Body)
			}
			p := decodeProblem(t, rec)
			if !strings.Contains(p.Detail, "nothing was stored") || p.Outcome == "unknown" {
				t.Errorf("problem %+v, want nothing was stored", p)
			}
			if stored != 0 {
				t.Errorf("answered %q; the late COMMIT stored %d orders", p.Detail, stored)
			}
			t.Logf("answered %d in %s: %s", rec.Code, answered, p.Detail)
		})
	}
}

// Behind a pooler whose process id happens to be an unrelated backend's,
// settling an unanswered COMMIT must not end that backend's session; the
// order, committed, is answered 201.
func TestUnconfirmedCommitBehindAPoolerSparesOtherSessions(t *testing.T) {
	url, _ := testenv.MigratedDatabase(t, migrations.FS)
	bystander, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bystander.Close)
	conn, err := bystander.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	victim := conn.Conn().PgConn().PID()
	s := newProxiedService(t, 2, 16, Timeouts{DB: 10 * time.Second, Lookup: 5 * time.Second},
		func(p *testenv.Proxy) { p.FakeBackendPIDs(func(uint32) uint32 { return victim }) })
	fired := s.proxy.CutAfter("commit", 300*time.Millisecond)
	rec := <-s.post("c")
	<-fired
	if rec.Code != http.StatusCreated {
		t.Errorf("status %d, want 201 for a committed order: %s", rec.Code, rec.Body)
	}
	if n := s.count(t, "orders"); n != 1 {
		t.Errorf("%d orders, want 1", n)
	}
	if _, err := conn.Exec(context.Background(), `SELECT 1`); err != nil {
		t.Errorf("the session of backend %d, unrelated to the create, was ended: %v", victim, err)
	}
}
