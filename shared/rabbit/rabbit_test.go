package rabbit

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"invoicing/shared/testenv"
)

func TestDeclareIsIdempotentAndChecksArguments(t *testing.T) {
	url := testenv.Vhost(t)
	s := NewSession(url, "topology-test", slog.New(slog.DiscardHandler))
	defer s.Close()
	for range 2 { // a second declaration on a new connection changes nothing
		if err := s.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	q, err := ch.QueueDeclarePassive(Queue, true, false, false, false, nil)
	if err != nil || q.Name != Queue {
		t.Fatalf("queue %s: %v", Queue, err)
	}
	if _, err := ch.QueueDeclarePassive(DeadLetterQueue, true, false, false, false, nil); err != nil {
		t.Fatalf("queue %s: %v", DeadLetterQueue, err)
	}

	// A classic "orders" queue, as the original Node.js service declared
	// it, is refused with a clear error instead of being used.
	other := testenv.Vhost(t)
	oconn, err := amqp.Dial(other)
	if err != nil {
		t.Fatal(err)
	}
	defer oconn.Close()
	och, _ := oconn.Channel()
	if _, err := och.QueueDeclare(Queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	s2 := NewSession(other, "topology-test", slog.New(slog.DiscardHandler))
	defer s2.Close()
	err = s2.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "PRECONDITION_FAILED") {
		t.Errorf("declaring over a classic queue: %v, want PRECONDITION_FAILED", err)
	}
}
