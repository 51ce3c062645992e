package rabbit

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"invoicing/shared/testenv"
)

// The broker stops answering (a black hole) after the session connected:
// Check and Channel must return when their context ends, not when amqp091
// notices the missing heartbeats (30 s) or the socket gives up, and the
// session must work again once the broker answers.
func TestHealthCheckAndChannelEndWithTheirContextOnStalledBroker(t *testing.T) {
	proxy, proxied := testenv.ProxyURL(t, testenv.Vhost(t))
	s := NewSession(proxied, "stall-test", slog.New(slog.DiscardHandler))
	defer s.Close()
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}

	// Far above the 2 s context, far below what the broker's silence costs
	// without it.
	const bound = 8 * time.Second
	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"Check", s.Check},
		{"Channel", func(ctx context.Context) error {
			ch, err := s.Channel(ctx)
			if err == nil {
				_ = ch.Close()
			}
			return err
		}},
	}
	for _, c := range calls {
		proxy.Stall()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- c.call(ctx) }()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%s on a stalled broker succeeded", c.name)
			}
			t.Logf("%s returned after %s: %v", c.name, time.Since(start).Round(time.Millisecond), err)
		case <-time.After(bound):
			t.Fatalf("%s still running %s after it started, with a 2 s context", c.name, bound)
		}
		cancel()
		proxy.Restore()
		testenv.Eventually(t, 20*time.Second, "Check to succeed once the broker answers again", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return s.Check(ctx) == nil
		})
	}
}
