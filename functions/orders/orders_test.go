package orders

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/functions/orders/migrations"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
	"invoicing/shared/web"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// service is the orders API over a fresh database (and, when asked, vhost).
type service struct {
	pool      *pgxpool.Pool
	store     *Store
	handler   http.Handler
	brokerURL string
	log       *slog.Logger
}

func newService(t *testing.T, withBroker bool) *service {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	_, pool := testenv.MigratedDatabase(t, migrations.FS)
	s := &service{pool: pool, store: NewStore(pool, 2, 16), log: log}
	t.Cleanup(s.store.Close)
	checks := map[string]web.Check{"postgres": pool.Ping}
	if withBroker {
		s.brokerURL = testenv.Vhost(t)
		session := rabbit.NewSession(s.brokerURL, "orders-test", log)
		t.Cleanup(func() { session.Close() })
		checks["rabbitmq"] = session.Check
	}
	s.handler = NewServer(log, s.store, 1<<20, checks)
	return s
}

// do sends one request; headers alternate name, value.
func (s *service) do(method, path, body string, headers ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	return rec
}

func (s *service) count(t *testing.T, table string) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("decode %q: %v", rec.Body.String(), err)
	}
	return v
}

func TestCreateGetList(t *testing.T) {
	s := newService(t, false)

	rec := s.do("POST", "/orders", `{"customerId":"cust-1","totalAmount":1999,"currency":"USD"}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST: %d %s", rec.Code, rec.Body)
	}
	created := decode[Order](t, rec)
	if created.CustomerID != "cust-1" || created.TotalAmount != 1999 || created.Currency != "USD" || created.Status != "pending" || len(created.Items) != 0 {
		t.Errorf("created = %+v", created)
	}
	if loc := rec.Header().Get("Location"); loc != "/orders/"+created.ID.String() {
		t.Errorf("Location = %q", loc)
	}

	rec = s.do("POST", "/orders", `{"customerId":"cust-1","items":[{"sku":"A","quantity":2,"unitPrice":250},{"sku":"B","quantity":1,"unitPrice":100}]}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST with items: %d %s", rec.Code, rec.Body)
	}
	withItems := decode[Order](t, rec)
	if withItems.TotalAmount != 600 || withItems.Currency != "BRL" || len(withItems.Items) != 2 {
		t.Errorf("total from items = %+v", withItems)
	}

	rec = s.do("GET", "/orders/"+created.ID.String(), "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET: %d %s", rec.Code, rec.Body)
	}
	got := decode[Order](t, rec)
	if !got.CreatedAt.Equal(created.CreatedAt) || got.ID != created.ID || got.TotalAmount != created.TotalAmount {
		t.Errorf("GET = %+v, want %+v", got, created)
	}

	for i := range 3 {
		if rec := s.do("POST", "/orders", `{"customerId":"cust-2","totalAmount":`+string(rune('1'+i))+`}`); rec.Code != http.StatusCreated {
			t.Fatalf("POST cust-2: %d %s", rec.Code, rec.Body)
		}
	}
	// Walk cust-2's orders two at a time: 2 + 1, newest first, no repeats.
	page := decode[web.Page[Order]](t, s.do("GET", "/orders?customerId=cust-2&limit=2", ""))
	if len(page.Data) != 2 || page.NextCursor == "" {
		t.Fatalf("page 1 = %+v", page)
	}
	page2 := decode[web.Page[Order]](t, s.do("GET", "/orders?customerId=cust-2&limit=2&cursor="+page.NextCursor, ""))
	if len(page2.Data) != 1 || page2.NextCursor != "" {
		t.Fatalf("page 2 = %+v", page2)
	}
	amounts := []int64{page.Data[0].TotalAmount, page.Data[1].TotalAmount, page2.Data[0].TotalAmount}
	if amounts[0] != 3 || amounts[1] != 2 || amounts[2] != 1 {
		t.Errorf("amounts newest first = %v, want [3 2 1]", amounts)
	}
	all := decode[web.Page[Order]](t, s.do("GET", "/orders", ""))
	if len(all.Data) != 5 {
		t.Errorf("unfiltered list has %d orders, want 5", len(all.Data))
	}
	if n := s.count(t, "outbox"); n != 5 {
		t.Errorf("outbox rows = %d, want one per order (5)", n)
	}
}

func TestBadInput(t *testing.T) {
	s := newService(t, false)
	big := `{"customerId":"` + strings.Repeat("x", 1<<20) + `","totalAmount":1}`
	cases := []struct {
		name, method, path, body string
		headers                  []string
		status                   int
		field                    string
	}{
		{"malformed JSON", "POST", "/orders", `{"customerId":`, nil, 400, ""},
		{"not an object", "POST", "/orders", `[1,2]`, nil, 400, ""},
		{"trailing data", "POST", "/orders", `{"customerId":"a","totalAmount":1} {}`, nil, 400, ""},
		{"empty body", "POST", "/orders", ``, []string{"Content-Type", "application/json"}, 400, ""},
		{"invalid UTF-8", "POST", "/orders", "{\"customerId\":\"a\xff\",\"totalAmount\":1}", nil, 400, ""},
		{"unknown field", "POST", "/orders", `{"customerId":"a","totalAmount":1,"discount":5}`, nil, 400, "discount"},
		{"wrong content type", "POST", "/orders", `{"customerId":"a","totalAmount":1}`, []string{"Content-Type", "text/plain"}, 415, ""},
		{"no content type", "POST", "/orders", `{"customerId":"a","totalAmount":1}`, []string{"Content-Type", ""}, 415, ""},
		{"body over the limit", "POST", "/orders", big, nil, 413, ""},
		{"unknown route", "GET", "/nope", "", nil, 404, ""},
		{"wrong method", "DELETE", "/orders", "", nil, 405, ""},
		{"wrong method on id", "POST", "/orders/0196f3c0-0000-7000-8000-000000000000", "", nil, 405, ""},
		{"id not a UUID", "GET", "/orders/42", "", nil, 400, ""},
		{"unknown id", "GET", "/orders/0196f3c0-0000-7000-8000-000000000000", "", nil, 404, ""},
		{"missing customer", "POST", "/orders", `{"totalAmount":1}`, nil, 400, "customerId"},
		{"empty customer", "POST", "/orders", `{"customerId":"","totalAmount":1}`, nil, 400, "customerId"},
		{"control char in customer", "POST", "/orders", `{"customerId":"a\u0000b","totalAmount":1}`, nil, 400, "customerId"},
		{"long customer", "POST", "/orders", `{"customerId":"` + strings.Repeat("é", 65) + `","totalAmount":1}`, nil, 400, "customerId"},
		{"fractional amount", "POST", "/orders", `{"customerId":"a","totalAmount":19.99}`, nil, 400, "totalAmount"},
		{"string amount", "POST", "/orders", `{"customerId":"a","totalAmount":"10"}`, nil, 400, "totalAmount"},
		{"zero amount", "POST", "/orders", `{"customerId":"a","totalAmount":0}`, nil, 400, "totalAmount"},
		{"amount too large", "POST", "/orders", `{"customerId":"a","totalAmount":1000000000001}`, nil, 400, "totalAmount"},
		{"amount overflows int64", "POST", "/orders", `{"customerId":"a","totalAmount":99999999999999999999}`, nil, 400, "totalAmount"},
		{"missing amount", "POST", "/orders", `{"customerId":"a"}`, nil, 400, "totalAmount"},
		{"empty currency", "POST", "/orders", `{"customerId":"a","totalAmount":1,"currency":""}`, nil, 400, "currency"},
		{"lower-case currency", "POST", "/orders", `{"customerId":"a","totalAmount":1,"currency":"brl"}`, nil, 400, "currency"},
		{"unknown currency", "POST", "/orders", `{"customerId":"a","totalAmount":1,"currency":"ZZZ"}`, nil, 400, "currency"},
		{"number currency", "POST", "/orders", `{"customerId":"a","totalAmount":1,"currency":5}`, nil, 400, "currency"},
		{"null currency", "POST", "/orders", `{"customerId":"a","totalAmount":1,"currency":null}`, nil, 400, "currency"},
		{"items do not add up", "POST", "/orders", `{"customerId":"a","totalAmount":5,"items":[{"sku":"x","quantity":2,"unitPrice":3}]}`, nil, 400, "totalAmount"},
		{"empty items", "POST", "/orders", `{"customerId":"a","totalAmount":5,"items":[]}`, nil, 400, "items"},
		{"zero quantity", "POST", "/orders", `{"customerId":"a","items":[{"sku":"x","quantity":0,"unitPrice":3}]}`, nil, 400, "items[0].quantity"},
		{"negative price", "POST", "/orders", `{"customerId":"a","items":[{"sku":"x","quantity":1,"unitPrice":-1}]}`, nil, 400, "items[0].unitPrice"},
		{"missing sku", "POST", "/orders", `{"customerId":"a","items":[{"quantity":1,"unitPrice":1}]}`, nil, 400, "items[0].sku"},
		{"items sum to zero", "POST", "/orders", `{"customerId":"a","items":[{"sku":"x","quantity":1,"unitPrice":0}]}`, nil, 400, "items"},
		{"items over the maximum", "POST", "/orders", `{"customerId":"a","items":[{"sku":"x","quantity":2,"unitPrice":500000000000},{"sku":"y","quantity":1,"unitPrice":1}]}`, nil, 400, "items"},
		{"items overflow int64 to 1000", "POST", "/orders", `{"customerId":"a","items":` + overflowingItems + `}`, nil, 400, "items"},
		{"items overflow int64 to the total", "POST", "/orders", `{"customerId":"a","totalAmount":1000,"items":` + overflowingItems + `}`, nil, 400, "items"},
		{"bad limit", "GET", "/orders?limit=1000", "", nil, 400, "limit"},
		{"bad cursor", "GET", "/orders?cursor=!!", "", nil, 400, "cursor"},
		{"bad customer filter", "GET", "/orders?customerId=%ff", "", nil, 400, "customerId"},
		{"NUL customer filter", "GET", "/orders?customerId=%00", "", nil, 400, "customerId"},
		{"NUL in customer filter", "GET", "/orders?customerId=a%00b", "", nil, 400, "customerId"},
		{"long customer filter", "GET", "/orders?customerId=" + strings.Repeat("%E6%BC%A2", 65), "", nil, 400, "customerId"},
		{"NUL cursor", "GET", "/orders?cursor=%00", "", nil, 400, "cursor"},
		{"NUL limit", "GET", "/orders?limit=%00", "", nil, 400, "limit"},
		{"invalid UTF-8 cursor", "GET", "/orders?cursor=%ff", "", nil, 400, "cursor"},
		{"NUL id", "GET", "/orders/%00", "", nil, 400, "id"},
		{"invalid UTF-8 id", "GET", "/orders/%ff", "", nil, 400, "id"},
		{"empty idempotency key", "POST", "/orders", `{"customerId":"a","totalAmount":1}`, []string{"Idempotency-Key", " "}, 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := s.do(tc.method, tc.path, tc.body, tc.headers...)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type %q", ct)
			}
			p := decode[web.Error](t, rec)
			if p.Status != tc.status || p.Title == "" || p.Type == "" || p.Detail == "" {
				t.Errorf("problem = %+v", p)
			}
			if tc.field != "" {
				found := false
				for _, f := range p.Errors {
					found = found || f.Field == tc.field
				}
				if !found {
					t.Errorf("errors %+v do not name %q", p.Errors, tc.field)
				}
			}
		})
	}
	if n := s.count(t, "orders"); n != 0 {
		t.Errorf("%d orders stored from bad input", n)
	}
}

func TestIdempotencyKey(t *testing.T) {
	s := newService(t, false)
	body := `{"customerId":"c","totalAmount":100}`
	first := s.do("POST", "/orders", body, "Idempotency-Key", "key-1")
	if first.Code != http.StatusCreated || first.Header().Get("Idempotent-Replayed") != "" {
		t.Fatalf("first: %d %v %s", first.Code, first.Header(), first.Body)
	}

	// The same request, formatted differently, is a replay of the first answer.
	replay := s.do("POST", "/orders", "{ \"totalAmount\": 100,\n \"customerId\": \"c\" }", "Idempotency-Key", "key-1")
	if replay.Code != http.StatusCreated || replay.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay: %d %v %s", replay.Code, replay.Header(), replay.Body)
	}
	if replay.Body.String() != first.Body.String() || replay.Header().Get("Location") != first.Header().Get("Location") {
		t.Errorf("replay body %s, want %s", replay.Body, first.Body)
	}

	mismatch := s.do("POST", "/orders", `{"customerId":"c","totalAmount":101}`, "Idempotency-Key", "key-1")
	if mismatch.Code != http.StatusUnprocessableEntity {
		t.Errorf("mismatch: %d %s", mismatch.Code, mismatch.Body)
	}

	// Hold the key's lock as a request in flight would.
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "key-2"); err != nil {
		t.Fatal(err)
	}
	inFlight := s.do("POST", "/orders", body, "Idempotency-Key", "key-2")
	if inFlight.Code != http.StatusConflict {
		t.Errorf("in flight: %d %s", inFlight.Code, inFlight.Body)
	}
	_ = tx.Rollback(ctx)
	if after := s.do("POST", "/orders", body, "Idempotency-Key", "key-2"); after.Code != http.StatusCreated || after.Header().Get("Idempotent-Replayed") != "" {
		t.Errorf("after the first finished: %d %s", after.Code, after.Body)
	}

	if n := s.count(t, "orders"); n != 2 {
		t.Errorf("orders = %d, want 2 (one per key)", n)
	}
	if n := s.count(t, "outbox"); n != 2 {
		t.Errorf("outbox rows = %d, want 2", n)
	}
}

// A failure after the order insert must leave neither the order nor its event.
func TestCreateIsOneTransaction(t *testing.T) {
	s := newService(t, false)
	ctx := context.Background()
	if _, err := s.pool.Exec(ctx, `
		CREATE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'outbox unavailable'; END $$;
		CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION fail_outbox();`); err != nil {
		t.Fatal(err)
	}
	rec := s.do("POST", "/orders", `{"customerId":"c","totalAmount":100}`)
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500 when the outbox insert fails: %s", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "outbox unavailable") {
		t.Errorf("the answer leaks the database error: %s", rec.Body)
	}
	if n := s.count(t, "orders"); n != 0 {
		t.Errorf("orders = %d after a failed outbox insert, want 0", n)
	}
	if n := s.count(t, "outbox"); n != 0 {
		t.Errorf("outbox rows = %d, want 0", n)
	}
}

type healthAnswer struct {
	Status string
	Checks map[string]string
}

func (s *service) health(t *testing.T, h http.Handler, path string) (int, healthAnswer, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code, decode[healthAnswer](t, rec), rec.Body.String()
}

func TestHealth(t *testing.T) {
	s := newService(t, true)
	for _, path := range []string{"/health", "/health/ready"} {
		code, h, body := s.health(t, s.handler, path)
		if code != http.StatusOK || h.Status != "ok" || h.Checks["postgres"] != "ok" || h.Checks["rabbitmq"] != "ok" {
			t.Errorf("%s: %d %s", path, code, body)
		}
	}
	if code, h, body := s.health(t, s.handler, "/health/live"); code != http.StatusOK || h.Status != "ok" {
		t.Errorf("/health/live: %d %s", code, body)
	}
}

// The outbox accepts orders while the broker is away, so the broker is not
// part of readiness: it shows as unavailable, and the service stays ready.
func TestReadyWhileTheBrokerIsUnreachable(t *testing.T) {
	s := newService(t, false)
	dead := rabbit.NewSession("amqp://guest:guest@127.0.0.1:1/", "dead", s.log)
	t.Cleanup(func() { dead.Close() })
	h := NewServer(s.log, s.store, 1<<20, map[string]web.Check{"postgres": s.pool.Ping, "rabbitmq": dead.Check})
	for _, path := range []string{"/health", "/health/ready"} {
		code, got, body := s.health(t, h, path)
		if code != http.StatusOK || got.Status != "degraded" || got.Checks["postgres"] != "ok" || got.Checks["rabbitmq"] != "unavailable" {
			t.Errorf("%s without broker: %d %s", path, code, body)
		}
	}
	if rec := s.do("POST", "/orders", `{"customerId":"c","totalAmount":1}`); rec.Code != http.StatusCreated {
		t.Errorf("POST without broker: %d %s", rec.Code, rec.Body)
	}
}

// Without its database the service is not ready and says which check
// failed, but the driver's error (host, port, user, database) goes to the
// log only. The process itself still works: live stays 200.
func TestNotReadyWithoutTheDatabase(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://secretuser@127.0.0.1:1/secretdb?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := NewStore(pool, 1, 8)
	defer store.Close()
	var logs testenv.LogBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	h := NewServer(log, store, 1<<20, map[string]web.Check{"postgres": pool.Ping})
	s := &service{}
	var answers []string
	for _, path := range []string{"/health", "/health/ready"} {
		code, got, body := s.health(t, h, path)
		if code != http.StatusServiceUnavailable || got.Status != "unavailable" || got.Checks["postgres"] != "unavailable" {
			t.Errorf("%s without database: %d %s", path, code, body)
		}
		for _, secret := range []string{"secretuser", "secretdb", "127.0.0.1", ":1", "dial", "connect"} {
			if strings.Contains(body, secret) {
				t.Errorf("%s shows driver detail %q: %s", path, secret, body)
			}
		}
		answers = append(answers, body)
	}
	if answers[0] != answers[1] {
		t.Errorf("/health %s differs from /health/ready %s", answers[0], answers[1])
	}
	if !strings.Contains(logs.String(), "secretdb") {
		t.Errorf("the log lacks the driver's error: %s", logs.String())
	}
	if code, got, body := s.health(t, h, "/health/live"); code != http.StatusOK || got.Status != "ok" {
		t.Errorf("/health/live without database: %d %s", code, body)
	}
}

// A batch that fails on one order is retried order by order: the bad one
// fails alone and its neighbours are stored.
func TestBatchFailureIsolatesTheBadOrder(t *testing.T) {
	s := newService(t, false)
	store := NewStore(s.pool, 1, 64)
	t.Cleanup(store.Close)
	ctx := context.Background()
	s.exec(t, rejectPoisonSQL)
	const n = 20
	errs := make(chan error, n+1)
	// Hold inserts back so that the creates below queue up into one batch.
	release := s.holdInserts(t, func() {
		go func() {
			_, _, err := store.Create(ctx, NewOrder("first", 1, "BRL", time.Now()), nil, Response{})
			errs <- err
		}()
	})
	for i := range n {
		customer := fmt.Sprintf("c%d", i)
		if i == 7 {
			customer = "poison"
		}
		go func() {
			_, _, err := store.Create(ctx, NewOrder(customer, 1, "BRL", time.Now()), nil, Response{})
			errs <- err
		}()
	}
	// Once all of them wait for the writer, they form the next batch.
	testenv.Eventually(t, 30*time.Second, "the creates waiting for the writer", func() bool {
		return store.writer.waiting.Load() == n
	})
	release()
	failed := 0
	for range n + 1 {
		if err := <-errs; err != nil {
			failed++
			if !strings.Contains(err.Error(), "poison order") {
				t.Errorf("unexpected error: %v", err)
			}
		}
	}
	if failed != 1 {
		t.Errorf("%d creates failed, want only the poison one", failed)
	}
	if got := s.count(t, "orders"); got != n {
		t.Errorf("%d orders stored, want %d", got, n)
	}
	if got := s.count(t, "outbox"); got != n {
		t.Errorf("%d outbox rows, want %d", got, n)
	}
}

func TestOpenAPIDescribesTheRoutes(t *testing.T) {
	testenv.CheckOpenAPI(t, routes(slog.New(slog.DiscardHandler), nil, 1, nil), "../openapi.json", "orders")
}

// With the database unreachable, the API says so with a 503 problem, not a
// bare 500, and stores nothing.
func TestDatabaseUnavailableIs503(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := NewStore(pool, 1, 8)
	defer store.Close()
	h := NewServer(slog.New(slog.DiscardHandler), store, 1<<20, nil)
	for _, req := range []*http.Request{
		httptest.NewRequest("POST", "/orders", strings.NewReader(`{"customerId":"c","totalAmount":1}`)),
		httptest.NewRequest("GET", "/orders/0196f3c0-0000-7000-8000-000000000000", nil),
		httptest.NewRequest("GET", "/orders", nil),
	} {
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s %s: %d %s", req.Method, req.URL, rec.Code, rec.Body)
		}
	}
}

func TestIdempotencyKeysArePrunedAfterTheirTTL(t *testing.T) {
	s := newService(t, false)
	ctx := context.Background()
	if _, err := s.pool.Exec(ctx, `
		INSERT INTO idempotency_keys (key, request_hash, status, location, body, created_at) VALUES
		('old', '\x00', 201, '/orders/x', '{}', now() - interval '25 hours'),
		('new', '\x00', 201, '/orders/y', '{}', now() - interval '23 hours')`); err != nil {
		t.Fatal(err)
	}
	n, err := s.store.PruneIdempotencyKeys(ctx, 24*time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want 1", n, err)
	}
	var left string
	if err := s.pool.QueryRow(ctx, `SELECT string_agg(key, ',') FROM idempotency_keys`).Scan(&left); err != nil || left != "new" {
		t.Errorf("left %q, %v; want only the key younger than the TTL", left, err)
	}
}

func TestMigrateCommand(t *testing.T) {
	url := testenv.Database(t)
	var out strings.Builder
	env := testenv.Getenv(map[string]string{"DATABASE_URL": url})
	if err := Run(context.Background(), []string{"migrate"}, env, &out); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), `"msg":"migration applied"`) {
		t.Errorf("no migration logged:\n%s", out.String())
	}
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var tables int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_tables WHERE tablename IN ('orders', 'outbox', 'idempotency_keys')`).Scan(&tables); err != nil || tables != 3 {
		t.Errorf("%d tables, %v; want 3", tables, err)
	}
	if err := Run(context.Background(), []string{"migrate"}, env, io.Discard); err != nil {
		t.Errorf("second migrate: %v", err)
	}
	if err := Run(context.Background(), []string{"frobnicate"}, env, io.Discard); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("unknown command: %v", err)
	}
	if err := Run(context.Background(), nil, testenv.Getenv(map[string]string{"PORT": "none"}), io.Discard); err == nil || !strings.Contains(err.Error(), "PORT") {
		t.Errorf("bad PORT: %v", err)
	}
}

// While a failed batch is retried order by order, the writer goes on with
// new creates: one slow retry must not hold up every request behind it.
func TestRetriesOfAFailedBatchDoNotHoldTheWriter(t *testing.T) {
	s := newService(t, false)
	store := NewStore(s.pool, 1, 64)
	t.Cleanup(store.Close)
	ctx := context.Background()
	// 'poison' fails any insert; 'slow' alone in its insert sleeps 3 s,
	// which only its retry does.
	s.exec(t, rejectPoisonSQL)
	s.exec(t, `
		CREATE FUNCTION slow_alone() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF (SELECT count(*) FROM inserted) = 1 AND EXISTS (SELECT 1 FROM inserted WHERE customer_id = 'slow') THEN
				PERFORM pg_sleep(3);
			END IF;
			RETURN NULL;
		END $$;
		CREATE TRIGGER slow_alone AFTER INSERT ON orders REFERENCING NEW TABLE AS inserted
			FOR EACH STATEMENT EXECUTE FUNCTION slow_alone();`)
	create := func(customer string) chan error {
		done := make(chan error, 1)
		go func() {
			_, _, err := store.Create(ctx, NewOrder(customer, 1, "BRL", time.Now()), nil, Response{})
			done <- err
		}()
		return done
	}
	var first chan error
	release := s.holdInserts(t, func() { first = create("first") })
	poison, slow := create("poison"), create("slow")
	testenv.Eventually(t, 30*time.Second, "the next batch waiting for the writer", func() bool {
		return store.writer.waiting.Load() == 2
	})
	release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the retry of 'slow' sleeping", func() bool {
		var sleeping int
		err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()`).Scan(&sleeping)
		return err == nil && sleeping == 1
	})
	fresh := create("fresh")
	select {
	case err := <-fresh:
		if err != nil {
			t.Fatalf("create during the retries: %v", err)
		}
	case err := <-slow:
		t.Fatalf("the create sent during the retries waited for them (slow answered first: %v)", err)
	}
	if err := <-slow; err != nil {
		t.Errorf("slow: %v", err)
	}
	if err := <-poison; err == nil || !strings.Contains(err.Error(), "poison order") {
		t.Errorf("poison: %v", err)
	}
}

// rejectPoisonSQL makes every insert of an order for customer 'poison' fail.
const rejectPoisonSQL = `
	CREATE FUNCTION reject_poison() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN IF NEW.customer_id = 'poison' THEN RAISE EXCEPTION 'poison order'; END IF; RETURN NEW; END $$;
	CREATE TRIGGER reject_poison BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION reject_poison();`

func (s *service) exec(t *testing.T, sql string) {
	t.Helper()
	if _, err := s.pool.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
}

// holdInserts locks table orders against inserts, runs start (which sends
// a first create) and returns once that create's transaction waits for the
// lock, so that creates sent next queue up for the writer as one batch.
// release lets them all go.
func (s *service) holdInserts(t *testing.T, start func()) (release func()) {
	t.Helper()
	ctx := context.Background()
	blocker, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = blocker.Rollback(ctx) })
	if _, err := blocker.Exec(ctx, `LOCK TABLE orders IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	start()
	testenv.Eventually(t, 30*time.Second, "the first batch waiting for the lock", func() bool {
		var waiting int
		err := s.pool.QueryRow(ctx, `
			SELECT count(*) FROM pg_locks
			WHERE relation = 'orders'::regclass AND NOT granted
			  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&waiting)
		return err == nil && waiting > 0
	})
	return func() { _ = blocker.Rollback(ctx) }
}
