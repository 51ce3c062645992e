package runtime

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

func TestParseCommandKnowsHealthcheck(t *testing.T) {
	for args, want := range map[string]string{"": CommandServe, "serve": CommandServe, "migrate": CommandMigrate, "healthcheck": CommandHealthcheck} {
		var a []string
		if args != "" {
			a = []string{args}
		}
		if got, err := ParseCommand(a); err != nil || got != want {
			t.Errorf("ParseCommand(%q) = %q, %v; want %q", args, got, err, want)
		}
	}
	if _, err := ParseCommand([]string{"health"}); err == nil {
		t.Error("ParseCommand(health) succeeded, want an error")
	}
	if !IsHealthcheck([]string{"healthcheck"}) || IsHealthcheck(nil) || IsHealthcheck([]string{"serve"}) {
		t.Error("IsHealthcheck answers wrongly")
	}
}

func TestHealthcheck(t *testing.T) {
	serve := func(t *testing.T, h http.HandlerFunc) int {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
		n, _ := strconv.Atoi(port)
		return n
	}
	t.Run("live answers 200", func(t *testing.T) {
		var path string
		port := serve(t, func(w http.ResponseWriter, r *http.Request) { path = r.URL.Path })
		if err := Healthcheck(context.Background(), nil, port, io.Discard); err != nil {
			t.Fatal(err)
		}
		if path != "/health/live" {
			t.Errorf("probed %q, want /health/live", path)
		}
	})
	t.Run("readiness path", func(t *testing.T) {
		var path string
		port := serve(t, func(w http.ResponseWriter, r *http.Request) { path = r.URL.Path })
		if err := Healthcheck(context.Background(), []string{"healthcheck", "/health/ready"}, port, io.Discard); err != nil || path != "/health/ready" {
			t.Fatalf("probed %q, %v", path, err)
		}
		if err := Healthcheck(context.Background(), []string{"healthcheck", "/orders"}, port, io.Discard); err == nil {
			t.Fatal("probed a non-health path")
		}
	})
	t.Run("not live", func(t *testing.T) {
		port := serve(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
		if err := Healthcheck(context.Background(), nil, port, io.Discard); err == nil {
			t.Fatal("a 503 passed the healthcheck")
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if err := Healthcheck(context.Background(), nil, port, io.Discard); err == nil {
			t.Fatal("a closed port passed the healthcheck")
		}
	})
	t.Run("hung server times out", func(t *testing.T) {
		release := make(chan struct{})
		port := serve(t, func(w http.ResponseWriter, r *http.Request) { <-release })
		defer close(release)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		if err := Healthcheck(ctx, nil, port, io.Discard); err == nil {
			t.Fatal("a hung server passed the healthcheck")
		}
		if time.Since(start) > HealthcheckTimeout {
			t.Errorf("took %s, want at most %s", time.Since(start), HealthcheckTimeout)
		}
	})
}
