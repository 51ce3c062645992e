// Command chaos runs a steady load of orders through both services while it
// injects faults one after another, then checks that every order answered
// 201 became exactly one invoice. It stops and restarts the machine's
// shared RabbitMQ and PostgreSQL, so it is its own make target and never
// part of make test. Exits 1 on any loss, duplicate, gap or dead letter.
//
// Faults, in order: the orders process killed with SIGKILL and restarted;
// RabbitMQ stopped and started (rabbitmqctl stop_app / start_app); the
// invoices process killed with SIGKILL while it works through a backlog and
// restarted; PostgreSQL restarted (pg_ctlcluster restart).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"invoicing/local/loadgen"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

type options struct {
	Rate   float64
	Pause  time.Duration
	Settle time.Duration
	Bin    string
	Out    string
}

// Fault is one injected failure and how long the pipeline took to heal.
type Fault struct {
	Name string `json:"name"`
	// HealSeconds runs from the injection until both services answer
	// /health 200 again and a new order has been accepted and invoiced.
	HealSeconds float64 `json:"heal_s"`
	// DowntimeSeconds is how long the fault itself keeps the part down
	// on purpose; it is included in HealSeconds.
	DowntimeSeconds float64 `json:"planned_downtime_s"`
}

type report struct {
	Date    time.Time `json:"date"`
	Rate    float64   `json:"rate"`
	Faults  []Fault   `json:"faults"`
	Settle  float64   `json:"settle_s"`
	Sent    int       `json:"sent"`
	Verdict Verdict   `json:"verdict"`
}

func main() {
	var o options
	flag.Float64Var(&o.Rate, "rate", 200, "orders per second, open loop")
	flag.DurationVar(&o.Pause, "pause", 5*time.Second, "steady load between faults")
	flag.DurationVar(&o.Settle, "settle", 3*time.Minute, "longest wait for the pipeline to settle")
	flag.StringVar(&o.Bin, "bin", "bin", "folder with the orders and invoices binaries")
	flag.StringVar(&o.Out, "out", "local/results/chaos.json", "JSON results file")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

type service struct {
	name string
	bin  string
	port int
	env  map[string]string
	logs *os.File
	proc *testenv.Process
}

func (s *service) start() error {
	p, err := testenv.StartProcess(s.bin, s.port, s.env, s.logs, 60*time.Second)
	s.proc = p
	return err
}

func run(ctx context.Context, o options) (bool, error) {
	rep := report{Date: time.Now().UTC(), Rate: o.Rate}
	var cleanups []func() error
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			if err := cleanups[i](); err != nil {
				fmt.Fprintln(os.Stderr, "cleanup:", err)
			}
		}
	}()
	ordersDB, drop, err := testenv.CreateDatabase(testenv.UniqueName("chaos_orders_"))
	if err != nil {
		return false, err
	}
	cleanups = append(cleanups, drop)
	invoicesDB, drop, err := testenv.CreateDatabase(testenv.UniqueName("chaos_invoices_"))
	if err != nil {
		return false, err
	}
	cleanups = append(cleanups, drop)
	brokerURL, remove, err := testenv.CreateVhost(testenv.UniqueName("chaos-"))
	if err != nil {
		return false, err
	}
	cleanups = append(cleanups, remove)
	if err := os.MkdirAll(filepath.Dir(o.Out), 0o755); err != nil {
		return false, err
	}

	services := map[string]*service{}
	for _, name := range []string{"orders", "invoices"} {
		port, err := testenv.PickPort()
		if err != nil {
			return false, err
		}
		db := ordersDB
		if name == "invoices" {
			db = invoicesDB
		}
		logs, err := os.Create(filepath.Join(filepath.Dir(o.Out), "chaos-"+name+".log"))
		if err != nil {
			return false, err
		}
		defer logs.Close()
		s := &service{name: name, bin: filepath.Join(o.Bin, name), port: port, logs: logs,
			env: map[string]string{"DATABASE_URL": db, "BROKER_URL": brokerURL, "BATCH_SIZE": "50"}}
		if err := s.start(); err != nil {
			return false, err
		}
		cleanups = append(cleanups, func() error { s.proc.Kill(); return nil })
		services[name] = s
	}
	orders, invoices := services["orders"], services["invoices"]

	client := loadgen.New(orders.proc.URL, 64)
	client.RecordIDs = true
	client.Timeout = 5 * time.Second
	client.HTTP.MaxConnWaitTimeout = client.Timeout
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loadDone := make(chan loadgen.Result, 1)
	go func() { loadDone <- client.Open(loadCtx, o.Rate, 24*time.Hour, 5000) }()
	probe := &http.Client{Timeout: 2 * time.Second}

	pg := postgresVersion()
	faults := []struct {
		name     string
		downtime time.Duration
		inject   func() error
	}{
		{"orders SIGKILL + restart", 0, func() error {
			orders.proc.Kill()
			return orders.start()
		}},
		{"RabbitMQ stop_app / start_app", 3 * time.Second, func() error {
			if err := testenv.Rabbitmqctl("stop_app"); err != nil {
				return err
			}
			time.Sleep(3 * time.Second) // the planned downtime
			if err := testenv.Rabbitmqctl("start_app"); err != nil {
				return err
			}
			return testenv.Rabbitmqctl("await_startup")
		}},
		{"invoices SIGKILL mid-batch + restart", 2 * time.Second, func() error {
			// Let a backlog build so the kill lands inside a batch.
			invoices.proc.Kill()
			time.Sleep(2 * time.Second) // the planned downtime
			if err := invoices.start(); err != nil {
				return err
			}
			time.Sleep(150 * time.Millisecond)
			invoices.proc.Kill()
			return invoices.start()
		}},
		{"PostgreSQL restart", 0, func() error {
			out, err := exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", pg, "main", "restart").CombinedOutput()
			if err != nil {
				return fmt.Errorf("pg_ctlcluster restart: %v: %s", err, out)
			}
			return nil
		}},
	}
	for _, f := range faults {
		sleep(ctx, o.Pause)
		fmt.Fprintf(os.Stderr, "fault: %s\n", f.name)
		start := time.Now()
		if err := f.inject(); err != nil {
			return false, fmt.Errorf("%s: %w", f.name, err)
		}
		if err := waitHealed(ctx, start, orders, invoices, probe); err != nil {
			return false, fmt.Errorf("%s: %w", f.name, err)
		}
		fault := Fault{Name: f.name, HealSeconds: time.Since(start).Seconds(), DowntimeSeconds: f.downtime.Seconds()}
		fmt.Fprintf(os.Stderr, "  healed in %.1fs\n", fault.HealSeconds)
		rep.Faults = append(rep.Faults, fault)
	}
	sleep(ctx, o.Pause)
	stopLoad()
	load := <-loadDone
	rep.Sent = load.Sent

	fmt.Fprintln(os.Stderr, "settling")
	settleStart := time.Now()
	obs, err := settle(ctx, ordersDB, invoicesDB, brokerURL, o.Settle)
	if err != nil {
		return false, err
	}
	rep.Settle = time.Since(settleStart).Seconds()
	obs.Accepted = load.OrderIDs
	rep.Verdict = Check(obs)
	printReport(os.Stdout, rep)
	b, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(o.Out, append(b, '\n'), 0o644); err != nil {
		return false, err
	}
	return rep.Verdict.OK(), nil
}

func healthy(client *http.Client, url string) bool {
	resp, err := client.Get(url + "/health")
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitHealed waits until both services are healthy, a probe order is
// accepted, and that order's invoice exists: the whole pipeline works again.
func waitHealed(ctx context.Context, start time.Time, orders, invoices *service, client *http.Client) error {
	for time.Since(start) < 3*time.Minute {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if healthy(client, orders.proc.URL) && healthy(client, invoices.proc.URL) {
			resp, err := client.Post(orders.proc.URL+"/orders", "application/json",
				strings.NewReader(`{"customerId":"chaos-probe","totalAmount":1}`))
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusCreated {
					return waitInvoiced(ctx, start, client, invoices.proc.URL, strings.TrimPrefix(resp.Header.Get("Location"), "/orders/"))
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("not healed after 3 minutes")
}

// waitInvoiced polls the invoices API until orderID has its invoice.
func waitInvoiced(ctx context.Context, start time.Time, client *http.Client, invoicesURL, orderID string) error {
	for time.Since(start) < 3*time.Minute && ctx.Err() == nil {
		resp, err := client.Get(invoicesURL + "/invoices?orderId=" + orderID)
		if err == nil {
			var page struct{ Data []json.RawMessage }
			err = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			if err == nil && len(page.Data) == 1 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("order %s not invoiced after 3 minutes", orderID)
}

// settle waits until every stored order's event is published and invoiced
// (no outbox backlog, queue "orders" empty, invoice count steady), then
// reads what the checker needs.
func settle(ctx context.Context, ordersDB, invoicesDB, brokerURL string, limit time.Duration) (Observed, error) {
	var obs Observed
	op, err := pgxpool.New(ctx, ordersDB)
	if err != nil {
		return obs, err
	}
	defer op.Close()
	ip, err := pgxpool.New(ctx, invoicesDB)
	if err != nil {
		return obs, err
	}
	defer ip.Close()
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		return obs, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return obs, err
	}
	deadline := time.Now().Add(limit)
	lastInvoices, steady := -1, 0
	for time.Now().Before(deadline) && steady < 10 {
		var backlog, invoices, stored int
		if err := op.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&backlog); err != nil {
			return obs, err
		}
		if err := op.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&stored); err != nil {
			return obs, err
		}
		if err := ip.QueryRow(ctx, `SELECT count(*) FROM invoices`).Scan(&invoices); err != nil {
			return obs, err
		}
		q, err := ch.QueueDeclarePassive(rabbit.Queue, true, false, false, false, nil)
		if err != nil {
			return obs, err
		}
		if backlog == 0 && q.Messages == 0 && invoices == lastInvoices && invoices >= stored {
			steady++
		} else {
			steady = 0
		}
		lastInvoices = invoices
		time.Sleep(200 * time.Millisecond)
	}
	rows, _ := op.Query(ctx, `SELECT id::text FROM orders`)
	if obs.Stored, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return obs, err
	}
	obs.Invoices = map[string]int{}
	rows, _ = ip.Query(ctx, `SELECT order_id::text, count(*) FROM invoices GROUP BY order_id`)
	var id string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error { obs.Invoices[id] = n; return nil }); err != nil {
		return obs, err
	}
	rows, _ = ip.Query(ctx, `SELECT seq FROM invoices WHERE year = (SELECT max(year) FROM invoices)`)
	if obs.Seqs, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		return obs, err
	}
	dead, err := ch.QueueDeclarePassive(rabbit.DeadLetterQueue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		return obs, err
	}
	obs.DeadLetters = dead.Messages
	return obs, nil
}

func postgresVersion() string {
	entries, _ := os.ReadDir("/etc/postgresql")
	names := []string{}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "15"
	}
	return names[len(names)-1]
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func printReport(w io.Writer, r report) {
	fmt.Fprintf(w, "## Chaos, %s, %.0f orders/s\n\n", r.Date.Format(time.RFC3339), r.Rate)
	fmt.Fprintln(w, "| fault | healed in (injection until a new order is accepted and invoiced) | of which planned downtime |")
	fmt.Fprintln(w, "| --- | --- | --- |")
	for _, f := range r.Faults {
		fmt.Fprintf(w, "| %s | %.1f s | %.0f s |\n", f.Name, f.HealSeconds, f.DowntimeSeconds)
	}
	v := r.Verdict
	fmt.Fprintf(w, "\n| check | value |\n| --- | --- |\n")
	fmt.Fprintf(w, "| orders sent | %d |\n| answered 201 | %d |\n| not answered 201 (refused or cut off by a fault) | %d |\n| invoices | %d |\n",
		r.Sent, v.Accepted, r.Sent-v.Accepted, v.Invoiced)
	fmt.Fprintf(w, "| lost (201, no invoice) | %d |\n| duplicated | %d |\n| unexpected | %d |\n", len(v.Lost), len(v.Duplicated), len(v.Unexpected))
	fmt.Fprintf(w, "| stored without 201, invoiced | %d |\n| stored, never invoiced | %d |\n", v.Recovered, v.StoredPending)
	fmt.Fprintf(w, "| invoice number gaps | %d |\n| orders.dead | %d |\n| settled in | %.1f s |\n", len(v.Gaps), v.DeadLetters, r.Settle)
	verdict := "PASS"
	if !v.OK() {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "\n%s: %s\n", verdict, v.Summary())
}
