package main

import (
	"fmt"
	"slices"
	"strings"
)

// Observed is what the chaos run saw, gathered after the pipeline settled.
type Observed struct {
	// Accepted are the orders answered 201.
	Accepted []string
	// Stored are all orders in the orders database, answered or not (a
	// request cut off by a crash may still have committed).
	Stored []string
	// Invoices counts the invoices of each order id.
	Invoices map[string]int
	// Seqs are the invoice sequence numbers of one year.
	Seqs []int64
	// DeadLetters is the number of messages in orders.dead.
	DeadLetters int
}

// Verdict is the checker's finding, in the manner of Jepsen's queue
// checker: every acknowledged order must come out exactly once.
type Verdict struct {
	Accepted      int      `json:"accepted"`
	Invoiced      int      `json:"invoiced"`
	Lost          []string `json:"lost"`       // accepted, no invoice
	Duplicated    []string `json:"duplicated"` // more than one invoice
	Unexpected    []string `json:"unexpected"` // invoice for an order never stored
	Recovered     int      `json:"recovered"`  // stored and invoiced though never answered 201
	Gaps          []string `json:"gaps"`       // missing invoice numbers
	DeadLetters   int      `json:"dead_letters"`
	StoredPending int      `json:"stored_pending"` // stored, not accepted, not invoiced
}

// OK reports whether nothing was lost, doubled or invented, the numbers are
// gapless and nothing was dead-lettered.
func (v Verdict) OK() bool {
	return len(v.Lost) == 0 && len(v.Duplicated) == 0 && len(v.Unexpected) == 0 && len(v.Gaps) == 0 &&
		v.DeadLetters == 0 && v.StoredPending == 0
}

// Check compares what was accepted and stored with what was invoiced.
func Check(o Observed) Verdict {
	v := Verdict{Accepted: len(o.Accepted), DeadLetters: o.DeadLetters}
	accepted := make(map[string]bool, len(o.Accepted))
	for _, id := range o.Accepted {
		accepted[id] = true
		switch n := o.Invoices[id]; {
		case n == 0:
			v.Lost = append(v.Lost, id)
		case n > 1:
			v.Duplicated = append(v.Duplicated, id)
		}
	}
	stored := make(map[string]bool, len(o.Stored))
	for _, id := range o.Stored {
		stored[id] = true
		if !accepted[id] {
			switch n := o.Invoices[id]; {
			case n == 0:
				v.StoredPending++
			case n == 1:
				v.Recovered++
			default:
				v.Duplicated = append(v.Duplicated, id)
			}
		}
	}
	for id, n := range o.Invoices {
		v.Invoiced += n
		if !stored[id] && !accepted[id] {
			v.Unexpected = append(v.Unexpected, id)
		}
	}
	v.Gaps = gaps(o.Seqs)
	slices.Sort(v.Lost)
	slices.Sort(v.Duplicated)
	slices.Sort(v.Unexpected)
	return v
}

// gaps lists the numbers missing from 1..max(seqs) and any repeated one.
func gaps(seqs []int64) []string {
	s := slices.Clone(seqs)
	slices.Sort(s)
	var out []string
	next := int64(1)
	for i, n := range s {
		if i > 0 && n == s[i-1] {
			out = append(out, fmt.Sprintf("%d repeated", n))
			continue
		}
		if n > next {
			out = append(out, fmt.Sprintf("%d..%d missing", next, n-1))
		}
		next = n + 1
	}
	return out
}

// Summary is one line per finding.
func (v Verdict) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "accepted %d, invoiced %d, lost %d, duplicated %d, unexpected %d, recovered %d, pending %d, gaps %d, dead letters %d",
		v.Accepted, v.Invoiced, len(v.Lost), len(v.Duplicated), len(v.Unexpected), v.Recovered, v.StoredPending, len(v.Gaps), v.DeadLetters)
	return b.String()
}
