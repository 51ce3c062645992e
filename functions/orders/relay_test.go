package orders

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"invoicing/shared/event"
	"invoicing/shared/outbox"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

func (s *service) relay(brokerURL string, batch int) (*outbox.Relay, *rabbit.Session) {
	session := rabbit.NewSession(brokerURL, "relay-test", s.log)
	return &outbox.Relay{
		Pool: s.pool, Publisher: rabbit.NewPublisher(session), Log: s.log,
		BatchSize: batch, PublishTimeout: 5 * time.Second, Interval: 50 * time.Millisecond,
	}, session
}

func (s *service) createOrders(t *testing.T, n int, customer string) []Order {
	t.Helper()
	orders := make([]Order, 0, n)
	for i := range n {
		rec := s.do("POST", "/orders", fmt.Sprintf(`{"customerId":%q,"totalAmount":%d}`, customer, i+1))
		if rec.Code != http.StatusCreated {
			t.Fatalf("POST %d: %d %s", i, rec.Code, rec.Body)
		}
		orders = append(orders, decode[Order](t, rec))
	}
	return orders
}

// receiver consumes queue "orders" of a vhost and keeps every delivery.
type receiver struct {
	mu   sync.Mutex
	msgs []amqp.Delivery
}

func receive(t *testing.T, brokerURL string) *receiver {
	t.Helper()
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := rabbit.Declare(ch); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(rabbit.Queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{}
	go func() {
		for d := range deliveries {
			r.mu.Lock()
			r.msgs = append(r.msgs, d)
			r.mu.Unlock()
		}
	}()
	return r
}

// byOrder waits until every order has arrived and returns the deliveries per order id.
func (r *receiver) byOrder(t *testing.T, orders []Order, timeout time.Duration) map[uuid.UUID][]amqp.Delivery {
	t.Helper()
	var got map[uuid.UUID][]amqp.Delivery
	testenv.Eventually(t, timeout, fmt.Sprintf("%d order.created messages", len(orders)), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		got = map[uuid.UUID][]amqp.Delivery{}
		for _, d := range r.msgs {
			e, err := event.Parse(d.Body)
			if err != nil {
				t.Fatalf("unparseable message %s: %v", d.Body, err)
			}
			got[e.OrderID] = append(got[e.OrderID], d)
		}
		for _, o := range orders {
			if len(got[o.ID]) == 0 {
				return false
			}
		}
		return true
	})
	return got
}

func TestRelayPublishesWithPropertiesAndMarksRows(t *testing.T) {
	s := newService(t, true)
	orders := s.createOrders(t, 3, "cust")
	recv := receive(t, s.brokerURL)
	relay, session := s.relay(s.brokerURL, 2)
	defer session.Close()

	n, err := relay.Sweep(context.Background())
	if err != nil || n != 3 {
		t.Fatalf("Sweep = %d, %v; want 3 in two batches", n, err)
	}
	got := recv.byOrder(t, orders, 10*time.Second)
	for _, o := range orders {
		if len(got[o.ID]) != 1 {
			t.Fatalf("order %s published %d times", o.ID, len(got[o.ID]))
		}
		d := got[o.ID][0]
		var e event.OrderCreated
		if err := json.Unmarshal(d.Body, &e); err != nil {
			t.Fatal(err)
		}
		if e.Type != "order.created" || e.TotalAmount != o.TotalAmount || e.Currency != "BRL" || e.Customer.ID != "cust" || !e.OccurredAt.Equal(o.CreatedAt) {
			t.Errorf("event = %+v for order %+v", e, o)
		}
		if d.ContentType != "application/json" || d.DeliveryMode != amqp.Persistent || d.MessageId != e.EventID.String() ||
			d.Type != "order.created" || d.Timestamp.IsZero() || d.Exchange != "orders" || d.RoutingKey != "order.created" {
			t.Errorf("properties: content-type %q mode %d id %q type %q ts %v exchange %q key %q",
				d.ContentType, d.DeliveryMode, d.MessageId, d.Type, d.Timestamp, d.Exchange, d.RoutingKey)
		}
	}
	var unpublished int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&unpublished); err != nil {
		t.Fatal(err)
	}
	if unpublished != 0 {
		t.Errorf("%d rows still unpublished", unpublished)
	}
	if n, err := relay.Sweep(context.Background()); err != nil || n != 0 {
		t.Errorf("second Sweep = %d, %v; want nothing left", n, err)
	}
}

func TestTwoRelaysPublishEachRowOnce(t *testing.T) {
	s := newService(t, true)
	orders := s.createOrders(t, 300, "cust")
	recv := receive(t, s.brokerURL)
	var wg sync.WaitGroup
	counts := make([]int, 2)
	for i := range 2 {
		relay, session := s.relay(s.brokerURL, 10)
		defer session.Close()
		wg.Go(func() {
			n, err := relay.Sweep(context.Background())
			if err != nil {
				t.Errorf("relay %d: %v", i, err)
			}
			counts[i] = n
		})
	}
	wg.Wait()
	if counts[0]+counts[1] != len(orders) {
		t.Errorf("relays published %v, want %d in all", counts, len(orders))
	}
	if counts[0] == 0 || counts[1] == 0 {
		t.Logf("one relay did all the work: %v", counts)
	}
	got := recv.byOrder(t, orders, 10*time.Second)
	time.Sleep(200 * time.Millisecond) // a duplicate would arrive by now
	recv.mu.Lock()
	total := len(recv.msgs)
	recv.mu.Unlock()
	if total != len(orders) {
		t.Errorf("received %d messages for %d orders", total, len(orders))
	}
	for id, ds := range got {
		if len(ds) != 1 {
			t.Errorf("order %s published %d times", id, len(ds))
		}
	}
}

// While the broker is unreachable, orders are still accepted; once it is
// back, every event is published.
func TestRelayRecoversFromBrokerOutage(t *testing.T) {
	s := newService(t, true)
	u, _ := url.Parse(s.brokerURL)
	proxy := testenv.NewProxy(t, u.Host)
	proxied := *u
	proxied.Host = proxy.Addr()
	relay, session := s.relay(proxied.String(), 50)
	defer session.Close()
	recv := receive(t, s.brokerURL)

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	defer func() { stop(); <-done }()

	before := s.createOrders(t, 20, "before")
	recv.byOrder(t, before, 10*time.Second)

	proxy.Cut()
	during := s.createOrders(t, 50, "during") // every one answered 201 by createOrders
	time.Sleep(300 * time.Millisecond)        // the relay tries and fails meanwhile
	var waiting int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&waiting); err != nil {
		t.Fatal(err)
	}
	if waiting != len(during) {
		t.Fatalf("%d rows wait in the outbox while the broker is away, want %d", waiting, len(during))
	}
	proxy.Restore()

	all := append(before, during...)
	got := recv.byOrder(t, all, 30*time.Second)
	for _, o := range during {
		if len(got[o.ID]) == 0 {
			t.Errorf("order %s never published", o.ID)
		}
	}
}
