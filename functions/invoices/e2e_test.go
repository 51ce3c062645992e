package invoices

import (
	"context"
	"fmt"
	"net/http"
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
	var distinct int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(DISTINCT order_id) FROM invoices`).Scan(&distinct); err != nil {
		t.Fatal(err)
	}
	if distinct != n {
		t.Errorf("%d distinct orders invoiced, want %d", distinct, n)
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
	testenv.Start(t, bin, env)
	s.waitInvoices(t, n, 30*time.Second)
	if got := s.invoiceCount(t); got != n {
		t.Errorf("%d invoices for %d events", got, n)
	}
	if d := s.deadLetters(t); d != 0 {
		t.Errorf("%d dead letters", d)
	}
	s.assertGapless(t)
	t.Logf("stopped with %d of %d invoiced", stoppedAt, n)
}
