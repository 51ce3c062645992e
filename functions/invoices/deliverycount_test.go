package invoices

import (
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

// TestQuorumQueueDeliveryCount pins down how the broker counts a message's
// deliveries towards the quorum queue's x-delivery-limit when a consumer
// gives it back without acking. Each case takes the only message in the
// queue with basic.consume, gives it back one way, and reads the
// x-delivery-count header of the next delivery with basic.get.
//
// On RabbitMQ 3.10.8 closing the channel and nack/reject with requeue each
// count one delivery; cancelling the consumer gives nothing back (the
// message stays unacked on the channel until it is settled or the channel
// closes), so it counts nothing by itself. The consumer relies on this:
// while the database is down it cancels its consumer rather than returning
// messages, and it does not start consuming at all (see consume).
func TestQuorumQueueDeliveryCount(t *testing.T) {
	cases := []struct {
		name     string
		giveBack func(t *testing.T, ch *amqp.Channel, d amqp.Delivery)
		want     int64 // x-delivery-count on the next delivery
	}{
		{"channel closed", func(t *testing.T, ch *amqp.Channel, d amqp.Delivery) { _ = ch.Close() }, 1},
		{"consumer cancelled, then channel closed", func(t *testing.T, ch *amqp.Channel, d amqp.Delivery) {
			if err := ch.Cancel("probe", false); err != nil {
				t.Fatal(err)
			}
			// Cancelling gives nothing back: the message is still not ready.
			if m, ok, err := ch.Get(rabbit.Queue, false); err != nil || ok {
				t.Fatalf("after cancel: basic.get = %v, %v; want the message still held (tag %d)", ok, err, m.DeliveryTag)
			}
			_ = ch.Close()
		}, 1},
		{"consumer cancelled, then nack with requeue", func(t *testing.T, ch *amqp.Channel, d amqp.Delivery) {
			if err := ch.Cancel("probe", false); err != nil {
				t.Fatal(err)
			}
			if err := d.Nack(false, true); err != nil {
				t.Fatal(err)
			}
		}, 1},
		{"consumer cancelled, then reject with requeue", func(t *testing.T, ch *amqp.Channel, d amqp.Delivery) {
			if err := ch.Cancel("probe", false); err != nil {
				t.Fatal(err)
			}
			if err := d.Reject(true); err != nil {
				t.Fatal(err)
			}
		}, 1},
	}
	s := newService(t)
	conn, err := amqp.Dial(s.brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s.publish(t, rabbit.Exchange, rabbit.RoutingKeyOrderCreated, []byte(`{}`), fmt.Sprint("probe-", i))
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			defer ch.Close()
			deliveries, err := ch.Consume(rabbit.Queue, "probe", false, false, false, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			var d amqp.Delivery
			select {
			case d = <-deliveries:
			case <-time.After(10 * time.Second):
				t.Fatal("no delivery")
			}
			if d.Redelivered || d.Headers["x-delivery-count"] != nil {
				t.Fatalf("first delivery: redelivered %v, x-delivery-count %v", d.Redelivered, d.Headers["x-delivery-count"])
			}
			tc.giveBack(t, ch, d)

			reader, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			defer reader.Close()
			var next amqp.Delivery
			testenv.Eventually(t, 10*time.Second, "the message back in the queue", func() bool {
				var ok bool
				next, ok, err = reader.Get(rabbit.Queue, false)
				return err == nil && ok
			})
			got := next.Headers["x-delivery-count"]
			t.Logf("%s: next delivery redelivered=%v x-delivery-count=%v", tc.name, next.Redelivered, got)
			if got != tc.want {
				t.Errorf("x-delivery-count %v, want %d", got, tc.want)
			}
			if err := next.Ack(false); err != nil {
				t.Fatal(err)
			}
		})
	}
}
