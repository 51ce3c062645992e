package orders

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"invoicing/shared/postgres"
	"invoicing/shared/testenv"
)

// The real binary: built, started on a free port, driven over HTTP, and
// stopped with SIGTERM while a request is in flight.
func TestBinaryServesAndShutsDownGracefully(t *testing.T) {
	brokerURL := testenv.Vhost(t)
	recv := receive(t, brokerURL)
	proc := testenv.Start(t, testenv.Binary(t, "invoicing/functions/orders/cmd/orders"), map[string]string{
		"DATABASE_URL": testenv.Database(t),
		"BROKER_URL":   brokerURL,
		"LOG_LEVEL":    "debug",
	})

	resp, err := http.Post(proc.URL+"/orders", "application/json", strings.NewReader(`{"customerId":"bin","totalAmount":4200}`))
	if err != nil {
		t.Fatal(err)
	}
	var o Order
	if err := json.NewDecoder(resp.Body).Decode(&o); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	resp, err = http.Get(proc.URL + resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET Location: %v %v", resp, err)
	}
	resp.Body.Close()
	recv.byOrder(t, []Order{o}, 10*time.Second) // the relay inside the binary published it

	// Start a request, send SIGTERM before its body is complete, then finish it.
	u, _ := url.Parse(proc.URL)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"customerId":"late","totalAmount":1}`
	fmt.Fprintf(conn, "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:10])
	time.Sleep(100 * time.Millisecond)
	proc.Signal(syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond)
	if _, err := conn.Write([]byte(body[10:])); err != nil {
		t.Fatalf("finish in-flight request: %v", err)
	}
	inflight, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("in-flight request got no answer: %v", err)
	}
	if inflight.StatusCode != http.StatusCreated {
		t.Errorf("in-flight request answered %d, want 201", inflight.StatusCode)
	}
	if err := proc.Stop(15 * time.Second); err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, proc.Logs())
	}
	if _, err := http.Get(proc.URL + "/health"); err == nil {
		t.Error("still accepting connections after shutdown")
	}
	if !strings.Contains(proc.Logs(), `"msg":"shutting down"`) {
		t.Errorf("no shutdown log line:\n%s", proc.Logs())
	}
}

// SIGTERM while the database is stalled and creates are in flight: the
// binary answers them within DB_TIMEOUT and exits within its shutdown
// timeout, instead of waiting forever for a database that never answers.
func TestBinaryStopsWhileTheDatabaseIsStalled(t *testing.T) {
	dbURL := testenv.Database(t)
	proxy, proxied := testenv.ProxyURL(t, dbURL)
	// The default. Creates end within DB_TIMEOUT; closing the pool then
	// takes pgx up to 15s more per broken connection (a cancel request over
	// the same dead path), which the shutdown timeout must cover.
	const shutdownTimeout = 20 * time.Second
	proc := testenv.Start(t, testenv.Binary(t, "invoicing/functions/orders/cmd/orders"), map[string]string{
		"DATABASE_URL":      proxied,
		"BROKER_URL":        testenv.Vhost(t),
		"WRITERS":           "1",
		"DB_TIMEOUT":        "1s",
		"DB_LOOKUP_TIMEOUT": "500ms",
		"SHUTDOWN_TIMEOUT":  shutdownTimeout.String(),
		// The relay sweeps once at start, then only on notifications, so
		// that it holds no connection when the database stalls: this test
		// is about the creates.
		"RELAY_INTERVAL": "1h",
	})
	direct, err := postgres.Open(context.Background(), dbURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(direct.Close)
	g := closeGates(t, direct) // the binary migrated the database at start

	const n = 4
	answers := make(chan *http.Response, n)
	for i := range n {
		go func() {
			resp, err := http.Post(proc.URL+"/orders", "application/json", strings.NewReader(fmt.Sprintf(`{"customerId":"c%d","totalAmount":1}`, i)))
			if err != nil {
				t.Errorf("create %d: %v", i, err)
				resp = nil
			}
			answers <- resp
		}()
	}
	g.awaitWaiter(2) // a batch is in the database; more creates may wait for the writer
	proxy.Stall()
	start := time.Now()
	if err := proc.Stop(shutdownTimeout); err != nil {
		proc.Signal(syscall.SIGQUIT) // its goroutines go to the log shown below
		_ = proc.Stop(5 * time.Second)
		t.Fatalf("exit after SIGTERM with the database stalled: %v", err)
	}
	t.Logf("exited %s after SIGTERM", time.Since(start))
	for range n {
		resp := <-answers // all came before the exit
		if resp != nil && resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("in-flight create answered %d, want 503", resp.StatusCode)
		}
		if resp == nil {
			continue
		}
		resp.Body.Close()
	}
}

// A create wakes the relay of its own process: with the periodic sweep an
// hour away, events of plain and idempotent creates still arrive at once.
func TestCreatesWakeTheRelay(t *testing.T) {
	brokerURL := testenv.Vhost(t)
	recv := receive(t, brokerURL)
	proc := testenv.Start(t, testenv.Binary(t, "invoicing/functions/orders/cmd/orders"), map[string]string{
		"DATABASE_URL":   testenv.Database(t),
		"BROKER_URL":     brokerURL,
		"RELAY_INTERVAL": "1h",
	})
	var created []Order
	for i, key := range []string{"", "wake-key"} {
		req, _ := http.NewRequest(http.MethodPost, proc.URL+"/orders", strings.NewReader(fmt.Sprintf(`{"customerId":"wake","totalAmount":%d}`, i+1)))
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var o Order
		if err := json.NewDecoder(resp.Body).Decode(&o); err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST %q: %d %v", key, resp.StatusCode, err)
		}
		resp.Body.Close()
		created = append(created, o)
		recv.byOrder(t, created, 5*time.Second)
	}
}
