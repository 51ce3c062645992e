package invoices

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"invoicing/shared/event"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

// Both real binaries: every order accepted by bin/orders becomes exactly
// one invoice in bin/invoices, numbered without gaps.
func TestPipelineEndToEnd(t *testing.T) {
	s := newService(t)
	orders := testenv.Start(t, testenv.Binary(t, "invoicing/functions/orders/cmd/orders"), map[string]string{
		"DATABASE_URL": testenv.Database(t), "BROKER_URL": s.brokerURL,
	})
	invoices := testenv.Start(t, testenv.Binary(t, "invoicing/functions/invoices/cmd/invoices"), map[string]string{
		"DATABASE_URL": s.dbURL, "BROKER_URL": s.brokerURL, "AUTO_MIGRATE": "true",
	})

	const n = 300
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				body := fmt.Sprintf(`{"customerId":"e2e-%d","totalAmount":%d}`, i%5, i+1)
				resp, err := http.Post(orders.URL+"/orders", "application/json", strings.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					t.Errorf("POST: %d", resp.StatusCode)
					return
				}
				ids <- strings.TrimPrefix(resp.Header.Get("Location"), "/orders/")
			}
		})
	}
	wg.Wait()
	close(ids)
	if t.Failed() {
		return
	}
	s.waitInvoices(t, n, 60*time.Second)
	for id := range ids {
		var count int
		if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM invoices WHERE order_id = $1`, uuid.MustParse(id)).Scan(&count); err != nil {
			t.Fatal(err)
		}
		if count != 1 {
			t.Errorf("order %s has %d invoices", id, count)
		}
	}
	if got := s.invoiceCount(t); got != n {
		t.Errorf("%d invoices for %d orders", got, n)
	}
	s.assertGapless(t)
	for name, p := range map[string]*testenv.Process{"orders": orders, "invoices": invoices} {
		if err := p.Stop(20 * time.Second); err != nil {
			t.Errorf("%s after SIGTERM: %v", name, err)
		}
	}
}

// The consumer is killed with SIGKILL while it works through a backlog, and
// restarted; some events also arrive twice. No invoice is lost or doubled.
func TestConsumerKilledMidBatch(t *testing.T) {
	s := newService(t)
	const n = 4000
	events := make([]event.OrderCreated, n)
	for i := range events {
		events[i] = newEvent(fmt.Sprintf("k%d", i%11), int64(i+1))
		s.publishEvent(t, events[i])
	}
	for _, e := range events[:200] {
		s.publishEvent(t, e)
	}
	testenv.Eventually(t, 20*time.Second, "backlog in the queue", func() bool {
		q, err := s.pub.QueueDeclarePassive(rabbit.Queue, true, false, false, false, nil)
		return err == nil && q.Messages == n+200
	})
	bin := testenv.Binary(t, "invoicing/functions/invoices/cmd/invoices")
	env := map[string]string{"DATABASE_URL": s.dbURL, "BROKER_URL": s.brokerURL, "BATCH_SIZE": "50", "PREFETCH": "100"}
	for kill := 1; kill <= 2; kill++ {
		proc := testenv.Start(t, bin, env)
		target := kill * n / 4
		testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d invoices", target), func() bool { return s.invoiceCount(t) >= target })
		proc.Kill()
		t.Logf("killed with %d invoices issued", s.invoiceCount(t))
	}
	testenv.Start(t, bin, env)
	s.waitInvoices(t, n, 60*time.Second)
	testenv.Eventually(t, 20*time.Second, "queue drained", func() bool {
		q, err := s.pub.QueueDeclarePassive(rabbit.Queue, true, false, false, false, nil)
		return err == nil && q.Messages == 0
	})
	if got := s.invoiceCount(t); got != n {
		t.Errorf("%d invoices for %d orders", got, n)
	}
	// Every event's invoice carries that event's order and amount: nothing
	// was invoiced twice under another order or mixed up between events.
	amounts := make(map[uuid.UUID]int64, n)
	rows, err := s.pool.Query(context.Background(), `SELECT order_id, amount FROM invoices`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id uuid.UUID
		var amount int64
		if err := rows.Scan(&id, &amount); err != nil {
			t.Fatal(err)
		}
		amounts[id] = amount
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if got, ok := amounts[e.OrderID]; !ok || got != e.TotalAmount {
			t.Errorf("order %s: invoiced %v (%d), want amount %d", e.OrderID, ok, got, e.TotalAmount)
		}
	}
	if d := s.deadLetters(t); d != 0 {
		t.Errorf("%d dead letters", d)
	}
	s.assertGapless(t)
}

// SIGTERM while the consumer works through a backlog: it finishes and acks
// the batch in hand and exits 0; what it had not started is redelivered to
// the next consumer, and nothing is lost or doubled.
func TestConsumerStopsGracefully(t *testing.T) {
	s := newService(t)
	const n = 3000
	for i := range n {
		s.publishEvent(t, newEvent("term", int64(i+1)))
	}
	bin := testenv.Binary(t, "invoicing/functions/invoices/cmd/invoices")
	env := map[string]string{"DATABASE_URL": s.dbURL, "BROKER_URL": s.brokerURL, "BATCH_SIZE": "20", "PREFETCH": "40"}
	proc := testenv.Start(t, bin, env)
	testenv.Eventually(t, 20*time.Second, "some invoices", func() bool { return s.invoiceCount(t) > 0 })
	if err := proc.Stop(20 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, proc.Logs())
	}
	stoppedAt := s.invoiceCount(t)
	if stoppedAt == 0 || stoppedAt >= n {
		t.Fatalf("SIGTERM landed with %d of %d invoiced; the test needs it mid-backlog", stoppedAt, n)
	}
	// Every delivery the process held is settled or back in the queue once
	// the broker has dealt with its closed connection (it returns a closed
	// channel's deliveries in one step); then what is ready is exactly what
	// was not invoiced: the batch in hand was acked, not returned.
	testenv.Eventually(t, 20*time.Second, fmt.Sprintf("%d ready after %d invoiced", n-stoppedAt, stoppedAt), func() bool {
		return s.ready(t) == n-stoppedAt
	})
	// The next consumer (the test) finds no message whose order already
	// has an invoice.
	invoiced := make(map[uuid.UUID]bool, stoppedAt)
	rows, err := s.pool.Query(context.Background(), `SELECT order_id FROM invoices`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		invoiced[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	store := &Store{pool: s.pool}
	for {
		d, ok, err := s.pub.Get(rabbit.Queue, false)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		e, err := event.Parse(d.Body)
		if err != nil {
			t.Fatal(err)
		}
		if invoiced[e.OrderID] {
			t.Errorf("order %s was invoiced, yet its message came back (redelivered %v)", e.OrderID, d.Redelivered)
		}
		if _, err := store.Issue(context.Background(), []event.OrderCreated{e}); err != nil {
			t.Fatal(err)
		}
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.invoiceCount(t); got != n {
		t.Errorf("%d invoices for %d events", got, n)
	}
	if d := s.deadLetters(t); d != 0 {
		t.Errorf("%d dead letters", d)
	}
	s.assertGapless(t)
	t.Logf("stopped with %d of %d invoiced", stoppedAt, n)
}

// queueCounts returns queue "orders"'s ready and unacknowledged messages,
// as the broker reports them (basic.declare only gives the ready ones).
// For a quorum queue these are metrics the broker refreshes every few
// seconds: wait on them, never compare them at one instant.
func (s *service) queueCounts(t *testing.T) (ready, unacked int) {
	t.Helper()
	vhost, err := url.PathUnescape(s.brokerURL[strings.LastIndex(s.brokerURL, "/")+1:])
	if err != nil {
		t.Fatal(err)
	}
	bin, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		bin = "/usr/sbin/rabbitmqctl" // as testenv.Rabbitmqctl finds it
	}
	out, err := exec.Command(bin, "list_queues", "-q", "--no-table-headers", "-p", vhost, "name", "messages_ready", "messages_unacknowledged").Output()
	if err != nil {
		t.Fatalf("rabbitmqctl list_queues: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == rabbit.Queue {
			ready, _ = strconv.Atoi(f[1])
			unacked, _ = strconv.Atoi(f[2])
			return ready, unacked
		}
	}
	t.Fatalf("queue %s not listed:\n%s", rabbit.Queue, out)
	return 0, 0
}

// A database that stops answering (a black hole, not a refused connection)
// while the consumer works: each transaction gives up after DB_TIMEOUT, and
// SIGTERM lets the process exit within SHUTDOWN_TIMEOUT. Nothing is lost.
func TestShutdownWhileDatabaseStalled(t *testing.T) {
	s := newService(t)
	proxy, proxied := s.dbProxy(t)
	bin := testenv.Binary(t, "invoicing/functions/invoices/cmd/invoices")
	env := map[string]string{"DATABASE_URL": proxied, "BROKER_URL": s.brokerURL, "BATCH_SIZE": "5", "PREFETCH": "10",
		"DB_TIMEOUT": "1s", "SHUTDOWN_TIMEOUT": "5s"}
	proc := testenv.Start(t, bin, env)
	s.publishEvent(t, newEvent("stall", 1))
	s.waitInvoices(t, 1, 20*time.Second)
	proxy.Stall()
	for i := range 5 {
		s.publishEvent(t, newEvent("stall", int64(i+2)))
	}
	// The consumer took them and is stuck on the database.
	testenv.Eventually(t, 20*time.Second, "the 5 deliveries in hand", func() bool {
		ready, unacked := s.queueCounts(t)
		return ready == 0 && unacked == 5
	})
	// Generous next to SHUTDOWN_TIMEOUT; without a deadline on the
	// database the process never exits.
	if err := proc.Stop(30 * time.Second); err != nil {
		t.Fatalf("after SIGTERM: %v\n%s", err, proc.Logs())
	}
	proxy.Restore()
	testenv.Start(t, bin, map[string]string{"DATABASE_URL": s.dbURL, "BROKER_URL": s.brokerURL})
	s.waitInvoices(t, 6, 30*time.Second)
	if got := s.invoiceCount(t); got != 6 {
		t.Errorf("%d invoices, want 6", got)
	}
	if d := s.deadLetters(t); d != 0 {
		t.Errorf("%d dead letters", d)
	}
	s.assertGapless(t)
}
