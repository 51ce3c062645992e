package invoices

import (
	"testing"
	"time"

	"invoicing/shared/testenv"
)

// The broker stops answering while the consumer subscribes: it took the
// basic.consume (the queue lists the consumer) but its answer, and
// everything after it, never comes back. Shutdown must end Run at once
// rather than when amqp091 notices the missing heartbeats (30 s), and the
// message it may have been sent goes back to the queue, not to the dead
// letters.
func TestConsumerShutdownWhileTheBrokerStallsItsSubscribe(t *testing.T) {
	s := newService(t)
	s.publishEvent(t, newEvent("stalled-subscribe", 1))
	testenv.Eventually(t, 10*time.Second, "the message in the queue", func() bool { return s.ready(t) == 1 })

	proxy, proxied := testenv.ProxyURL(t, s.brokerURL)
	// The consumer tag is "invoices"; nothing the session sends before
	// basic.consume (its name included) holds that word.
	proxy.CutAfter("invoices", time.Minute)
	stop := s.runConsumer(t, s.dbURL, proxied, 5, 0, nil)
	testenv.Eventually(t, 20*time.Second, "the broker to register the consumer", func() bool { return s.consumers(t) == 1 })
	stopWithin(t, stop, 10*time.Second, "with the broker not answering basic.consume")
	testenv.Eventually(t, 20*time.Second, "the message back in the queue", func() bool {
		return s.consumers(t) == 0 && s.ready(t) == 1
	})
	if n := s.deadLetters(t); n != 0 {
		t.Errorf("%d dead letters", n)
	}
	if n := s.invoiceCount(t); n != 0 {
		t.Errorf("%d invoices issued from a delivery the consumer never saw", n)
	}
}

// The broker stops answering while the consumer is subscribed and idle.
// Shutdown cancels the consumer and closes its channel, two calls that wait
// for the broker's answer: Run must end within their bound (5 s), not
// when amqp091's read deadline gives up on the silent broker (15 s), and a
// message the broker sent into the stall goes back to the queue.
func TestConsumerShutdownWhileTheBrokerStalls(t *testing.T) {
	s := newService(t)
	proxy, proxied := testenv.ProxyURL(t, s.brokerURL)
	stop := s.runConsumer(t, s.dbURL, proxied, 5, 0, nil)
	testenv.Eventually(t, 20*time.Second, "the broker to register the consumer", func() bool { return s.consumers(t) == 1 })
	proxy.Stall()
	defer proxy.Restore()
	s.publishEvent(t, newEvent("stalled-shutdown", 1)) // held by the stalled proxy, not delivered
	stopWithin(t, stop, 10*time.Second, "with the broker not answering")
	// Once the broker hears again, it sees the abandoned connection close
	// and puts back the message it had sent into the stall.
	proxy.Restore()
	testenv.Eventually(t, 20*time.Second, "the consumer gone and the message back in the queue", func() bool {
		return s.consumers(t) == 0 && s.ready(t) == 1
	})
	if n := s.deadLetters(t); n != 0 {
		t.Errorf("%d dead letters", n)
	}
	if n := s.invoiceCount(t); n != 0 {
		t.Errorf("%d invoices issued while the broker stalled", n)
	}
}

// stopWithin calls stop, which ends a consumer as SIGTERM would (see
// runConsumer), and fails the test unless it returns within bound.
func stopWithin(t *testing.T, stop func(), bound time.Duration, why string) {
	t.Helper()
	start := time.Now()
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
		t.Logf("Run returned %s after shutdown", time.Since(start).Round(time.Millisecond))
	case <-time.After(bound):
		t.Fatalf("Run still running %s after shutdown, %s", bound, why)
	}
}
