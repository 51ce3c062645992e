package orders

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
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
	ch   *amqp.Channel
	done chan struct{} // closed once the deliveries channel closed

	mu   sync.Mutex
	msgs []amqp.Delivery
}

const receiverTag = "receiver"

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
	deliveries, err := ch.Consume(rabbit.Queue, receiverTag, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{ch: ch, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for d := range deliveries {
			r.mu.Lock()
			r.msgs = append(r.msgs, d)
			r.mu.Unlock()
		}
	}()
	return r
}

// stop cancels the consumer and returns every delivery it got. amqp091
// closes the deliveries channel after the broker's cancel-ok, which follows
// every delivery sent before it, so nothing is still on its way.
func (r *receiver) stop(t *testing.T) []amqp.Delivery {
	t.Helper()
	if err := r.ch.Cancel(receiverTag, false); err != nil {
		t.Fatal(err)
	}
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]amqp.Delivery(nil), r.msgs...)
}

// ready returns the number of messages waiting in queue "orders".
func ready(t *testing.T, brokerURL string) int {
	t.Helper()
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(rabbit.Queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

// logRecorder is a slog handler that keeps every record, so tests can wait
// for what the relay reports instead of sleeping.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r.Clone())
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// matching returns the records whose message contains msg, each as its
// attributes by key.
func (l *logRecorder) matching(msg string) []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]string
	for _, r := range l.records {
		if !strings.Contains(r.Message, msg) {
			continue
		}
		attrs := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value.String()
			return true
		})
		out = append(out, attrs)
	}
	return out
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

// rendezvous makes the first Publish of each of two relays wait until the
// other relay is inside a Publish too, so a test proves that both claimed a
// batch at the same time: with FOR UPDATE but no SKIP LOCKED, the second
// relay's claim waits for the first relay's rows, and the first relay's
// publish times out here waiting for it.
type rendezvous struct {
	arrived [2]chan struct{}
	once    [2]sync.Once
}

func newRendezvous() *rendezvous {
	return &rendezvous{arrived: [2]chan struct{}{make(chan struct{}), make(chan struct{})}}
}

type meetingPublisher struct {
	*rabbit.Publisher
	r    *rendezvous
	self int
}

func (p meetingPublisher) Publish(ctx context.Context, msgs []rabbit.Message) error {
	first := false
	p.r.once[p.self].Do(func() { first = true; close(p.r.arrived[p.self]) })
	if first {
		select {
		case <-p.r.arrived[1-p.self]:
		case <-time.After(20 * time.Second):
			return fmt.Errorf("relay %d: the other relay never published while this one did", p.self)
		}
	}
	return p.Publisher.Publish(ctx, msgs)
}

func TestTwoRelaysPublishEachRowOnce(t *testing.T) {
	s := newService(t, true)
	orders := s.createOrders(t, 300, "cust")
	// No consumer yet: the queue keeps what the relays publish, to be counted.
	meet := newRendezvous()
	var wg sync.WaitGroup
	counts := make([]int, 2)
	for i := range 2 {
		relay, session := s.relay(s.brokerURL, 10)
		defer session.Close()
		relay.Publisher = meetingPublisher{Publisher: relay.Publisher.(*rabbit.Publisher), r: meet, self: i}
		wg.Go(func() {
			n, err := relay.Sweep(context.Background())
			if err != nil {
				t.Errorf("relay %d: %v", i, err)
			}
			counts[i] = n
		})
	}
	wg.Wait()
	if counts[0] == 0 || counts[1] == 0 || counts[0]+counts[1] != len(orders) {
		t.Errorf("relays published %v, want both some and %d in all", counts, len(orders))
	}
	// Every publish was confirmed before Sweep returned, so the queue holds
	// all of them now: exactly one message per order means no duplicate.
	if n := ready(t, s.brokerURL); n != len(orders) {
		t.Errorf("queue holds %d messages for %d orders", n, len(orders))
	}
	got := receive(t, s.brokerURL).byOrder(t, orders, 10*time.Second)
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
	proxy, proxied := testenv.ProxyURL(t, s.brokerURL)
	relay, session := s.relay(proxied, 50)
	defer session.Close()
	logs := &logRecorder{}
	relay.Log = slog.New(logs)
	recv := receive(t, s.brokerURL)

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	defer func() { stop(); <-done }()

	before := s.createOrders(t, 20, "before")
	recv.byOrder(t, before, 10*time.Second)

	proxy.Cut()
	failures := len(logs.matching("outbox relay failed"))
	during := s.createOrders(t, 50, "during") // every one answered 201 by createOrders
	testenv.Eventually(t, 10*time.Second, "the relay to try and fail", func() bool {
		return len(logs.matching("outbox relay failed")) > failures
	})
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
