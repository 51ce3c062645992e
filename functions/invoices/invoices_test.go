package invoices

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"invoicing/functions/invoices/migrations"
	"invoicing/shared/event"
	"invoicing/shared/postgres"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
	"invoicing/shared/web"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type service struct {
	dbURL     string
	brokerURL string
	pool      *pgxpool.Pool // direct, for assertions
	log       *slog.Logger  // writes to logs
	logs      *testenv.LogBuffer
	pub       *amqp.Channel
}

func newService(t *testing.T) *service {
	t.Helper()
	logs := &testenv.LogBuffer{}
	s := &service{brokerURL: testenv.Vhost(t), logs: logs, log: slog.New(slog.NewJSONHandler(logs, nil))}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("consumer log:\n%s", logs.String())
		}
	})
	s.dbURL, s.pool = testenv.MigratedDatabase(t, migrations.FS)
	conn, err := amqp.Dial(s.brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if s.pub, err = conn.Channel(); err != nil {
		t.Fatal(err)
	}
	if err := rabbit.Declare(s.pub); err != nil {
		t.Fatal(err)
	}
	return s
}

// startConsumer runs a consumer against dbURL and brokerURL (which may go
// through a proxy) until the test ends.
func (s *service) startConsumer(t *testing.T, dbURL, brokerURL string, batch int) {
	t.Helper()
	s.runConsumer(t, dbURL, brokerURL, batch, 0, nil)
}

// runConsumer runs a consumer with a prefetch of twice batch and the given
// batch wait; wrap, when not nil, wraps its store. stop ends the consumer
// as SIGTERM would and returns once Run returned and its connections
// closed; it is also called when the test ends.
func (s *service) runConsumer(t *testing.T, dbURL, brokerURL string, batch int, wait time.Duration, wrap func(*Store) issuer) (stop func()) {
	t.Helper()
	pool, err := postgres.Open(context.Background(), dbURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	var store issuer = &Store{pool: pool}
	if wrap != nil {
		store = wrap(&Store{pool: pool})
	}
	// The connection's name does not hold "invoices", which a proxy may be
	// told to watch for (the consumer tag).
	session := rabbit.NewSession(brokerURL, "consumer-test", s.log)
	c := &Consumer{Session: session, Store: store, Log: s.log, Prefetch: 2 * batch, BatchSize: batch, BatchWait: wait}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; session.Close(); pool.Close() }) }
	t.Cleanup(stop)
	return stop
}

// dbProxy puts a proxy between the consumer and the test's database and
// returns it with the database URL through it.
func (s *service) dbProxy(t *testing.T) (*testenv.Proxy, string) {
	t.Helper()
	return testenv.ProxyURL(t, s.dbURL)
}

// ready returns how many messages wait in queue "orders" (not delivered).
func (s *service) ready(t *testing.T) int {
	t.Helper()
	return s.queue(t).Messages
}

// consumers returns how many consumers queue "orders" has.
func (s *service) consumers(t *testing.T) int {
	t.Helper()
	return s.queue(t).Consumers
}

func (s *service) queue(t *testing.T) amqp.Queue {
	t.Helper()
	q, err := s.pub.QueueDeclarePassive(rabbit.Queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func newEvent(customer string, amount int64) event.OrderCreated {
	return event.OrderCreated{
		EventID: uuid.Must(uuid.NewV7()), Type: event.TypeOrderCreated, OccurredAt: time.Now().UTC(),
		OrderID: uuid.Must(uuid.NewV7()), Customer: event.Customer{ID: customer}, TotalAmount: amount, Currency: "USD",
	}
}

func (s *service) publish(t *testing.T, exchange, key string, body []byte, id string) {
	t.Helper()
	err := s.pub.PublishWithContext(context.Background(), exchange, key, false, false, amqp.Publishing{
		ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: id, Body: body,
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (s *service) publishEvent(t *testing.T, e event.OrderCreated) {
	t.Helper()
	body, _ := json.Marshal(e)
	s.publish(t, rabbit.Exchange, rabbit.RoutingKeyOrderCreated, body, e.EventID.String())
}

func (s *service) invoiceCount(t *testing.T) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM invoices`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (s *service) waitInvoices(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, fmt.Sprintf("%d invoices", n), func() bool { return s.invoiceCount(t) >= n })
}

// assertGapless checks that the year's numbers run 1..count with no hole and
// that every invoice's number matches its sequence.
func (s *service) assertGapless(t *testing.T) {
	t.Helper()
	var count, minSeq, maxSeq, mismatched int
	err := s.pool.QueryRow(context.Background(), `
		SELECT count(*), coalesce(min(seq),0), coalesce(max(seq),0),
		       count(*) FILTER (WHERE number <> format('INV-%s-%s', year, lpad(seq::text, 6, '0')))
		FROM invoices`).Scan(&count, &minSeq, &maxSeq, &mismatched)
	if err != nil {
		t.Fatal(err)
	}
	if count > 0 && (minSeq != 1 || maxSeq != count) || mismatched != 0 {
		t.Errorf("numbers not gapless: %d invoices, seq %d..%d, %d mismatched numbers", count, minSeq, maxSeq, mismatched)
	}
}

func (s *service) deadLetters(t *testing.T) int {
	t.Helper()
	q, err := s.pub.QueueDeclarePassive(rabbit.DeadLetterQueue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

func TestEveryEventBecomesOneInvoice(t *testing.T) {
	s := newService(t)
	s.startConsumer(t, s.dbURL, s.brokerURL, 20)
	events := make([]event.OrderCreated, 120)
	for i := range events {
		events[i] = newEvent(fmt.Sprintf("c%d", i%7), int64(i+1))
		s.publishEvent(t, events[i])
	}
	// Every event again: redeliveries and duplicate publishes are no-ops.
	for _, e := range events {
		s.publishEvent(t, e)
	}
	s.waitInvoices(t, len(events), 20*time.Second)
	testenv.Eventually(t, 10*time.Second, "queue drained", func() bool {
		q, err := s.pub.QueueDeclarePassive(rabbit.Queue, true, false, false, false, nil)
		return err == nil && q.Messages == 0
	})
	if n := s.invoiceCount(t); n != len(events) {
		t.Errorf("%d invoices for %d events", n, len(events))
	}
	s.assertGapless(t)
	var amount int64
	var currency, customer string
	e := events[5]
	if err := s.pool.QueryRow(context.Background(), `SELECT amount, currency, customer_id FROM invoices WHERE order_id = $1`, e.OrderID).
		Scan(&amount, &currency, &customer); err != nil {
		t.Fatal(err)
	}
	if amount != e.TotalAmount || currency != "USD" || customer != e.Customer.ID {
		t.Errorf("invoice %d %s %s for event %+v", amount, currency, customer, e)
	}
	if n := s.deadLetters(t); n != 0 {
		t.Errorf("%d dead letters", n)
	}
}

// The original Node.js producer sent {orderId, totalAmount, customer:{id}}
// straight to queue "orders" through the default exchange.
func TestNodeStyleMessageBecomesInvoice(t *testing.T) {
	s := newService(t)
	s.startConsumer(t, s.dbURL, s.brokerURL, 10)
	orderID := uuid.New()
	s.publish(t, "", rabbit.Queue, []byte(fmt.Sprintf(`{"orderId":%q,"totalAmount":2500,"customer":{"id":"node-customer"}}`, orderID)), "")
	s.waitInvoices(t, 1, 10*time.Second)
	var amount int64
	var currency, customer string
	if err := s.pool.QueryRow(context.Background(), `SELECT amount, currency, customer_id FROM invoices WHERE order_id = $1`, orderID).
		Scan(&amount, &currency, &customer); err != nil {
		t.Fatal(err)
	}
	if amount != 2500 || currency != "BRL" || customer != "node-customer" {
		t.Errorf("invoice %d %s %s", amount, currency, customer)
	}
}

func TestPoisonMessagesAreDeadLettered(t *testing.T) {
	s := newService(t)
	s.startConsumer(t, s.dbURL, s.brokerURL, 10)
	poison := map[string]string{
		"not JSON":         `{"orderId":`,
		"missing orderId":  `{"totalAmount":1,"customer":{"id":"c"}}`,
		"missing customer": fmt.Sprintf(`{"orderId":%q,"totalAmount":1}`, uuid.New()),
		"missing amount":   fmt.Sprintf(`{"orderId":%q,"customer":{"id":"c"}}`, uuid.New()),
		"fractional":       fmt.Sprintf(`{"orderId":%q,"totalAmount":1.5,"customer":{"id":"c"}}`, uuid.New()),
		"unknown type":     fmt.Sprintf(`{"type":"order.cancelled","orderId":%q,"totalAmount":1,"customer":{"id":"c"}}`, uuid.New()),
		"unknown version":  fmt.Sprintf(`{"type":"order.created","version":2,"orderId":%q,"totalAmount":1,"customer":{"id":"c"}}`, uuid.New()),
		"bad currency":     fmt.Sprintf(`{"orderId":%q,"totalAmount":1,"currency":"reais","customer":{"id":"c"}}`, uuid.New()),
	}
	good := 0
	for name, body := range poison {
		s.publishEvent(t, newEvent("good", 10))
		good++
		s.publish(t, rabbit.Exchange, rabbit.RoutingKeyOrderCreated, []byte(body), name)
	}
	s.publishEvent(t, newEvent("good", 10))
	good++
	s.waitInvoices(t, good, 20*time.Second)
	testenv.Eventually(t, 10*time.Second, "every poison message dead-lettered", func() bool { return s.deadLetters(t) == len(poison) })
	if n := s.invoiceCount(t); n != good {
		t.Errorf("%d invoices, want %d", n, good)
	}
	s.assertGapless(t)
	// Exactly the poison messages are in orders.dead, rejected, unchanged.
	dead := map[string]string{}
	for _, d := range s.deadLettered(t) {
		dead[d.MessageId] = string(d.Body)
		if r := deathReason(d); r != "rejected" {
			t.Errorf("%s dead-lettered for %q, want rejected", d.MessageId, r)
		}
	}
	for name, body := range poison {
		if got, ok := dead[name]; !ok || got != body {
			t.Errorf("%s: dead letter %v %q, want body %q", name, ok, got, body)
		}
	}
	if len(dead) != len(poison) {
		t.Errorf("%d dead letters, want %d: %v", len(dead), len(poison), dead)
	}
	// Each one's log line names it and says why.
	logged := map[string]string{}
	for _, rec := range s.logs.Records("message dead-lettered") {
		logged[fmt.Sprint(rec["message_id"])] = fmt.Sprint(rec["reason"])
	}
	for name := range poison {
		if reason := logged[name]; !strings.Contains(reason, event.ErrInvalid.Error()) {
			t.Errorf("%s: logged reason %q, want it to name %q", name, reason, event.ErrInvalid)
		}
	}
}

// With the database unreachable, good messages wait; none is dead-lettered,
// and all are invoiced once it is back.
func TestDatabaseOutageDeadLettersNothing(t *testing.T) {
	s := newService(t)
	proxy, proxied := s.dbProxy(t)
	s.startConsumer(t, proxied, s.brokerURL, 10)

	s.publishEvent(t, newEvent("before", 1))
	s.waitInvoices(t, 1, 10*time.Second)
	proxy.Cut()
	s.publishEvent(t, newEvent("during", 1))
	testenv.Eventually(t, 20*time.Second, "a failed batch", func() bool { return s.logs.Count("holding batch") > 0 })
	// The consumer was cancelled before that batch was reported held: it
	// takes no further deliveries, which would only spend their delivery
	// limit when returned.
	for range 39 {
		s.publishEvent(t, newEvent("during", 1))
	}
	testenv.Eventually(t, 10*time.Second, "39 messages left in the queue", func() bool { return s.ready(t) == 39 })
	attempts := s.logs.Count("holding batch")
	testenv.Eventually(t, 20*time.Second, "more failed attempts", func() bool { return s.logs.Count("holding batch") >= attempts+3 })
	if r := s.ready(t); r != 39 {
		t.Errorf("%d messages ready during the outage, want 39: deliveries were taken", r)
	}
	if n := s.invoiceCount(t); n != 1 {
		t.Fatalf("%d invoices while the database was cut off", n)
	}
	proxy.Restore()
	s.waitInvoices(t, 41, 30*time.Second)
	if n := s.deadLetters(t); n != 0 {
		t.Errorf("%d good messages dead-lettered during the outage", n)
	}
	if n := s.invoiceCount(t); n != 41 {
		t.Errorf("%d invoices, want 41", n)
	}
	s.assertGapless(t)
}

// The consumer's broker connection is cut mid-run; it reconnects by itself.
func TestConsumerRecoversFromBrokerConnectionLoss(t *testing.T) {
	s := newService(t)
	host := strings.SplitN(strings.TrimPrefix(s.brokerURL, "amqp://"), "@", 2)[1]
	host = host[:strings.Index(host, "/")]
	proxy := testenv.NewProxy(t, host)
	s.startConsumer(t, s.dbURL, strings.Replace(s.brokerURL, host, proxy.Addr(), 1), 10)

	for range 20 {
		s.publishEvent(t, newEvent("before", 1))
	}
	s.waitInvoices(t, 20, 10*time.Second)
	proxy.Cut()
	for range 30 {
		s.publishEvent(t, newEvent("during", 1))
	}
	testenv.Eventually(t, 20*time.Second, "failed reconnects", func() bool { return s.logs.Count("reconnecting") >= 2 })
	proxy.Restore()
	for range 10 {
		s.publishEvent(t, newEvent("after", 1))
	}
	s.waitInvoices(t, 60, 30*time.Second)
	if n := s.invoiceCount(t); n != 60 {
		t.Errorf("%d invoices, want 60", n)
	}
	s.assertGapless(t)
}

func TestReadAPI(t *testing.T) {
	s := newService(t)
	store := &Store{pool: s.pool}
	events := []event.OrderCreated{newEvent("alice", 100), newEvent("bob", 200), newEvent("alice", 300)}
	issued, err := store.Issue(context.Background(), events)
	if err != nil || len(issued) != 3 {
		t.Fatalf("Issue = %d, %v", len(issued), err)
	}
	if again, err := store.Issue(context.Background(), events); err != nil || len(again) != 0 {
		t.Fatalf("Issue again = %d, %v; want none", len(again), err)
	}
	h := NewServer(s.log, store, map[string]web.Check{"postgres": s.pool.Ping})
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec
	}
	rec := get("/invoices/" + issued[1].ID.String())
	var v Invoice
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil || rec.Code != 200 {
		t.Fatalf("GET: %d %s", rec.Code, rec.Body)
	}
	if v.OrderID != events[1].OrderID || v.Amount != 200 || v.Status != "issued" || !strings.HasPrefix(v.Number, "INV-") || !strings.HasSuffix(v.Number, "-000002") {
		t.Errorf("invoice = %+v", v)
	}

	var page web.Page[Invoice]
	rec = get("/invoices?customerId=alice&limit=1")
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil || len(page.Data) != 1 || page.Data[0].Amount != 300 || page.NextCursor == "" {
		t.Fatalf("page 1: %s", rec.Body)
	}
	rec = get("/invoices?customerId=alice&limit=1&cursor=" + page.NextCursor)
	page = web.Page[Invoice]{}
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil || len(page.Data) != 1 || page.Data[0].Amount != 100 || page.NextCursor != "" {
		t.Fatalf("page 2: %s", rec.Body)
	}
	rec = get("/invoices?orderId=" + events[2].OrderID.String())
	page = web.Page[Invoice]{}
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil || len(page.Data) != 1 || page.Data[0].OrderID != events[2].OrderID {
		t.Fatalf("by order: %s", rec.Body)
	}

	for path, status := range map[string]int{
		"/invoices/nope":                400,
		"/invoices/" + uuid.NewString(): 404,
		"/invoices?orderId=42":          400,
		"/invoices?limit=0":             400,
		"/invoices?cursor=abc":          400,
		"/invoices?customerId=%ff":      400,
		"/invoices?customerId=%00":      400,
		"/invoices?customerId=a%00b":    400,
		"/invoices?orderId=%00":         400,
		"/invoices?cursor=%00":          400,
		"/invoices?limit=%00":           400,
		"/invoices/%00":                 400,
		"/nothing":                      404,
	} {
		if rec := get(path); rec.Code != status || rec.Header().Get("Content-Type") != "application/problem+json" {
			t.Errorf("GET %s: %d %s, want %d problem", path, rec.Code, rec.Body, status)
		}
	}
	// Text PostgreSQL cannot store is the caller's mistake: a 400 naming the field.
	for path, field := range map[string]string{
		"/invoices?customerId=%00":   "customerId",
		"/invoices?customerId=a%00b": "customerId",
		"/invoices?customerId=%ff":   "customerId",
		"/invoices?orderId=%00":      "orderId",
		"/invoices?cursor=%00":       "cursor",
		"/invoices?limit=%00":        "limit",
		"/invoices/%00":              "id",
	} {
		rec := get(path)
		var p web.Error
		if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || rec.Code != 400 || len(p.Errors) == 0 || p.Errors[0].Field != field {
			t.Errorf("GET %s: %d %s, want 400 naming %s", path, rec.Code, rec.Body, field)
		}
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/invoices", strings.NewReader("{}")))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /invoices: %d", rec.Code)
	}
}

func TestOpenAPIDescribesTheRoutes(t *testing.T) {
	testenv.CheckOpenAPI(t, routes(slog.New(slog.DiscardHandler), nil, nil), "../openapi.json", "invoices")
}
