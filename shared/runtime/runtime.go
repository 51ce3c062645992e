// Package runtime runs a service process: the HTTP server and its background
// workers, with a graceful shutdown on SIGTERM or SIGINT.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"invoicing/shared/telemetry"
)

// Worker is background work that runs until ctx ends, then returns after
// finishing what it has in hand.
type Worker func(ctx context.Context) error

// Server describes one long-lived service process.
type Server struct {
	Log             *slog.Logger
	Addr            string
	Handler         http.Handler
	ShutdownTimeout time.Duration
	Workers         []Worker
	// PprofAddr, when set (PPROF_ADDR), serves net/http/pprof there, for
	// profiling under load. Keep it on loopback.
	PprofAddr string
}

// Serve listens on Addr and runs the workers until ctx ends. Then it stops
// accepting connections, waits for in-flight requests and for the workers,
// at most ShutdownTimeout in all.
func (s Server) Serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.Addr, err)
	}
	srv := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.Log.Handler(), slog.LevelWarn),
	}
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	var wg sync.WaitGroup
	errs := make(chan error, len(s.Workers)+1)
	for _, w := range s.Workers {
		wg.Go(func() {
			if err := w(workCtx); err != nil {
				errs <- err
			}
		})
	}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("serve http: %w", err)
		}
	}()
	s.Log.Info("listening", "addr", ln.Addr().String())
	if s.PprofAddr != "" {
		go func() {
			mux := http.NewServeMux()
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
			err := (&http.Server{Addr: s.PprofAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}).ListenAndServe()
			s.Log.Warn("pprof server stopped", "err", err)
		}()
	}

	var runErr error
	select {
	case <-ctx.Done():
		s.Log.Info("shutting down")
	case runErr = <-errs:
		s.Log.Error("stopping after failure", "err", runErr)
	}
	deadline, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(deadline); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("http shutdown: %w", err))
	}
	stopWork()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-deadline.Done():
		runErr = errors.Join(runErr, errors.New("background work did not stop within the shutdown timeout"))
	}
	return runErr
}

// NewLogger returns the JSON logger every service writes to stdout.
func NewLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(strings.ToUpper(level)))
	return slog.New(telemetry.LogHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})))
}
