package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"invoicing/shared/testenv"
)

// lambdaReport is step 6.
type lambdaReport struct {
	Invocations       int     `json:"invocations"`
	InitMs            float64 `json:"init_ms"`
	FirstInvocationMs float64 `json:"first_invocation_ms"`
	P50ms             float64 `json:"warm_p50_ms"`
	P99ms             float64 `json:"warm_p99_ms"`
	ServerP50ms       float64 `json:"server_p50_ms"`
	ServerP99ms       float64 `json:"server_p99_ms"`
}

// lambdaStepLimit bounds step 6 whatever -lambda-n says.
const lambdaStepLimit = 2 * time.Minute

// lambdaStep runs bin/orders under the emulator and as a server, each over
// a fresh database and the bench's vhost, and sends each the same number of
// sequential POST /orders: one client, one request at a time, so the
// figures are a single request's latency, not throughput.
func lambdaStep(ctx context.Context, e *env, cfg config, devnull *os.File) (lambdaReport, error) {
	var rep lambdaReport
	n := min(max(cfg.LambdaN, 10), 5000)
	ctx, cancel := context.WithTimeout(ctx, lambdaStepLimit)
	defer cancel()
	fmt.Fprintf(os.Stderr, "6 Lambda: cold start, then %d sequential warm invocations and as many server requests\n", n)
	bin := filepath.Join(cfg.Bin, "orders")
	brokerURL, removeVhost, err := testenv.CreateVhost(testenv.UniqueName("bench-lambda-"))
	if err != nil {
		return rep, err
	}
	e.cleanups = append(e.cleanups, removeVhost)
	lambdaDB, err := e.database("bench_lambda_")
	if err != nil {
		return rep, err
	}
	// A Lambda function does not migrate at start; a deploy runs migrate.
	migrate := exec.CommandContext(ctx, bin, "migrate")
	migrate.Env = append(os.Environ(), "DATABASE_URL="+lambdaDB, "BROKER_URL="+brokerURL)
	if out, err := migrate.CombinedOutput(); err != nil {
		return rep, fmt.Errorf("migrate: %v\n%s", err, out)
	}
	env := serviceEnv(cfg, map[string]string{"DATABASE_URL": lambdaDB, "BROKER_URL": brokerURL}, cfg.OrdersEnv)
	fn, err := testenv.StartLambdaProcess(cfg.RIE, bin, env, nil)
	if fn != nil {
		defer fn.Kill()
	}
	if err != nil {
		return rep, err
	}
	event := func(i int) []byte {
		b, _ := json.Marshal(map[string]any{
			"version": "2.0", "routeKey": "$default", "rawPath": "/orders",
			"headers":        map[string]string{"content-type": "application/json"},
			"requestContext": map[string]any{"http": map[string]string{"method": "POST", "path": "/orders"}, "stage": "$default"},
			"body":           fmt.Sprintf(`{"customerId":"lambda-%d","totalAmount":%d}`, i%100, 100+i),
		})
		return b
	}
	invoke := func(i int) (time.Duration, error) {
		start := time.Now()
		a, err := fn.InvokeHTTP(event(i))
		if err == nil && a.StatusCode != http.StatusCreated {
			err = fmt.Errorf("status %d: %s", a.StatusCode, a.Body)
		}
		return time.Since(start), err
	}
	first, err := invoke(-1)
	if err != nil {
		return rep, fmt.Errorf("cold invocation: %w", err)
	}
	rep.FirstInvocationMs = ms(first)
	if d, ok := fn.InitDuration(); ok {
		rep.InitMs = ms(d)
	}
	warm, err := sequential(ctx, n, invoke)
	if err != nil {
		return rep, fmt.Errorf("warm invocations: %w", err)
	}

	serverDB, err := e.database("bench_lambda_server_")
	if err != nil {
		return rep, err
	}
	port, err := testenv.PickPort()
	if err != nil {
		return rep, err
	}
	proc, err := testenv.StartProcess(bin, port, serviceEnv(cfg, map[string]string{"DATABASE_URL": serverDB, "BROKER_URL": brokerURL}, cfg.OrdersEnv), devnull, 30*time.Second)
	if proc != nil { // also when it started but never became healthy
		defer proc.Kill()
	}
	if err != nil {
		return rep, err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	post := func(i int) (time.Duration, error) {
		body := fmt.Sprintf(`{"customerId":"server-%d","totalAmount":%d}`, i%100, 100+i)
		start := time.Now()
		resp, err := client.Post(proc.URL+"/orders", "application/json", bytes.NewReader([]byte(body)))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return 0, fmt.Errorf("status %d", resp.StatusCode)
		}
		return time.Since(start), nil
	}
	if _, err := post(-1); err != nil { // the same warm-up as the function's cold invocation
		return rep, err
	}
	server, err := sequential(ctx, n, post)
	if err != nil {
		return rep, fmt.Errorf("server requests: %w", err)
	}
	_ = proc.Stop(30 * time.Second)

	rep.Invocations = len(warm)
	rep.P50ms, rep.P99ms = ms(percentile(warm, 0.5)), ms(percentile(warm, 0.99))
	rep.ServerP50ms, rep.ServerP99ms = ms(percentile(server, 0.5)), ms(percentile(server, 0.99))
	return rep, nil
}

// sequential calls do n times, one after the other, until ctx ends, and
// returns the durations it measured, sorted.
func sequential(ctx context.Context, n int, do func(int) (time.Duration, error)) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		d, err := do(i)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no request finished in time")
	}
	slices.Sort(out)
	return out, nil
}

// percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
