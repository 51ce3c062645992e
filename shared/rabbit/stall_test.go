package rabbit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
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

// Two publishers share the session's connection when the broker stops
// reading: one is stuck in a socket write with a batch far larger than the
// socket buffers, the other starts while it is. Both must return when their
// contexts end (the connection is abandoned), however the socket's writes
// and the session are locked.
func TestConcurrentPublishesEndWithTheirContextOnStalledBroker(t *testing.T) {
	proxy, proxied := testenv.ProxyURL(t, testenv.Vhost(t))
	s := NewSession(proxied, "stall-publish-test", slog.New(slog.DiscardHandler))
	defer s.Close()
	pub := NewPublisher(s)
	batch := func(n, size int) []Message {
		msgs := make([]Message, n)
		for i := range msgs {
			msgs[i] = Message{Exchange: Exchange, RoutingKey: RoutingKeyOrderCreated, MessageID: fmt.Sprint(i), Body: bytes.Repeat([]byte{'x'}, size)}
		}
		return msgs
	}
	// Two channels in the publisher's pool, so the publishes below run side by side.
	var warm sync.WaitGroup
	for range 2 {
		warm.Go(func() {
			if err := pub.Publish(context.Background(), batch(1, 10)); err != nil {
				t.Error(err)
			}
		})
	}
	warm.Wait()

	proxy.Stall()
	defer proxy.Restore()
	const bound = 10 * time.Second // 3 s contexts; amqp091's own read deadline is 15 s
	done := make(chan error, 2)
	publish := func(msgs []Message) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		done <- pub.Publish(ctx, msgs)
	}
	start := time.Now()
	go publish(batch(400, 64<<10)) // 25 MiB: blocks in a write
	time.Sleep(500 * time.Millisecond)
	go publish(batch(1, 10))
	for range 2 {
		select {
		case err := <-done:
			if err == nil {
				t.Error("a publish to a stalled broker succeeded")
			}
			t.Logf("returned after %s: %v", time.Since(start).Round(time.Millisecond), err)
		case <-time.After(bound - time.Since(start)):
			t.Fatalf("a publish still running %s after it started, with a 3 s context", bound)
		}
	}
}

// A dial that hangs (the broker accepts TCP but never answers the
// handshake) holds only the caller that started it: another caller waits
// for that dial only as long as its own context, and the session dials
// again once the broker answers.
func TestWaitingForAHangingDialEndsWithTheCallersContext(t *testing.T) {
	proxy, s, first := hangingDial(t, "stall-dial-test")

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Connection(ctx)
	waited := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "being dialed") {
		t.Fatalf("second caller: %v, want its deadline while waiting for the dial in flight", err)
	}
	// The first dial ends after about 5 s; a waiter held by it would
	// return only then.
	if waited > 3*time.Second {
		t.Fatalf("the second caller returned after %s, with a 300 ms context: it waited for the other caller's dial", waited.Round(time.Millisecond))
	}
	t.Logf("second caller returned after %s: %v", waited.Round(time.Millisecond), err)
	select {
	case err := <-first:
		t.Fatalf("the first dial ended before its handshake timeout: %v", err)
	default:
	}

	if err := <-first; err == nil {
		t.Fatal("the hanging dial succeeded")
	}
	proxy.Restore()
	mustConnect(t, s, "once the broker answers")
}

// Close while a dial is in flight: the dial must not leave an open
// connection behind in a session that was closed.
func TestCloseDuringADialClosesWhatTheDialOpens(t *testing.T) {
	proxy, s, dialed := hangingDial(t, "close-dial-test")
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The dial has up to 5 s left; Close has nothing of its own to wait for.
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Close took %s: it waited for the dial in flight", took.Round(time.Millisecond))
	}
	proxy.Restore() // the handshake goes through now
	if err := <-dialed; err == nil {
		t.Fatal("a dial overtaken by Close returned a connection")
	}
	s.mu.Lock()
	kept := s.conn
	s.mu.Unlock()
	if kept != nil {
		t.Fatal("the closed session kept the connection the dial opened")
	}
	testenv.Eventually(t, 5*time.Second, "the dialed connection to be closed", func() bool { return proxy.Open() == 0 })
	// Close does not end the session: the next call dials again.
	mustConnect(t, s, "after Close")
}

// hangingDial starts a Connection on a new session whose broker takes the
// TCP connection but never answers the handshake (a stalled proxy), and
// returns once that dial reached the proxy. The dial's result arrives on
// dialed: a failure after the handshake's 5 s, unless the proxy is
// restored first.
func hangingDial(t *testing.T, name string) (proxy *testenv.Proxy, s *Session, dialed <-chan error) {
	t.Helper()
	proxy, proxied := testenv.ProxyURL(t, testenv.Vhost(t))
	s = NewSession(proxied, name, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { s.Close() })
	proxy.Stall()
	t.Cleanup(proxy.Restore)
	result := make(chan error, 1)
	go func() {
		_, err := s.Connection(context.Background())
		result <- err
	}()
	testenv.Eventually(t, 5*time.Second, "the dial to reach the proxy", func() bool { return proxy.Open() > 0 })
	return proxy, s, result
}

// mustConnect fails the test unless s has a connection within 10 s.
func mustConnect(t *testing.T, s *Session, when string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Connection(ctx); err != nil {
		t.Fatalf("no connection %s: %v", when, err)
	}
}
