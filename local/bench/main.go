// Command bench measures the pipeline on this machine against the real
// PostgreSQL and RabbitMQ, in fresh databases and a fresh vhost that it
// removes afterwards, and prints a markdown table (and writes JSON):
//
//  1. the ceiling: POST /orders' own transaction (order + outbox row, the
//     same statements through the same store code), one order per
//     transaction, straight through pgx at concurrency C for T;
//  2. the API: POST /orders over HTTP against bin/orders (relay running) at
//     the same C and T: rate, latency percentiles, ratio to step 1;
//  3. end to end: an open-loop arrival rate (half of step 2's by default)
//     with bin/invoices running: order-to-invoice latency;
//  4. the consumer: N events preloaded with the consumer stopped, then the
//     time bin/invoices takes to drain them;
//  5. resources: peak RSS of each service, binary sizes;
//  6. Lambda: bin/orders under the Lambda Runtime Interface Emulator
//     (bin/aws-lambda-rie): its cold start (the emulator's INIT REPORT) and
//     N sequential warm POST /orders invocations (HTTP API events), next to
//     the same N sequential requests to bin/orders as a server, each in a
//     fresh database.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/functions/orders"
	ordersmigrations "invoicing/functions/orders/migrations"
	"invoicing/local/loadgen"
	"invoicing/shared/event"
	"invoicing/shared/postgres"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

type config struct {
	Clients     int           `json:"clients"`
	Duration    time.Duration `json:"duration_ns"`
	Preload     int           `json:"preload"`
	Rate        float64       `json:"rate"`
	Bin         string        `json:"-"`
	Out         string        `json:"-"`
	OrdersEnv   string        `json:"orders_env,omitempty"`
	InvoicesEnv string        `json:"invoices_env,omitempty"`
	Steps       string        `json:"steps"`
	LambdaN     int           `json:"lambda_invocations"`
	RIE         string        `json:"-"`
	GoMaxProcs  int           `json:"gomaxprocs"`
}

func (c config) has(step byte) bool { return strings.IndexByte(c.Steps, step) >= 0 }

type report struct {
	Date    time.Time `json:"date"`
	CPUs    int       `json:"cpus"`
	Config  config    `json:"config"`
	Ceiling struct {
		TPS float64 `json:"tps"`
		Txs int     `json:"transactions"`
	} `json:"ceiling"`
	API struct {
		RPS      float64        `json:"rps"`
		P50ms    float64        `json:"p50_ms"`
		P95ms    float64        `json:"p95_ms"`
		P99ms    float64        `json:"p99_ms"`
		Ratio    float64        `json:"ratio_to_ceiling"`
		Created  int            `json:"created"`
		Statuses map[int]int    `json:"other_statuses"`
		Failures map[string]int `json:"failures"`
		Backlog  int64          `json:"outbox_backlog_after"`
		// CPU is per order, from the start of the load until the relay
		// published the last order's event.
		CPU cpuPerOrder `json:"cpu"`
	} `json:"api"`
	// Full is end to end under the same closed-loop load as step 2, with
	// the invoices service running: the CPU time per order at full load,
	// until the last order's invoice is issued.
	Full struct {
		RPS   float64     `json:"rps"`
		P99ms float64     `json:"http_p99_ms"`
		CPU   cpuPerOrder `json:"cpu"`
	} `json:"e2e_full_load"`
	E2E struct {
		Rate      float64 `json:"rate"`
		Orders    int     `json:"orders"`
		HTTPP99ms float64 `json:"http_p99_ms"`
		P50ms     float64 `json:"order_to_invoice_p50_ms"`
		P99ms     float64 `json:"order_to_invoice_p99_ms"`
		Maxms     float64 `json:"order_to_invoice_max_ms"`
		Failed    int     `json:"failed"`
		// CPU is per order, from the start of the load until the last
		// order's invoice is issued.
		CPU cpuPerOrder `json:"cpu"`
	} `json:"e2e"`
	Consumer struct {
		Events           int     `json:"events"`
		DrainSeconds     float64 `json:"drain_s"`
		Rate             float64 `json:"rate"`
		RateAfterStartup float64 `json:"rate_after_first_invoice"`
	} `json:"consumer"`
	Resources struct {
		OrdersPeakRSSMB   float64 `json:"orders_peak_rss_mb"`
		InvoicesPeakRSSMB float64 `json:"invoices_peak_rss_mb"`
		OrdersBinaryMB    float64 `json:"orders_binary_mb"`
		InvoicesBinaryMB  float64 `json:"invoices_binary_mb"`
	} `json:"resources"`
	Lambda  lambdaReport `json:"lambda"`
	Targets []target     `json:"targets"`
}

// target is one of the goals the bench checks its figures against.
type target struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Limit string  `json:"limit"`
	Met   bool    `json:"met"`
}

// targets compares what r measured with the goals set for the pipeline:
// CPU per order end to end, the API against the one-commit ceiling, and
// the order-to-invoice latency at half the API's rate.
func targets(r report) []target {
	var ts []target
	add := func(name string, v float64, limit string, met bool) {
		ts = append(ts, target{Name: name, Value: v, Limit: limit, Met: met})
	}
	if c := r.Full.CPU; c.Orders > 0 {
		add("pipeline CPU per order, end to end at full load (µs)", c.PipelineUs, "<= 200", c.PipelineUs <= 200)
	}
	if r.API.Ratio > 0 {
		add("POST /orders rate / ceiling", r.API.Ratio, ">= 3.0", r.API.Ratio >= 3.0)
	}
	if r.API.RPS > 0 {
		add("POST /orders p99 (ms)", r.API.P99ms, "<= 25", r.API.P99ms <= 25)
	}
	if r.E2E.Orders > 0 && r.Config.Rate == 0 {
		add("order to invoice p50 at half rate (ms)", r.E2E.P50ms, "<= 10", r.E2E.P50ms <= 10)
		add("order to invoice p99 at half rate (ms)", r.E2E.P99ms, "<= 50", r.E2E.P99ms <= 50)
	}
	return ts
}

func main() {
	var cfg config
	flag.IntVar(&cfg.Clients, "c", 32, "concurrent clients (steps 1 and 2)")
	flag.DurationVar(&cfg.Duration, "t", 10*time.Second, "duration of steps 1, 2 and 3")
	flag.IntVar(&cfg.Preload, "n", 20000, "events preloaded for the consumer drain (step 4)")
	flag.Float64Var(&cfg.Rate, "rate", 0, "open-loop orders/s for step 3 (0: half of step 2's rate)")
	flag.StringVar(&cfg.Bin, "bin", "bin", "folder with the orders and invoices binaries")
	flag.StringVar(&cfg.Out, "out", "local/results/bench.json", "JSON results file")
	flag.StringVar(&cfg.OrdersEnv, "orders-env", "", "extra KEY=VALUE,... for bin/orders")
	flag.StringVar(&cfg.InvoicesEnv, "invoices-env", "", "extra KEY=VALUE,... for bin/invoices")
	flag.StringVar(&cfg.Steps, "steps", "12346", "steps to run (step 3 without step 2 needs -rate)")
	flag.IntVar(&cfg.LambdaN, "lambda-n", 500, "sequential warm invocations in step 6 (at most 5000)")
	flag.IntVar(&cfg.GoMaxProcs, "gomaxprocs", 1, "GOMAXPROCS of both services, as deployed (0: the Go runtime's default)")
	flag.StringVar(&cfg.RIE, "rie", "bin/aws-lambda-rie", "the Lambda Runtime Interface Emulator (step 6)")
	cpuProfile := flag.String("cpuprofile", "", "write the bench process's own CPU profile (the load generator) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		pprof.StopCPUProfile() // os.Exit skips the deferred stop
		os.Exit(1)
	}
}

// env is what one bench run creates and removes.
type env struct {
	cleanups []func() error
}

func (e *env) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		if err := e.cleanups[i](); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
	}
}

func (e *env) database(name string) (string, error) {
	url, drop, err := testenv.CreateDatabase(testenv.UniqueName(name))
	if err == nil {
		e.cleanups = append(e.cleanups, drop)
	}
	return url, err
}

// serviceEnv is a service's environment: base, the deployment's GOMAXPROCS
// (see README, "CPU per order"), then the extra KEY=VALUE,... of the flags.
func serviceEnv(cfg config, base map[string]string, extra string) map[string]string {
	if cfg.GoMaxProcs > 0 {
		base["GOMAXPROCS"] = fmt.Sprint(cfg.GoMaxProcs)
	}
	return extraEnv(base, extra)
}

func extraEnv(base map[string]string, extra string) map[string]string {
	for _, kv := range strings.Split(extra, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			base[strings.TrimSpace(k)] = v
		}
	}
	return base
}

func run(ctx context.Context, cfg config) error {
	var rep report
	rep.Date, rep.CPUs, rep.Config = time.Now().UTC(), runtime.NumCPU(), cfg
	e := &env{}
	defer e.close()
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()

	ceilingDB, err := e.database("bench_ceiling_")
	if err != nil {
		return err
	}
	ordersDB, err := e.database("bench_orders_")
	if err != nil {
		return err
	}
	// The bench's own queries on the orders database (counts, WAL
	// positions) share one pool.
	ordersPool, err := pgxpool.New(ctx, ordersDB)
	if err != nil {
		return err
	}
	defer ordersPool.Close()
	invoicesDB, err := e.database("bench_invoices_")
	if err != nil {
		return err
	}
	brokerURL, removeVhost, err := testenv.CreateVhost(testenv.UniqueName("bench-"))
	if err != nil {
		return err
	}
	e.cleanups = append(e.cleanups, removeVhost)

	if cfg.has('3') && !cfg.has('2') && cfg.Rate == 0 {
		return fmt.Errorf("step 3 without step 2 needs -rate")
	}

	// 1. The ceiling.
	if cfg.has('1') {
		fmt.Fprintf(os.Stderr, "1/5 ceiling: %d clients for %s\n", cfg.Clients, cfg.Duration)
		txs, err := ceiling(ctx, ceilingDB, cfg.Clients, cfg.Duration)
		if err != nil {
			return err
		}
		rep.Ceiling.Txs, rep.Ceiling.TPS = txs, float64(txs)/cfg.Duration.Seconds()
	}

	// 2. The API, with the relay publishing as it goes.
	fmt.Fprintf(os.Stderr, "2/5 API: %d clients for %s\n", cfg.Clients, cfg.Duration)
	port, err := testenv.PickPort()
	if err != nil {
		return err
	}
	ordersProc, err := testenv.StartProcess(filepath.Join(cfg.Bin, "orders"), port, serviceEnv(cfg, map[string]string{
		"DATABASE_URL": ordersDB, "BROKER_URL": brokerURL,
	}, cfg.OrdersEnv), devnull, 30*time.Second)
	if ordersProc != nil { // also when it started but never became healthy
		defer ordersProc.Kill()
	}
	if err != nil {
		return err
	}
	if cfg.has('2') {
		client := loadgen.New(ordersProc.URL, cfg.Clients)
		client.Closed(ctx, cfg.Clients, time.Second) // warm up connections and caches
		if err := waitOutbox(ctx, ordersPool, time.Minute); err != nil {
			return err
		}
		probe := cpuProbe{orders: ordersProc.Pid()}
		m, err := startMeasure(ctx, probe, ordersPool)
		if err != nil {
			return err
		}
		api := client.Closed(ctx, cfg.Clients, cfg.Duration)
		backlog, err := outboxBacklog(ctx, ordersPool)
		if err != nil {
			return err
		}
		rep.API.Backlog = backlog
		if err := waitOutbox(ctx, ordersPool, 5*time.Minute); err != nil {
			return err
		}
		if rep.API.CPU, err = m.stop(ctx, api.Created); err != nil {
			return err
		}
		rep.API.RPS, rep.API.Created = api.RPS(), api.Created
		rep.API.P50ms, rep.API.P95ms, rep.API.P99ms = ms(api.Percentile(0.5)), ms(api.Percentile(0.95)), ms(api.Percentile(0.99))
		if rep.Ceiling.TPS > 0 {
			rep.API.Ratio = rep.API.RPS / rep.Ceiling.TPS
		}
		rep.API.Statuses, rep.API.Failures = api.Statuses, api.Failures
		if rss, err := ordersProc.PeakRSS(); err == nil {
			rep.Resources.OrdersPeakRSSMB = mb(rss)
		}
	}

	// 3. End to end at a constant arrival rate.
	invoicesPool, err := pgxpool.New(ctx, invoicesDB)
	if err != nil {
		return err
	}
	defer invoicesPool.Close()
	invoicesEnv := serviceEnv(cfg, map[string]string{"DATABASE_URL": invoicesDB, "BROKER_URL": brokerURL}, cfg.InvoicesEnv)
	invoicesBin := filepath.Join(cfg.Bin, "invoices")
	ip, err := testenv.PickPort()
	if err != nil {
		return err
	}
	invoicesProc, err := testenv.StartProcess(invoicesBin, ip, invoicesEnv, devnull, 30*time.Second)
	// Whichever invoices process runs when the bench ends, even by an
	// error, is killed: step 4 starts a new one.
	defer func() {
		if invoicesProc != nil {
			invoicesProc.Kill()
		}
	}()
	if err != nil {
		return err
	}
	if cfg.has('3') {
		var ordersSoFar int
		if err := ordersPool.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&ordersSoFar); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "3/5 end to end: draining the %d orders of step 2 first\n", ordersSoFar)
		if _, err := waitInvoices(ctx, invoicesPool, ordersSoFar, 5*time.Minute); err != nil {
			return err
		}
		probe := cpuProbe{orders: ordersProc.Pid(), invoices: invoicesProc.Pid()}
		if cfg.has('2') {
			fmt.Fprintf(os.Stderr, "3/5 end to end: %d clients for %s\n", cfg.Clients, cfg.Duration)
			m, err := startMeasure(ctx, probe, ordersPool)
			if err != nil {
				return err
			}
			full := loadgen.New(ordersProc.URL, cfg.Clients).Closed(ctx, cfg.Clients, cfg.Duration)
			if err := ordersPool.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&ordersSoFar); err != nil {
				return err
			}
			if _, err := waitInvoices(ctx, invoicesPool, ordersSoFar, 5*time.Minute); err != nil {
				return err
			}
			if rep.Full.CPU, err = m.stop(ctx, full.Created); err != nil {
				return err
			}
			rep.Full.RPS, rep.Full.P99ms = full.RPS(), ms(full.Percentile(0.99))
		}
		rate := cfg.Rate
		if rate == 0 {
			rate = rep.API.RPS / 2
		}
		fmt.Fprintf(os.Stderr, "3/5 end to end: %.0f orders/s for %s\n", rate, cfg.Duration)
		e2eClient := loadgen.New(ordersProc.URL, 256)
		e2eClient.Body = func(i int) []byte {
			return fmt.Appendf(nil, `{"customerId":"e2e-%d","totalAmount":%d}`, i%100, 100+i)
		}
		m, err := startMeasure(ctx, probe, ordersPool)
		if err != nil {
			return err
		}
		open := e2eClient.Open(ctx, rate, cfg.Duration, 2000)
		rep.E2E.Rate, rep.E2E.Orders, rep.E2E.HTTPP99ms = rate, open.Created, ms(open.Percentile(0.99))
		rep.E2E.Failed = open.Sent - open.Created
		if _, err := waitInvoices(ctx, invoicesPool, ordersSoFar+open.Created, 5*time.Minute); err != nil {
			return err
		}
		if rep.E2E.CPU, err = m.stop(ctx, open.Created); err != nil {
			return err
		}
		var q []float64
		if err := invoicesPool.QueryRow(ctx, `
			SELECT percentile_disc(ARRAY[0.5, 0.99, 1]) WITHIN GROUP (ORDER BY extract(epoch FROM issued_at - order_created_at))
			FROM invoices WHERE customer_id LIKE 'e2e-%'`).Scan(&q); err != nil {
			return fmt.Errorf("order-to-invoice latency: %w", err)
		}
		rep.E2E.P50ms, rep.E2E.P99ms, rep.E2E.Maxms = q[0]*1000, q[1]*1000, q[2]*1000
	}
	if err := invoicesProc.Stop(30 * time.Second); err != nil {
		return fmt.Errorf("stop invoices: %w", err)
	}
	_ = ordersProc.Stop(30 * time.Second)

	if cfg.has('4') {
		// 4. The consumer alone, draining a preloaded backlog.
		fmt.Fprintf(os.Stderr, "4/5 consumer: preloading %d events\n", cfg.Preload)
		var before int
		if err := invoicesPool.QueryRow(ctx, `SELECT coalesce(sum(last), 0)::int FROM invoice_counters`).Scan(&before); err != nil {
			return err
		}
		if err := preload(ctx, brokerURL, cfg.Preload); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "4/5 consumer: draining\n")
		start := time.Now()
		invoicesProc, err = testenv.StartProcess(invoicesBin, ip, invoicesEnv, devnull, 30*time.Second)
		if err != nil {
			return err
		}
		first, err := waitInvoices(ctx, invoicesPool, before+1, 5*time.Minute)
		if err != nil {
			return err
		}
		last, err := waitInvoices(ctx, invoicesPool, before+cfg.Preload, 10*time.Minute)
		if err != nil {
			return err
		}
		rep.Consumer.Events = cfg.Preload
		rep.Consumer.DrainSeconds = last.Sub(start).Seconds()
		rep.Consumer.Rate = float64(cfg.Preload) / rep.Consumer.DrainSeconds
		rep.Consumer.RateAfterStartup = float64(cfg.Preload-1) / last.Sub(first).Seconds()
		if rss, err := invoicesProc.PeakRSS(); err == nil {
			rep.Resources.InvoicesPeakRSSMB = mb(rss)
		}
		_ = invoicesProc.Stop(30 * time.Second)
	}

	if cfg.has('6') {
		if rep.Lambda, err = lambdaStep(ctx, e, cfg, devnull); err != nil {
			return fmt.Errorf("lambda step: %w", err)
		}
	}

	// 5. Binary sizes.
	for name, dst := range map[string]*float64{"orders": &rep.Resources.OrdersBinaryMB, "invoices": &rep.Resources.InvoicesBinaryMB} {
		if st, err := os.Stat(filepath.Join(cfg.Bin, name)); err == nil {
			*dst = mb(st.Size())
		}
	}
	rep.Targets = targets(rep)
	printReport(os.Stdout, rep)
	if err := os.MkdirAll(filepath.Dir(cfg.Out), 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(rep, "", "  ")
	return os.WriteFile(cfg.Out, append(b, '\n'), 0o644)
}

// ceiling runs POST /orders' transaction, one order each, from clients
// goroutines for d, and returns how many committed.
func ceiling(ctx context.Context, url string, clients int, d time.Duration) (int, error) {
	pool, err := postgres.Prepare(ctx, postgres.Setup{URL: url, MaxConns: clients, Migrate: true,
		Migrations: ordersmigrations.FS, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	store := orders.NewStore(pool, 1, 1)
	defer store.Close()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var n atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			for ctx.Err() == nil {
				o := orders.NewOrder(fmt.Sprintf("load-%d", i), 1999, "BRL", time.Now())
				if err := store.CreateOne(ctx, o); err != nil {
					if ctx.Err() == nil {
						once.Do(func() { firstErr = err })
					}
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return int(n.Load()), firstErr
}

// preload publishes n order.created events with confirms.
func preload(ctx context.Context, brokerURL string, n int) error {
	session := rabbit.NewSession(brokerURL, "bench-preload", slog.New(slog.DiscardHandler))
	defer session.Close()
	pub := rabbit.NewPublisher(session)
	batch := make([]rabbit.Message, 0, 1000)
	for i := range n {
		e := event.OrderCreated{EventID: uuid.Must(uuid.NewV7()), Type: event.TypeOrderCreated, OccurredAt: time.Now().UTC(),
			OrderID: uuid.Must(uuid.NewV7()), Customer: event.Customer{ID: fmt.Sprintf("pre-%d", i%100)}, TotalAmount: 100, Currency: "BRL"}
		body, _ := json.Marshal(e)
		batch = append(batch, rabbit.Message{Exchange: rabbit.Exchange, RoutingKey: rabbit.RoutingKeyOrderCreated,
			MessageID: e.EventID.String(), Type: e.Type, Timestamp: e.OccurredAt, Body: body})
		if len(batch) == cap(batch) || i == n-1 {
			if err := pub.Publish(ctx, batch); err != nil {
				return fmt.Errorf("preload: %w", err)
			}
			batch = batch[:0]
		}
	}
	return nil
}

// waitInvoices polls until the invoices table has at least n rows and
// returns when it saw that.
func waitInvoices(ctx context.Context, pool *pgxpool.Pool, n int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		var got int
		// The year's counter is the number of invoices (they are gapless):
		// one row to read, where count(*) would scan a table it slows down.
		if err := pool.QueryRow(ctx, `SELECT coalesce(sum(last), 0)::int FROM invoice_counters`).Scan(&got); err != nil {
			return time.Time{}, err
		}
		if got >= n {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%d invoices after %s, want %d", got, timeout, n)
		}
		time.Sleep(50 * time.Millisecond) // each poll wakes a database backend in the measured window
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func mb(b int64) float64         { return float64(b) / (1 << 20) }

func printReport(w io.Writer, r report) {
	fmt.Fprintf(w, "## Bench, %s, %d CPUs, C=%d, T=%s, services' GOMAXPROCS=%d\n\n", r.Date.Format(time.RFC3339), r.CPUs, r.Config.Clients, r.Config.Duration, r.Config.GoMaxProcs)
	fmt.Fprintln(w, "| step | figure | value |")
	fmt.Fprintln(w, "| --- | --- | --- |")
	row := func(step, figure, format string, v ...any) {
		fmt.Fprintf(w, "| %s | %s | %s |\n", step, figure, fmt.Sprintf(format, v...))
	}
	row("1 ceiling", "order+outbox transactions/s, one order each", "%.0f", r.Ceiling.TPS)
	row("2 API", "POST /orders 201/s", "%.0f", r.API.RPS)
	row("2 API", "latency p50 / p95 / p99", "%.1f / %.1f / %.1f ms", r.API.P50ms, r.API.P95ms, r.API.P99ms)
	row("2 API", "ratio to step 1", "%.2f", r.API.Ratio)
	row("2 API", "non-201 answers / transport errors", "%v / %v", r.API.Statuses, r.API.Failures)
	row("2 API", "outbox backlog right after", "%d rows", r.API.Backlog)
	cpuRows(row, "2 API", r.API.CPU)
	if r.Full.CPU.Orders > 0 {
		row("3 end to end", "full load: POST /orders 201/s, p99", "%.0f, %.1f ms", r.Full.RPS, r.Full.P99ms)
		cpuRows(row, "3 end to end, full load", r.Full.CPU)
	}
	row("3 end to end", "arrival rate (open loop)", "%.0f orders/s, %d orders, %d failed", r.E2E.Rate, r.E2E.Orders, r.E2E.Failed)
	row("3 end to end", "order-to-invoice p50 / p99 / max", "%.1f / %.1f / %.1f ms", r.E2E.P50ms, r.E2E.P99ms, r.E2E.Maxms)
	row("3 end to end", "POST /orders p99 at that rate", "%.1f ms", r.E2E.HTTPP99ms)
	cpuRows(row, "3 end to end, open loop", r.E2E.CPU)
	row("4 consumer", "drain of preloaded events", "%d in %.2f s", r.Consumer.Events, r.Consumer.DrainSeconds)
	row("4 consumer", "invoices/s (from start / from first invoice)", "%.0f / %.0f", r.Consumer.Rate, r.Consumer.RateAfterStartup)
	row("5 resources", "peak RSS orders (step 2) / invoices (step 4)", "%.1f / %.1f MB", r.Resources.OrdersPeakRSSMB, r.Resources.InvoicesPeakRSSMB)
	row("5 resources", "binary size orders / invoices", "%.1f / %.1f MB", r.Resources.OrdersBinaryMB, r.Resources.InvoicesBinaryMB)
	if l := r.Lambda; l.Invocations > 0 {
		row("6 Lambda", "orders cold start (emulator INIT REPORT) / first invocation", "%.1f / %.1f ms", l.InitMs, l.FirstInvocationMs)
		row("6 Lambda", fmt.Sprintf("warm POST /orders p50 / p99, %d sequential", l.Invocations), "%.2f / %.2f ms", l.P50ms, l.P99ms)
		row("6 Lambda", fmt.Sprintf("server POST /orders p50 / p99, %d sequential", l.Invocations), "%.2f / %.2f ms", l.ServerP50ms, l.ServerP99ms)
	}
	for _, t := range r.Targets {
		verdict := "not met"
		if t.Met {
			verdict = "met"
		}
		row("target", t.Name, "%.2f (%s): %s", t.Value, t.Limit, verdict)
	}
}
