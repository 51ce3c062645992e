package web

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
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
//
// The answer comes within checkTimeout whatever the checks do: a check that
// has not answered by then, even one that ignores its context, counts as
// unavailable and is not waited for.
func Ready(log *slog.Logger, checks map[string]Check, critical ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
		defer cancel()
		type result struct {
			name string
			err  error
		}
		// Buffered, so that a check answering after the deadline does not
		// block its goroutine.
		answers := make(chan result, len(checks))
		for name, check := range checks {
			go func() { answers <- result{name, check(ctx)} }()
		}
		errs := make(map[string]error, len(checks))
		take := func(a result) { errs[a.name] = a.err }
	wait:
		for len(errs) < len(checks) {
			select {
			case a := <-answers:
				take(a)
			case <-ctx.Done():
				// Keep the answers that came in time, and no more.
				for {
					select {
					case a := <-answers:
						take(a)
					default:
						break wait
					}
				}
			}
		}
		results := make(map[string]string, len(checks))
		ready, degraded := true, false
		for name := range checks {
			err, answered := errs[name]
			if !answered {
				err = fmt.Errorf("no answer within %s: %w", checkTimeout, context.Cause(ctx))
			}
			isCritical := slices.Contains(critical, name)
			switch {
			case err == nil:
				results[name] = checkOK
				continue
			case isCritical:
				results[name], ready = checkUnavailable, false
			default:
				results[name], degraded = checkUnavailable, true
			}
			log.WarnContext(r.Context(), "health check failed", "check", name, "critical", isCritical, "err", err)
		}
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
