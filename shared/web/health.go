package web

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// Check is one dependency probe for the health endpoint.
type Check func(ctx context.Context) error

// Health answers 200 {"status":"ok","checks":{...}} when every check passes
// within two seconds, and 503 naming the failed ones otherwise.
func Health(checks map[string]Check) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		var mu sync.Mutex
		results := make(map[string]string, len(checks))
		healthy := true
		var wg sync.WaitGroup
		for name, check := range checks {
			wg.Go(func() {
				res := "ok"
				if err := check(ctx); err != nil {
					res = err.Error()
				}
				mu.Lock()
				defer mu.Unlock()
				results[name] = res
				healthy = healthy && res == "ok"
			})
		}
		wg.Wait()
		status, code := "ok", http.StatusOK
		if !healthy {
			status, code = "unavailable", http.StatusServiceUnavailable
		}
		w.Header().Set("Cache-Control", "no-store")
		WriteJSON(w, code, map[string]any{"status": status, "checks": results})
	})
}
