// Package loadgen sends POST /orders load for the bench and chaos harnesses:
// closed loop (C clients, each waiting for its answer) or open loop (a fixed
// arrival rate, so a slow answer cannot hide latency), and records every
// answer.
package loadgen

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Result is what a run saw.
type Result struct {
	Duration  time.Duration
	Sent      int
	Created   int            // 201 answers
	Statuses  map[int]int    // other answers by status
	Failures  map[string]int // transport errors by kind
	Latencies []time.Duration
	// OrderIDs are the ids of every 201 (from Location), when recorded.
	OrderIDs []string
}

// RPS is the rate of 201 answers.
func (r Result) RPS() float64 { return float64(r.Created) / r.Duration.Seconds() }

// Percentile returns the q-quantile (0..1) of the latencies.
func (r Result) Percentile(q float64) time.Duration { return Percentile(r.Latencies, q) }

// Percentile returns the q-quantile (0..1) of ds, which it sorts.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(q * float64(len(ds)-1))
	return ds[i]
}

// Client posts orders to one orders service. It sends with fasthttp,
// whose client costs a fraction of net/http's CPU per request: the
// generator shares the machine with what it measures, and every cycle it
// spends is one the services under test do not get.
type Client struct {
	URL  string
	HTTP *fasthttp.HostClient
	// Timeout bounds each request, from sending to the end of the answer.
	Timeout time.Duration
	// Body returns the request body of the i-th order.
	Body func(i int) []byte
	// RecordIDs keeps every created order's id in Result.OrderIDs.
	RecordIDs bool
}

// New returns a client for conns concurrent connections to baseURL
// (http://host:port).
func New(baseURL string, conns int) *Client {
	timeout := 10 * time.Second
	return &Client{
		URL: strings.TrimSuffix(baseURL, "/") + "/orders",
		HTTP: &fasthttp.HostClient{
			Addr:                strings.TrimPrefix(strings.TrimSuffix(baseURL, "/"), "http://"),
			MaxConns:            conns,
			MaxConnWaitTimeout:  timeout,
			MaxIdleConnDuration: time.Minute,
			// POST is not idempotent: a request that failed is counted,
			// never sent again behind the caller's back.
			RetryIfErr: func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
		},
		Timeout: timeout,
		Body: func(i int) []byte {
			return fmt.Appendf(nil, `{"customerId":"load-%d","totalAmount":%d,"currency":"BRL"}`, i%100, 100+i%9000)
		},
	}
}

type recorder struct {
	mu  sync.Mutex
	res Result
}

func (r *recorder) add(status int, err error, latency time.Duration, id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Sent++
	switch {
	case err != nil:
		kind := err.Error()
		if i := strings.LastIndex(kind, ": "); i >= 0 {
			kind = kind[i+2:]
		}
		r.res.Failures[kind]++
	case status == http.StatusCreated:
		r.res.Created++
		r.res.Latencies = append(r.res.Latencies, latency)
		if id != "" {
			r.res.OrderIDs = append(r.res.OrderIDs, id)
		}
	default:
		r.res.Statuses[status]++
	}
}

func (c *Client) post(i int) (int, string, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(c.URL)
	req.Header.SetMethod(http.MethodPost)
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(c.Body(i))
	if err := c.HTTP.DoTimeout(req, resp, c.Timeout); err != nil {
		return 0, "", err
	}
	id := ""
	if c.RecordIDs && resp.StatusCode() == http.StatusCreated {
		id = strings.TrimPrefix(string(resp.Header.Peek("Location")), "/orders/")
	}
	return resp.StatusCode(), id, nil
}

func newRecorder() *recorder {
	return &recorder{res: Result{Statuses: map[int]int{}, Failures: map[string]int{}}}
}

// Closed runs clients concurrent clients, each posting as soon as its last
// answer came, for d (or until ctx ends).
func (c *Client) Closed(ctx context.Context, clients int, d time.Duration) Result {
	rec := newRecorder()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range clients {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				t0 := time.Now()
				status, id, err := c.post(i)
				rec.add(status, err, time.Since(t0), id)
			}
		})
	}
	wg.Wait()
	rec.res.Duration = time.Since(start)
	return rec.res
}

// Open posts at rate orders per second for d, each from its scheduled time,
// so a latency counts from when the order should have been sent. At most
// maxInFlight requests are outstanding; past that an order counts as failed
// ("overloaded") instead of being delayed. When ctx ends no further order is
// sent; those in flight still get their answers.
func (c *Client) Open(ctx context.Context, rate float64, d time.Duration, maxInFlight int) Result {
	rec := newRecorder()
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	total := int(d.Seconds() * rate)
	slots := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	for i := 0; i < total && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		select {
		case slots <- struct{}{}:
		default:
			rec.add(0, fmt.Errorf("load: overloaded"), 0, "")
			continue
		}
		wg.Go(func() {
			defer func() { <-slots }()
			status, id, err := c.post(i)
			rec.add(status, err, time.Since(due), id)
		})
	}
	wg.Wait()
	rec.res.Duration = time.Since(start)
	return rec.res
}
