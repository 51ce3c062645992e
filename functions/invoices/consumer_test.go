package invoices

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"invoicing/shared/event"
	"invoicing/shared/postgres"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

// exec runs SQL on the test's database directly.
func (s *service) exec(t *testing.T, sql string) {
	t.Helper()
	if _, err := s.pool.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
}

// deadLettered takes every message from orders.dead, acking it.
func (s *service) deadLettered(t *testing.T) []amqp.Delivery {
	t.Helper()
	var out []amqp.Delivery
	for {
		d, ok, err := s.pub.Get(rabbit.DeadLetterQueue, false)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return out
		}
		out = append(out, d)
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
}

// deathReason returns the reason of the message's first x-death entry.
func deathReason(d amqp.Delivery) string {
	deaths, _ := d.Headers["x-death"].([]any)
	if len(deaths) == 0 {
		return ""
	}
	death, _ := deaths[0].(amqp.Table)
	reason, _ := death["reason"].(string)
	return reason
}

// A batch in which the database refuses one message for its data (a check
// violation): the batch fails, the consumer falls back to issuing one by
// one, dead-letters that message only, and invoices the others, gaplessly.
func TestDataErrorDeadLettersOnlyItsMessage(t *testing.T) {
	s := newService(t)
	s.exec(t, `
		CREATE FUNCTION refuse_customer() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.customer_id = 'refused' THEN
				RAISE EXCEPTION 'customer refused' USING ERRCODE = 'check_violation';
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse_customer BEFORE INSERT ON invoices FOR EACH ROW EXECUTE FUNCTION refuse_customer();`)
	const n = 10
	var refused event.OrderCreated
	// Everything is in the queue before the consumer starts, so its first
	// batch holds several messages, the refused one among them.
	for i := range n {
		e := newEvent(fmt.Sprint("ok-", i), int64(i+1))
		if i == n/2 {
			e.Customer.ID = "refused"
			refused = e
		}
		s.publishEvent(t, e)
	}
	testenv.Eventually(t, 10*time.Second, "backlog in the queue", func() bool { return s.ready(t) == n })
	s.runConsumer(t, s.dbURL, s.brokerURL, n, time.Second, nil)

	s.waitInvoices(t, n-1, 20*time.Second)
	var dead []amqp.Delivery
	testenv.Eventually(t, 10*time.Second, "a dead letter", func() bool {
		dead = append(dead, s.deadLettered(t)...)
		return len(dead) > 0
	})
	if len(dead) != 1 || dead[0].MessageId != refused.EventID.String() || deathReason(dead[0]) != "rejected" {
		for _, d := range dead {
			t.Errorf("dead letter %s (reason %q), want only %s", d.MessageId, deathReason(d), refused.EventID)
		}
	}
	if got := s.invoiceCount(t); got != n-1 {
		t.Errorf("%d invoices, want %d", got, n-1)
	}
	var refusedInvoices int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM invoices WHERE order_id = $1`, refused.OrderID).Scan(&refusedInvoices); err != nil {
		t.Fatal(err)
	}
	if refusedInvoices != 0 {
		t.Errorf("refused order invoiced")
	}
	s.assertGapless(t)
	// The fallback ran on a real batch, not on a lone message.
	fallbacks := s.logs.Records("issuing one by one")
	if len(fallbacks) == 0 {
		t.Fatal("no batch fell back to issuing one by one")
	}
	if size, _ := fallbacks[0]["deliveries"].(float64); size < 2 {
		t.Errorf("the refused batch held %v deliveries; the test needs several", fallbacks[0]["deliveries"])
	}
}

// Errors that are not about the data (here a read-only database, as after a
// failover to a replica not yet promoted) dead-letter nothing: the batch is
// held and retried, and goes through once the database takes writes again.
func TestTransientDatabaseErrorDeadLettersNothing(t *testing.T) {
	for name, code := range map[string]string{
		"read-only transaction": "read_only_sql_transaction", // 25006
		"undefined table":       "undefined_table",           // 42P01
		"internal error":        "internal_error",            // XX000
	} {
		t.Run(name, func(t *testing.T) {
			s := newService(t)
			s.exec(t, fmt.Sprintf(`
				CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN
					RAISE EXCEPTION 'transient trouble' USING ERRCODE = '%s';
				END $$;
				CREATE TRIGGER refuse_all BEFORE INSERT ON invoices FOR EACH ROW EXECUTE FUNCTION refuse_all();`, code))
			const n = 10
			for i := range n {
				s.publishEvent(t, newEvent("transient", int64(i+1)))
			}
			s.runConsumer(t, s.dbURL, s.brokerURL, 5, 50*time.Millisecond, nil)
			// Every attempt, whatever the consumer makes of it, logs the
			// database's error; wait for several.
			testenv.Eventually(t, 20*time.Second, "several failed attempts", func() bool {
				return s.logs.Count("transient trouble") >= 4
			})
			if d := s.deadLetters(t); d != 0 {
				t.Fatalf("%d messages dead-lettered for a transient error", d)
			}
			s.exec(t, `DROP TRIGGER refuse_all ON invoices`)
			s.waitInvoices(t, n, 30*time.Second)
			testenv.Eventually(t, 10*time.Second, "queue drained", func() bool { return s.ready(t) == 0 })
			if got := s.invoiceCount(t); got != n {
				t.Errorf("%d invoices, want %d", got, n)
			}
			if d := s.deadLetters(t); d != 0 {
				t.Errorf("%d dead letters", d)
			}
			s.assertGapless(t)
		})
	}
}

// Restarting the consumer while the database is unreachable must not spend
// the messages' delivery limit: on RabbitMQ 3.10 every delivery returned by
// a closed channel counts (TestQuorumQueueDeliveryCount), so a consumer that
// took deliveries on each start would see them dead-lettered after 20
// restarts. It takes none until the database answers.
func TestRestartsDuringDatabaseOutageSpendNoDeliveries(t *testing.T) {
	s := newService(t)
	proxy, proxied := s.dbProxy(t)
	const n = 10
	for i := range n {
		s.publishEvent(t, newEvent("outage", int64(i+1)))
	}
	testenv.Eventually(t, 10*time.Second, "backlog in the queue", func() bool { return s.ready(t) == n })
	proxy.Cut()
	const restarts = rabbit.DeliveryLimit + 2
	for range restarts {
		before := s.logs.Count("database unavailable")
		stop := s.runConsumer(t, proxied, s.brokerURL, n/2, 0, nil)
		testenv.Eventually(t, 20*time.Second, "a failed attempt", func() bool {
			// A consumer that took the messages on each start got them
			// dead-lettered by now, and has nothing left to fail on.
			return s.logs.Count("database unavailable") > before || s.deadLetters(t) > 0
		})
		stop()
	}
	if d := s.deadLetters(t); d != 0 {
		t.Fatalf("%d messages dead-lettered after %d restarts during the outage", d, restarts)
	}
	m, ok, err := s.pub.Get(rabbit.Queue, false)
	if err != nil || !ok {
		t.Fatalf("basic.get: %v, %v", ok, err)
	}
	// basic.get reports a message never delivered with x-delivery-count 0.
	if count, _ := m.Headers["x-delivery-count"].(int64); m.Redelivered || count != 0 {
		t.Errorf("after %d restarts a message was delivered before: redelivered %v, x-delivery-count %v",
			restarts, m.Redelivered, m.Headers["x-delivery-count"])
	}
	if err := m.Nack(false, true); err != nil {
		t.Fatal(err)
	}
	proxy.Restore()
	s.startConsumer(t, proxied, s.brokerURL, n/2)
	s.waitInvoices(t, n, 30*time.Second)
	if got := s.invoiceCount(t); got != n {
		t.Errorf("%d invoices, want %d", got, n)
	}
	if d := s.deadLetters(t); d != 0 {
		t.Errorf("%d dead letters", d)
	}
	s.assertGapless(t)
}

// gatedStore blocks the first Issue until released, so a test can end the
// consumer while a batch is in hand.
type gatedStore struct {
	*Store
	entered chan []event.OrderCreated
	release chan struct{}
}

func (g *gatedStore) Issue(ctx context.Context, events []event.OrderCreated) ([]Invoice, error) {
	select {
	case g.entered <- events:
		<-g.release
	default:
	}
	return g.Store.Issue(ctx, events)
}

// Shutdown while a batch is being issued: the batch is committed and acked,
// the deliveries not yet started go back to the queue.
func TestShutdownFinishesBatchInHand(t *testing.T) {
	s := newService(t)
	const n = 30
	for i := range n {
		s.publishEvent(t, newEvent("shutdown", int64(i+1)))
	}
	testenv.Eventually(t, 10*time.Second, "backlog in the queue", func() bool { return s.ready(t) == n })
	pool, err := postgres.Open(context.Background(), s.dbURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	session := rabbit.NewSession(s.brokerURL, "invoices-test", s.log)
	defer session.Close()
	gate := &gatedStore{Store: &Store{pool: pool}, entered: make(chan []event.OrderCreated), release: make(chan struct{})}
	c := &Consumer{Session: session, Store: gate, Log: s.log, Prefetch: 20, BatchSize: 10, BatchWait: time.Second}
	ctx, shutdown := context.WithCancel(context.Background())
	defer shutdown()
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	var inHand []event.OrderCreated
	select {
	case inHand = <-gate.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("no batch reached the store")
	}
	shutdown() // as SIGTERM does, while the batch is being issued
	close(gate.release)
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	session.Close()
	if got := s.invoiceCount(t); got != len(inHand) {
		t.Fatalf("%d invoices after shutdown, want the %d of the batch in hand", got, len(inHand))
	}
	testenv.Eventually(t, 10*time.Second, "the rest back in the queue", func() bool { return s.ready(t) == n-len(inHand) })
	if d := s.deadLetters(t); d != 0 {
		t.Errorf("%d dead letters", d)
	}
}
