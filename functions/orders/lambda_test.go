package orders

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/functions/orders/migrations"
	"invoicing/shared/testenv"
)

const ordersCmd = "invoicing/functions/orders/cmd/orders"

// ordersLambda is the orders binary running as a Lambda function under the
// emulator, over its own migrated database and vhost.
type ordersLambda struct {
	*testenv.Lambda
	pool      *pgxpool.Pool
	brokerURL string
}

// startOrdersLambda starts the function; env overrides DATABASE_URL and
// BROKER_URL (to go through a proxy) and adds to the rest.
func startOrdersLambda(t *testing.T, env map[string]string) *ordersLambda {
	t.Helper()
	dbURL, pool := testenv.MigratedDatabase(t, migrations.FS)
	full := map[string]string{"DATABASE_URL": dbURL, "LOG_LEVEL": "debug"}
	if env["BROKER_URL"] == "" {
		full["BROKER_URL"] = testenv.Vhost(t)
	}
	for k, v := range env {
		full[k] = v
	}
	l := testenv.StartLambda(t, testenv.Binary(t, ordersCmd), full)
	return &ordersLambda{Lambda: l, pool: pool, brokerURL: full["BROKER_URL"]}
}

// proxiedURL is u with its host replaced by a proxy's address.
func proxiedURL(t *testing.T, u string, p *testenv.Proxy) string {
	t.Helper()
	parsed, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	parsed.Host = p.Addr()
	return parsed.String()
}

func readEvent(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "local", "events", "orders", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// invokeHTTP sends an HTTP event and fails the test unless the function
// answered.
func invokeHTTP(t *testing.T, l *testenv.Lambda, payload []byte) testenv.HTTPAnswer {
	t.Helper()
	a, err := l.InvokeHTTP(payload)
	if err != nil {
		t.Fatalf("invoke %.200s: %v", payload, err)
	}
	return a
}

// invokeJSON sends an event and decodes the function's answer into v.
func invokeJSON(t *testing.T, l *testenv.Lambda, payload []byte, v any) {
	t.Helper()
	answer, err := l.InvokeOK(payload)
	if err != nil {
		t.Fatalf("invoke %.200s: %v", payload, err)
	}
	if err := json.Unmarshal(answer, v); err != nil {
		t.Fatalf("decode %s: %v", answer, err)
	}
}

// plainJSON decodes an HTTP answer's body, which must be plain JSON (not
// base64) of the given content type.
func plainJSON[T any](t *testing.T, a testenv.HTTPAnswer, contentType string) T {
	t.Helper()
	if a.IsBase64Encoded {
		t.Errorf("body is base64-encoded: %s", a.Body)
	}
	if ct := a.Header("Content-Type"); ct != contentType {
		t.Errorf("Content-Type %q, want %q", ct, contentType)
	}
	var v T
	if err := json.Unmarshal([]byte(a.Body), &v); err != nil {
		t.Fatalf("decode body %q: %v", a.Body, err)
	}
	return v
}

// withJSON rewrites fields of a JSON event: each key of set is a
// dot-separated path into the object.
func withJSON(t *testing.T, event []byte, set map[string]any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(event, &m); err != nil {
		t.Fatal(err)
	}
	for path, v := range set {
		keys := strings.Split(path, ".")
		obj := m
		for _, k := range keys[:len(keys)-1] {
			next, ok := obj[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				obj[k] = next
			}
			obj = next
		}
		if v == nil {
			delete(obj, keys[len(keys)-1])
		} else {
			obj[keys[len(keys)-1]] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (l *ordersLambda) unpublished(t *testing.T) int {
	t.Helper()
	var n int
	if err := l.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Every sample event in local/events/orders, on the real binary under the
// emulator against the real servers, gets the answer its kind expects.
func TestLambdaSampleEvents(t *testing.T) {
	l := startOrdersLambda(t, nil)
	recv := receive(t, l.brokerURL)

	var migrated map[string]string
	invokeJSON(t, l.Lambda, readEvent(t, "migrate.json"), &migrated)
	if migrated["migrated"] != "ok" {
		t.Errorf("migrate answered %v", migrated)
	}
	if d, ok := l.InitDuration(); !ok {
		t.Errorf("no Init Duration reported for the cold start:\n%s", l.Logs())
	} else {
		t.Logf("orders Init Duration: %s", d)
	}

	created := map[string]Order{}
	for _, tc := range []struct{ file, customer string }{
		{"apigw-rest-create.json", "rest-customer"},
		{"apigw-http-create.json", "http-api-customer"},
		{"kong-create.json", "kong-customer"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			a := invokeHTTP(t, l.Lambda, readEvent(t, tc.file))
			if a.StatusCode != 201 {
				t.Fatalf("status %d: %s", a.StatusCode, a.Body)
			}
			o := plainJSON[Order](t, a, "application/json")
			if o.CustomerID != tc.customer {
				t.Errorf("customer %q, want %q", o.CustomerID, tc.customer)
			}
			if loc := a.Header("Location"); loc != "/orders/"+o.ID.String() {
				t.Errorf("Location %q for order %s", loc, o.ID)
			}
			created[tc.file] = o
		})
	}
	if t.Failed() {
		return
	}
	if o := created["apigw-rest-create.json"]; o.TotalAmount != 1999 || o.Currency != "BRL" {
		t.Errorf("REST order %+v", o)
	}
	if o := created["apigw-http-create.json"]; o.TotalAmount != 3000 || len(o.Items) != 1 {
		t.Errorf("HTTP API order %+v", o)
	}
	if o := created["kong-create.json"]; o.TotalAmount != 1999 {
		t.Errorf("Kong order (base64 body) %+v", o)
	}
	// Each create was published before its invocation returned.
	recv.byOrder(t, []Order{created["apigw-rest-create.json"], created["apigw-http-create.json"], created["kong-create.json"]}, 5*time.Second)

	t.Run("replayed Idempotency-Key", func(t *testing.T) {
		a := invokeHTTP(t, l.Lambda, readEvent(t, "apigw-rest-create.json"))
		if a.StatusCode != 201 || a.Header("Idempotent-Replayed") != "true" {
			t.Fatalf("replay: status %d, Idempotent-Replayed %q", a.StatusCode, a.Header("Idempotent-Replayed"))
		}
		first := created["apigw-rest-create.json"]
		if o := plainJSON[Order](t, a, "application/json"); o.ID != first.ID {
			t.Errorf("replay answered order %s, first was %s", o.ID, first.ID)
		}
		if loc := a.Header("Location"); loc != "/orders/"+first.ID.String() {
			t.Errorf("replay Location %q", loc)
		}
	})

	t.Run("function-url-list.json", func(t *testing.T) {
		a := invokeHTTP(t, l.Lambda, readEvent(t, "function-url-list.json"))
		if a.StatusCode != 200 {
			t.Fatalf("status %d: %s", a.StatusCode, a.Body)
		}
		page := plainJSON[struct {
			Items []Order `json:"data"`
		}](t, a, "application/json")
		if len(page.Items) != 1 || page.Items[0].ID != created["apigw-http-create.json"].ID {
			t.Errorf("list of http-api-customer: %+v", page.Items)
		}
	})

	t.Run("alb-health.json", func(t *testing.T) {
		a := invokeHTTP(t, l.Lambda, readEvent(t, "alb-health.json"))
		if a.StatusCode != 200 || a.StatusDescription != "200 OK" {
			t.Fatalf("status %d %q: %s", a.StatusCode, a.StatusDescription, a.Body)
		}
		if len(a.MultiValueHeaders) == 0 {
			t.Errorf("a multi-value ALB request is answered without multiValueHeaders: %+v", a)
		}
		h := plainJSON[map[string]any](t, a, "application/json")
		if h["status"] != "ok" {
			t.Errorf("health %v", h)
		}
	})

	t.Run("schedule.json", func(t *testing.T) {
		// An order stored without the publish that follows a create is
		// left for the sweep.
		left := NewOrder("sweep-customer", 500, "BRL", time.Now())
		store := NewStore(l.pool, 1, 1)
		defer store.Close()
		if err := store.CreateOne(context.Background(), left); err != nil {
			t.Fatal(err)
		}
		var res map[string]int64
		invokeJSON(t, l.Lambda, readEvent(t, "schedule.json"), &res)
		if res["published"] != 1 {
			t.Errorf("sweep answered %v, want 1 published", res)
		}
		if _, ok := res["prunedIdempotencyKeys"]; !ok {
			t.Errorf("sweep answered %v, without prunedIdempotencyKeys", res)
		}
		if n := l.unpublished(t); n != 0 {
			t.Errorf("%d outbox rows unpublished after the sweep", n)
		}
		recv.byOrder(t, []Order{left}, 5*time.Second)
	})
}

var _ = uuid.Nil
var _ = fmt.Sprintf
