package invoices

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

// Queue "orders" and its binding are deleted under both running binaries,
// as an operator might: the consumer declares the queue again on its own,
// the relay keeps the events the broker could not route and declares the
// binding again, and every order still becomes exactly one invoice, with
// no restart. (Deleting the queue while the relay is publishing is left
// out: when the relay declares it again within milliseconds, RabbitMQ
// 3.10.8 was seen to leave the consumer subscribed with deliveries it never
// handed over, and no cancel; see the README.)
func TestTopologyDeletedUnderRunningServices(t *testing.T) {
	s := newService(t)
	orders := testenv.Start(t, testenv.Binary(t, "invoicing/functions/orders/cmd/orders"), map[string]string{
		"DATABASE_URL": testenv.Database(t), "BROKER_URL": s.brokerURL, "RELAY_INTERVAL": "100ms",
	})
	testenv.Start(t, testenv.Binary(t, "invoicing/functions/invoices/cmd/invoices"), map[string]string{
		"DATABASE_URL": s.dbURL, "BROKER_URL": s.brokerURL, "AUTO_MIGRATE": "true",
	})
	admin, err := amqp.Dial(s.brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	// consumers returns the consumers on queue "orders", or -1 while the
	// queue does not exist (the passive declare's 404 closes its channel).
	consumers := func() int {
		ch, err := admin.Channel()
		if err != nil {
			t.Fatal(err)
		}
		q, err := ch.QueueDeclarePassive(rabbit.Queue, true, false, false, false, nil)
		if err != nil {
			return -1
		}
		_ = ch.Close()
		return q.Consumers
	}
	run := func(op func(ch *amqp.Channel) error) {
		t.Helper()
		ch, err := admin.Channel()
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		if err := op(ch); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	post := func(n int, customer string) {
		t.Helper()
		for i := range n {
			body := fmt.Sprintf(`{"customerId":%q,"totalAmount":%d}`, customer, i+1)
			resp, err := http.Post(orders.URL+"/orders", "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("POST: %d", resp.StatusCode)
			}
			ids = append(ids, strings.TrimPrefix(resp.Header.Get("Location"), "/orders/"))
		}
	}

	post(10, "before")
	s.waitInvoices(t, len(ids), 30*time.Second)

	// No order is created meanwhile, so only the consumer can bring the
	// queue back: the broker cancelled its consumer with the queue.
	run(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(rabbit.Queue, false, false, false); return err })
	testenv.Eventually(t, 30*time.Second, "the consumer to declare queue orders again and consume it", func() bool {
		return consumers() == 1
	})
	post(10, "after-queue-deleted-idle")
	s.waitInvoices(t, len(ids), 30*time.Second)

	// Without its binding, the queue gets nothing from exchange "orders":
	// the broker returns the relay's mandatory publishes.
	run(func(ch *amqp.Channel) error {
		return ch.QueueUnbind(rabbit.Queue, rabbit.RoutingKeyOrderCreated, rabbit.Exchange, nil)
	})
	post(20, "after-unbind")
	s.waitInvoices(t, len(ids), 60*time.Second)
	for _, id := range ids {
		var count int
		if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM invoices WHERE order_id = $1`, uuid.MustParse(id)).Scan(&count); err != nil {
			t.Fatal(err)
		}
		if count != 1 {
			t.Errorf("order %s has %d invoices", id, count)
		}
	}
	if got := s.invoiceCount(t); got != len(ids) {
		t.Errorf("%d invoices for %d orders", got, len(ids))
	}
	if d := s.deadLetters(t); d != 0 {
		t.Errorf("%d dead letters", d)
	}
}
