package web

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// A check that never answers, even one that ignores its context, must not
// hold the readiness answer past checkTimeout: it counts as unavailable,
// and only a critical one makes the service unready.
func TestReadyAnswersWhenChecksHang(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hang := func(context.Context) error { <-release; return nil } // ignores ctx
	ok := func(context.Context) error { return nil }
	failed := func(context.Context) error { return errors.New("refused") }
	cases := []struct {
		name     string
		checks   map[string]Check
		code     int
		status   string
		statuses map[string]string
	}{
		{"informational check hangs", map[string]Check{"db": ok, "broker": hang},
			http.StatusOK, "degraded", map[string]string{"db": "ok", "broker": "unavailable"}},
		{"critical check hangs", map[string]Check{"db": hang, "broker": ok},
			http.StatusServiceUnavailable, "unavailable", map[string]string{"db": "unavailable", "broker": "ok"}},
		{"both hang", map[string]Check{"db": hang, "broker": hang},
			http.StatusServiceUnavailable, "unavailable", map[string]string{"db": "unavailable", "broker": "unavailable"}},
		{"critical check fails", map[string]Check{"db": failed, "broker": ok},
			http.StatusServiceUnavailable, "unavailable", map[string]string{"db": "unavailable", "broker": "ok"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := Ready(slog.New(slog.DiscardHandler), tc.checks, "db")
			rec := httptest.NewRecorder()
			done := make(chan struct{})
			start := time.Now()
			go func() {
				defer close(done)
				h.ServeHTTP(rec, httptest.NewRequest("GET", "/health/ready", nil))
			}()
			// checkTimeout is 2 s; probes usually give up at 5 s.
			const bound = 4 * time.Second
			select {
			case <-done:
			case <-time.After(bound):
				t.Fatalf("no answer %s after the request, with a check timeout of %s", bound, checkTimeout)
			}
			t.Logf("answered after %s: %d %s", time.Since(start).Round(time.Millisecond), rec.Code, rec.Body)
			var got struct {
				Status string
				Checks map[string]string
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tc.code || got.Status != tc.status || len(got.Checks) != len(tc.statuses) {
				t.Fatalf("%d %s, want %d status %s", rec.Code, rec.Body, tc.code, tc.status)
			}
			for name, want := range tc.statuses {
				if got.Checks[name] != want {
					t.Errorf("check %s = %q, want %q", name, got.Checks[name], want)
				}
			}
		})
	}
}
