package orders

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"invoicing/shared/event"
	"invoicing/shared/outbox"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

func vhostOf(t *testing.T, brokerURL string) string {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	v, err := url.PathUnescape(strings.TrimPrefix(u.EscapedPath(), "/"))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The broker refuses (nacks) every publish: queue "orders" is over a
// max-length with overflow reject-publish. The relay must wait for the
// confirms to see this: its rows stay, and once the queue accepts again
// every event arrives exactly once.
func TestRelayKeepsRowsTheBrokerNacks(t *testing.T) {
	s := newService(t, true)
	vhost := vhostOf(t, s.brokerURL)
	orders := s.createOrders(t, 10, "nacked")

	conn, err := amqp.Dial(s.brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	probe, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := rabbit.Declare(probe); err != nil {
		t.Fatal(err)
	}
	if err := probe.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const policy = "reject-all"
	if err := testenv.Rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", policy, "^orders$",
		`{"max-length":0,"overflow":"reject-publish"}`); err != nil {
		t.Fatal(err)
	}
	// A quorum queue in RabbitMQ 3.10 applies the policy asynchronously and
	// refuses a publish only while it already holds more than max-length
	// messages: fill it until it refuses one, which also shows the policy
	// took effect. The fillers are not orders.
	filler, _ := json.Marshal(event.OrderCreated{
		EventID: uuid.New(), Type: event.TypeOrderCreated, OccurredAt: time.Now().UTC(),
		OrderID: uuid.New(), Customer: event.Customer{ID: "filler"}, TotalAmount: 1, Currency: "BRL",
	})
	fillers := 0
	testenv.Eventually(t, 20*time.Second, "queue orders to refuse publishes", func() bool {
		dc, err := probe.PublishWithDeferredConfirmWithContext(context.Background(), "", rabbit.Queue, false, false,
			amqp.Publishing{MessageId: "filler", Body: filler})
		if err != nil {
			t.Fatal(err)
		}
		if dc.Wait() {
			fillers++
			return false
		}
		return true
	})

	relay, session := s.relay(s.brokerURL, 4)
	defer session.Close()
	n, err := relay.Sweep(context.Background())
	if !errors.Is(err, rabbit.ErrNacked) || n != 0 {
		t.Fatalf("Sweep = %d, %v; want 0 and a nack", n, err)
	}
	if waiting := s.count(t, "outbox"); waiting != len(orders) {
		t.Fatalf("%d rows in the outbox after the broker refused them, want %d", waiting, len(orders))
	}

	if err := testenv.Rabbitmqctl("clear_policy", "-p", vhost, policy); err != nil {
		t.Fatal(err)
	}
	// The queue accepts again only once a consumer took it below the
	// limit. Until then publishes may still be refused; one row per batch
	// makes every publish all or nothing, so none is published twice.
	recv := receive(t, s.brokerURL)
	one, session1 := s.relay(s.brokerURL, 1)
	defer session1.Close()
	testenv.Eventually(t, 30*time.Second, "every row published", func() bool {
		_, err := one.Sweep(context.Background())
		return err == nil && s.count(t, "outbox") == 0
	})
	recv.byOrder(t, orders, 10*time.Second)
	delivered := recv.stop(t)
	perOrder := map[uuid.UUID]int{}
	others := 0
	for _, d := range delivered {
		if d.MessageId == "filler" {
			others++
			continue
		}
		e, err := event.Parse(d.Body)
		if err != nil {
			t.Fatalf("unparseable message %s: %v", d.Body, err)
		}
		perOrder[e.OrderID]++
	}
	if left := ready(t, s.brokerURL); left != 0 {
		t.Errorf("%d messages left in the queue", left)
	}
	if others != fillers {
		t.Errorf("%d fillers delivered, %d published", others, fillers)
	}
	for _, o := range orders {
		if perOrder[o.ID] != 1 {
			t.Errorf("order %s delivered %d times", o.ID, perOrder[o.ID])
		}
	}
	if len(perOrder) != len(orders) {
		t.Errorf("%d orders delivered, want %d", len(perOrder), len(orders))
	}
}

// addEvent stores an order.created event for a made-up order straight in
// the outbox, with the exchange and routing key given and its body padded
// to at least size bytes. It returns the order (only its id is set) and the
// event id.
func (s *service) addEvent(t *testing.T, exchange, key string, size int) (Order, uuid.UUID) {
	t.Helper()
	e := event.OrderCreated{
		EventID: uuid.Must(uuid.NewV7()), Type: event.TypeOrderCreated, OccurredAt: time.Now().UTC(),
		OrderID: uuid.Must(uuid.NewV7()), Customer: event.Customer{ID: "direct"}, TotalAmount: 1, Currency: "BRL",
	}
	body, _ := json.Marshal(e)
	if pad := size - len(body); pad > 0 {
		// Unknown fields are ignored by consumers.
		body = append(body[:len(body)-1], fmt.Sprintf(`,"padding":%q}`, strings.Repeat("x", pad))...)
	}
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	err = outbox.Add(ctx, tx, outbox.Message{
		EventID: e.EventID, Type: e.Type, Exchange: exchange, RoutingKey: key, Body: body, Headers: map[string]string{},
	})
	if err == nil {
		err = tx.Commit(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	return Order{ID: e.OrderID}, e.EventID
}

// The broker stops answering (a black hole: the connection stays open,
// nothing comes back, and once the buffers are full writes block). Sweep
// must give up within about the publish timeout, both while it waits for
// confirms and while it is stuck writing, keep the rows, and publish them
// once the broker answers again.
func TestRelayPublishTimesOutOnStalledBroker(t *testing.T) {
	s := newService(t, true)
	proxy, proxied := testenv.ProxyURL(t, s.brokerURL)
	relay, session := s.relay(proxied, 50)
	defer session.Close()
	relay.PublishTimeout = time.Second
	recv := receive(t, s.brokerURL)
	ctx := context.Background()

	// The stall must hit a connection and channel already in use.
	warm := s.createOrders(t, 1, "warm")
	if n, err := relay.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v", n, err)
	}
	sweepFails := func(what, want string) {
		t.Helper()
		type result struct {
			n   int
			err error
		}
		done := make(chan result, 1)
		go func() {
			n, err := relay.Sweep(ctx)
			done <- result{n, err}
		}()
		// Far above the 1 s timeout, far below amqp091's own heartbeat
		// detection (30 s), which the relay used to rely on.
		const bound = 15 * time.Second
		select {
		case r := <-done:
			if r.err == nil || r.n != 0 || !strings.Contains(r.err.Error(), want) {
				t.Fatalf("%s: Sweep = %d, %v; want an error containing %q", what, r.n, r.err, want)
			}
			t.Logf("%s: %v", what, r.err)
		case <-time.After(bound):
			t.Fatalf("%s: Sweep still running %s after it started, with a publish timeout of %s", what, bound, relay.PublishTimeout)
		}
	}
	publishAll := func() {
		t.Helper()
		proxy.Restore()
		testenv.Eventually(t, 30*time.Second, "every row published after the broker answers again", func() bool {
			_, err := relay.Sweep(ctx)
			return err == nil && s.count(t, "outbox") == 0
		})
	}

	proxy.Stall()
	small := s.createOrders(t, 5, "small")
	sweepFails("confirms never come", "await confirm")
	if waiting := s.count(t, "outbox"); waiting != len(small) {
		t.Fatalf("%d rows in the outbox, want %d", waiting, len(small))
	}
	publishAll()

	// 16 MiB is more than the socket buffers on both sides of the proxy
	// hold, so the publish blocks in a write, on a connection in use.
	proxy.Stall()
	var big []Order
	for range 16 {
		o, _ := s.addEvent(t, rabbit.Exchange, rabbit.RoutingKeyOrderCreated, 1<<20)
		big = append(big, o)
	}
	// The error is the blocked write's, cut short when the relay abandoned
	// the connection at the timeout.
	sweepFails("writes block", "use of closed network connection")
	if waiting := s.count(t, "outbox"); waiting != len(big) {
		t.Fatalf("%d rows in the outbox, want %d", waiting, len(big))
	}
	publishAll()

	all := append(append(warm, small...), big...)
	got := recv.byOrder(t, all, 30*time.Second)
	for _, o := range all {
		if len(got[o.ID]) == 0 {
			t.Errorf("order %s never published", o.ID)
		}
	}
}

// Two rows can never be published: one names an exchange that does not
// exist (the broker closes the channel with 404), the other a routing key
// nothing is bound to (returned as unroutable, even after the topology was
// declared again). The rows around them are published at once; the two
// are retried on later sweeps and set aside after MaxAttempts, with their
// reason, a log line naming the event, and the metrics.
func TestRelaySetsAsidePoisonRows(t *testing.T) {
	s := newService(t, true)
	good := s.createOrders(t, 5, "before")
	_, noExchange := s.addEvent(t, "no-such-exchange", rabbit.RoutingKeyOrderCreated, 0)
	_, noRoute := s.addEvent(t, rabbit.Exchange, "order.unroutable", 0)
	good = append(good, s.createOrders(t, 5, "after")...)
	recv := receive(t, s.brokerURL)

	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())
	logs := &logRecorder{}
	relay, session := s.relay(s.brokerURL, 50)
	defer session.Close()
	relay.MaxAttempts = 3
	relay.Meter = provider.Meter("test")
	relay.Log = slog.New(logs)
	if err := relay.RegisterMetrics(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	n, err := relay.Sweep(ctx)
	if err != nil || n != len(good) {
		t.Fatalf("first Sweep = %d, %v; want the %d good rows", n, err, len(good))
	}
	recv.byOrder(t, good, 10*time.Second)
	attempts := func() map[uuid.UUID]int {
		rows, err := s.pool.Query(ctx, `SELECT event_id, attempts FROM outbox`)
		if err != nil {
			t.Fatal(err)
		}
		m := map[uuid.UUID]int{}
		for rows.Next() {
			var id uuid.UUID
			var a int
			if err := rows.Scan(&id, &a); err != nil {
				t.Fatal(err)
			}
			m[id] = a
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if got := attempts(); len(got) != 2 || got[noExchange] != 1 || got[noRoute] != 1 {
		t.Fatalf("outbox after one sweep: %v; want both poison rows with 1 attempt", got)
	}
	for sweep := 2; sweep <= relay.MaxAttempts; sweep++ {
		if n, err := relay.Sweep(ctx); err != nil || n != 0 {
			t.Fatalf("Sweep %d = %d, %v", sweep, n, err)
		}
	}
	if got := attempts(); len(got) != 0 {
		t.Fatalf("outbox after %d sweeps: %v; want empty", relay.MaxAttempts, got)
	}

	rows, err := s.pool.Query(ctx, `SELECT event_id, attempts, last_error FROM outbox_failed`)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[uuid.UUID]string{}
	for rows.Next() {
		var id uuid.UUID
		var a int
		var reason string
		if err := rows.Scan(&id, &a, &reason); err != nil {
			t.Fatal(err)
		}
		if a != relay.MaxAttempts {
			t.Errorf("event %s set aside after %d attempts, want %d", id, a, relay.MaxAttempts)
		}
		reasons[id] = reason
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(reasons) != 2 || !strings.Contains(reasons[noExchange], "404") || !strings.Contains(reasons[noRoute], "NO_ROUTE") {
		t.Errorf("outbox_failed reasons: %v", reasons)
	}

	logged := map[string]bool{}
	for _, attrs := range logs.matching("set aside") {
		logged[attrs["event_id"]] = true
	}
	if !logged[noExchange.String()] || !logged[noRoute.String()] {
		t.Errorf("set-aside log lines name %v, want %s and %s", logged, noExchange, noRoute)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	counted, gauged := int64(-1), int64(-1)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				if m.Name == "outbox.set_aside" {
					counted = 0
					for _, dp := range data.DataPoints {
						counted += dp.Value
					}
				}
			case metricdata.Gauge[int64]:
				if m.Name == "outbox.failed" && len(data.DataPoints) == 1 {
					gauged = data.DataPoints[0].Value
				}
			}
		}
	}
	if counted != 2 || gauged != 2 {
		t.Errorf("outbox.set_aside = %d, outbox.failed = %d; want 2 and 2", counted, gauged)
	}

	// Nothing is left to retry, and the good rows went out.
	if n, err := relay.Sweep(ctx); err != nil || n != 0 {
		t.Errorf("last Sweep = %d, %v", n, err)
	}
}
