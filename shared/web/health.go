package web

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Check is one dependency probe for the readiness endpoint.
type Check func(ctx context.Context) error

// Health results. A failed check is only named: its error may hold hosts,
// users or database names, which are not for unauthenticated callers.
const (
	checkOK          = "ok"
	checkUnavailable = "unavailable"
)

// checkTimeout bounds the whole readiness answer, below the usual 5 s probe
// timeout of load balancers, so a hung dependency reads as unavailable
// rather than as a probe that never answered.
const checkTimeout = 2 * time.Second

// Live answers 200 while the process can serve HTTP at all. It touches no
// dependency: a restart policy acting on it must not restart a healthy
// process because its database is away.
func Live() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		WriteJSON(w, http.StatusOK, map[string]string{"status": checkOK})
	})
}

// Ready runs every check concurrently and answers
// {"status":...,"checks":{name:"ok"|"unavailable"}}: 503 when a check named
// in critical fails, 200 otherwise. Other checks are informational: their
// failure shows (status "degraded") but does not take the service out of a
// load balancer, as for the orders service, whose outbox accepts orders
// while the broker is away. Failures are logged with their error.
func Ready(log *slog.Logger, checks map[string]Check, critical ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
		defer cancel()
		var mu sync.Mutex
		results := make(map[string]string, len(checks))
		ready, degraded := true, false
		var wg sync.WaitGroup
		for name, check := range checks {
			wg.Go(func() {
				err := check(ctx)
				isCritical := slices.Contains(critical, name)
				if err != nil {
					log.WarnContext(r.Context(), "health check failed", "check", name, "critical", isCritical, "err", err)
				}
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					results[name] = checkOK
				case isCritical:
					results[name], ready = checkUnavailable, false
				default:
					results[name], degraded = checkUnavailable, true
				}
			})
		}
		wg.Wait()
		status, code := checkOK, http.StatusOK
		switch {
		case !ready:
			status, code = checkUnavailable, http.StatusServiceUnavailable
		case degraded:
			status = "degraded"
		}
		w.Header().Set("Cache-Control", "no-store")
		WriteJSON(w, code, map[string]any{"status": status, "checks": results})
	})
}
