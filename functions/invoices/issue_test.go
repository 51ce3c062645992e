package invoices

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"invoicing/shared/event"
)

// Issuers running at once over the same orders (redeliveries reaching two
// consumers) must neither fail nor double-invoice nor skip a number: each
// batch's duplicate check runs after it holds the counter's lock, so it
// sees every invoice committed before.
func TestConcurrentIssuersOverlapping(t *testing.T) {
	s := newService(t)
	store := &Store{pool: s.pool}
	events := make([]event.OrderCreated, 300)
	for i := range events {
		events[i] = newEvent(fmt.Sprintf("c%d", i%5), int64(i+1))
	}
	const issuers, rounds = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, issuers*rounds)
	issued := make(chan int, issuers*rounds)
	for g := range issuers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range rounds {
				// An overlapping window of the events, in a shuffled order.
				start := rng.IntN(len(events) - 40)
				batch := append([]event.OrderCreated(nil), events[start:start+40]...)
				rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
				got, err := store.Issue(context.Background(), batch)
				if err != nil {
					errs <- err
					return
				}
				issued <- len(got)
			}
		})
	}
	wg.Wait()
	close(errs)
	close(issued)
	for err := range errs {
		t.Fatalf("an issuer failed: %v", err)
	}
	total := 0
	for n := range issued {
		total += n
	}
	// Then every event once more, as a late redelivery would bring them.
	rest, err := store.Issue(context.Background(), events)
	if err != nil {
		t.Fatal(err)
	}
	total += len(rest)
	if n := s.invoiceCount(t); n != len(events) || total != len(events) {
		t.Errorf("%d invoices stored, %d reported issued, for %d orders", n, total, len(events))
	}
	s.assertGapless(t)
}
