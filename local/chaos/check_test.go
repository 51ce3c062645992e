package main

import (
	"slices"
	"testing"
)

func TestCheck(t *testing.T) {
	cases := []struct {
		name string
		in   Observed
		ok   bool
		want func(Verdict) bool
	}{
		{"all invoiced once", Observed{
			Accepted: []string{"a", "b"}, Stored: []string{"a", "b"},
			Invoices: map[string]int{"a": 1, "b": 1}, Seqs: []int64{2, 1},
		}, true, func(v Verdict) bool { return v.Accepted == 2 && v.Invoiced == 2 }},
		{"lost", Observed{
			Accepted: []string{"a", "b"}, Stored: []string{"a", "b"},
			Invoices: map[string]int{"a": 1}, Seqs: []int64{1},
		}, false, func(v Verdict) bool { return slices.Equal(v.Lost, []string{"b"}) }},
		{"duplicated", Observed{
			Accepted: []string{"a"}, Stored: []string{"a"},
			Invoices: map[string]int{"a": 2}, Seqs: []int64{1, 2},
		}, false, func(v Verdict) bool { return slices.Equal(v.Duplicated, []string{"a"}) }},
		{"unexpected", Observed{
			Accepted: []string{"a"}, Stored: []string{"a"},
			Invoices: map[string]int{"a": 1, "ghost": 1}, Seqs: []int64{1, 2},
		}, false, func(v Verdict) bool { return slices.Equal(v.Unexpected, []string{"ghost"}) }},
		{"unanswered but stored and invoiced is fine", Observed{
			Accepted: []string{"a"}, Stored: []string{"a", "cut-off"},
			Invoices: map[string]int{"a": 1, "cut-off": 1}, Seqs: []int64{1, 2},
		}, true, func(v Verdict) bool { return v.Recovered == 1 }},
		{"stored but never invoiced", Observed{
			Accepted: []string{"a"}, Stored: []string{"a", "stuck"},
			Invoices: map[string]int{"a": 1}, Seqs: []int64{1},
		}, false, func(v Verdict) bool { return v.StoredPending == 1 }},
		{"gap", Observed{
			Accepted: []string{"a", "b", "c"}, Stored: []string{"a", "b", "c"},
			Invoices: map[string]int{"a": 1, "b": 1, "c": 1}, Seqs: []int64{1, 2, 4},
		}, false, func(v Verdict) bool { return slices.Equal(v.Gaps, []string{"3..3 missing"}) }},
		{"repeated number", Observed{
			Accepted: []string{"a", "b"}, Stored: []string{"a", "b"},
			Invoices: map[string]int{"a": 1, "b": 1}, Seqs: []int64{1, 1},
		}, false, func(v Verdict) bool { return slices.Equal(v.Gaps, []string{"1 repeated"}) }},
		{"dead letters", Observed{
			Accepted: []string{"a"}, Stored: []string{"a"},
			Invoices: map[string]int{"a": 1}, Seqs: []int64{1}, DeadLetters: 1,
		}, false, func(v Verdict) bool { return v.DeadLetters == 1 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := Check(tc.in)
			if v.OK() != tc.ok || !tc.want(v) {
				t.Errorf("Check = %+v (OK %v), want OK %v", v, v.OK(), tc.ok)
			}
		})
	}
}
