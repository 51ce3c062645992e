package orders

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-lambda-go/events"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/functions/orders/migrations"
	"invoicing/kong"
	"invoicing/shared/testenv"
	"invoicing/shared/web"
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

// httpRequest is one request as a client sends it; events builds the event
// each kind of front end would hand the function for it.
type httpRequest struct {
	method, target, body string // target: escaped path and query, as on the wire
	headers              map[string]string
}

func (r httpRequest) split(t *testing.T) (rawPath, rawQuery string, decodedPath string, query url.Values) {
	t.Helper()
	u, err := url.ParseRequestURI(r.target)
	if err != nil {
		t.Fatalf("target %q: %v", r.target, err)
	}
	q, _ := url.ParseQuery(u.RawQuery)
	return u.EscapedPath(), u.RawQuery, u.Path, q
}

func bodyField(body string) (string, bool) {
	if utf8.ValidString(body) {
		return body, false
	}
	return base64.StdEncoding.EncodeToString([]byte(body)), true
}

// restEvent is what API Gateway's REST API (a {proxy+} resource on stage
// "prod") sends: the path and the query parameters decoded.
func restEvent(t *testing.T, r httpRequest) []byte {
	_, _, path, query := r.split(t)
	single, multi := map[string]string{}, map[string][]string{}
	for k, v := range r.headers {
		single[k], multi[k] = v, []string{v}
	}
	qs, mqs := map[string]string{}, map[string][]string{}
	for k, vs := range query {
		qs[k], mqs[k] = vs[len(vs)-1], vs
	}
	body, b64 := bodyField(r.body)
	e := events.APIGatewayProxyRequest{
		Resource: "/{proxy+}", Path: path, HTTPMethod: r.method,
		Headers: single, MultiValueHeaders: multi,
		QueryStringParameters: qs, MultiValueQueryStringParameters: mqs,
		PathParameters: map[string]string{"proxy": strings.TrimPrefix(path, "/")},
		RequestContext: events.APIGatewayProxyRequestContext{
			AccountID: "123456789012", APIID: "abc123", Stage: "prod", Path: "/prod" + path,
			ResourcePath: "/{proxy+}", HTTPMethod: r.method, DomainName: "abc123.execute-api.us-east-1.amazonaws.com",
		},
		Body: body, IsBase64Encoded: b64,
	}
	b, _ := json.Marshal(e)
	return b
}

// httpAPIEvent is what an HTTP API ($default route and stage) sends.
func httpAPIEvent(t *testing.T, r httpRequest) []byte {
	rawPath, rawQuery, path, query := r.split(t)
	headers := map[string]string{}
	for k, v := range r.headers {
		headers[strings.ToLower(k)] = v
	}
	qs := map[string]string{}
	for k, vs := range query {
		qs[k] = strings.Join(vs, ",")
	}
	body, b64 := bodyField(r.body)
	e := events.APIGatewayV2HTTPRequest{
		Version: "2.0", RouteKey: "$default", RawPath: rawPath, RawQueryString: rawQuery,
		Headers: headers, QueryStringParameters: qs,
		RequestContext: events.APIGatewayV2HTTPRequestContext{
			AccountID: "123456789012", APIID: "abc123", Stage: "$default", RouteKey: "$default",
			DomainName: "abc123.execute-api.us-east-1.amazonaws.com",
			HTTP:       events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: r.method, Path: path, Protocol: "HTTP/1.1"},
		},
		Body: body, IsBase64Encoded: b64,
	}
	b, _ := json.Marshal(e)
	return b
}

// albEvent is what an ALB target group with multi-value headers sends: the
// path and the query parameters as the client sent them, not decoded.
func albEvent(t *testing.T, r httpRequest) []byte {
	rawPath, rawQuery, _, _ := r.split(t)
	headers := map[string][]string{}
	for k, v := range r.headers {
		headers[strings.ToLower(k)] = []string{v}
	}
	query := map[string][]string{}
	for _, kv := range strings.Split(rawQuery, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		query[k] = append(query[k], v)
	}
	body, b64 := bodyField(r.body)
	e := events.ALBTargetGroupRequest{
		HTTPMethod: r.method, Path: rawPath, MultiValueQueryStringParameters: query, MultiValueHeaders: headers,
		RequestContext: events.ALBTargetGroupRequestContext{ELB: events.ELBContext{TargetGroupArn: "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/orders/0123456789abcdef"}},
		Body:           body, IsBase64Encoded: b64,
	}
	b, _ := json.Marshal(e)
	return b
}

// kongEvent is what Kong's aws-lambda plugin sends (base64 body), as
// package kong reproduces it.
func kongEvent(t *testing.T, r httpRequest) []byte {
	req := httptest.NewRequest(r.method, r.target, strings.NewReader(r.body))
	for k, v := range r.headers {
		req.Header.Set(k, v)
	}
	req.Host = "localhost:8000"
	e, err := kong.KongLambdaEvent(req, "/orders", "kong-request", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(e)
	return b
}

// The server's bad-input answers come back the same through every HTTP
// event kind: same status, same problem document.
func TestLambdaBadInputMatchesServerMode(t *testing.T) {
	l := startOrdersLambda(t, nil)
	server := testenv.Start(t, testenv.Binary(t, ordersCmd), map[string]string{
		"DATABASE_URL": testenv.Database(t), "BROKER_URL": testenv.Vhost(t),
	})
	jsonType := map[string]string{"Content-Type": "application/json"}
	big := `{"customerId":"` + strings.Repeat("x", 1<<20) + `","totalAmount":1}`
	cases := []struct {
		name   string
		req    httpRequest
		status int
	}{
		{"malformed JSON", httpRequest{"POST", "/orders", `{"customerId":`, jsonType}, 400},
		{"unknown field", httpRequest{"POST", "/orders", `{"customerId":"a","totalAmount":1,"discount":5}`, jsonType}, 400},
		{"field errors", httpRequest{"POST", "/orders", `{"customerId":"","totalAmount":0,"currency":"brl"}`, jsonType}, 400},
		{"invalid UTF-8", httpRequest{"POST", "/orders", "{\"customerId\":\"a\xff\",\"totalAmount\":1}", jsonType}, 400},
		{"wrong content type", httpRequest{"POST", "/orders", `{"customerId":"a","totalAmount":1}`, map[string]string{"Content-Type": "text/plain"}}, 415},
		{"no content type", httpRequest{"POST", "/orders", `{"customerId":"a","totalAmount":1}`, nil}, 415},
		{"body over the limit", httpRequest{"POST", "/orders", big, jsonType}, 413},
		{"unknown route", httpRequest{"GET", "/nope", "", nil}, 404},
		{"wrong method", httpRequest{"DELETE", "/orders", "", nil}, 405},
		{"wrong method on id", httpRequest{"POST", "/orders/0196f3c0-0000-7000-8000-000000000000", "", nil}, 405},
		{"bad path id", httpRequest{"GET", "/orders/42", "", nil}, 400},
		{"NUL path id", httpRequest{"GET", "/orders/%00", "", nil}, 400},
		{"unknown id", httpRequest{"GET", "/orders/0196f3c0-0000-7000-8000-000000000000", "", nil}, 404},
		{"NUL in a query filter", httpRequest{"GET", "/orders?customerId=a%00b", "", nil}, 400},
		{"bad limit", httpRequest{"GET", "/orders?limit=1000", "", nil}, 400},
		{"bad cursor", httpRequest{"GET", "/orders?cursor=!!", "", nil}, 400},
		{"empty idempotency key", httpRequest{"POST", "/orders", `{"customerId":"a","totalAmount":1}`, map[string]string{"Content-Type": "application/json", "Idempotency-Key": " "}}, 400},
	}
	kinds := []struct {
		name  string
		event func(*testing.T, httpRequest) []byte
	}{{"REST", restEvent}, {"HTTP API", httpAPIEvent}, {"ALB", albEvent}, {"Kong", kongEvent}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.req.method, server.URL+tc.req.target, strings.NewReader(tc.req.body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.req.headers {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("server mode answered %d, want %d: %s", resp.StatusCode, tc.status, want)
			}
			wantProblem := decodeProblemBody(t, want)
			for _, k := range kinds {
				a, err := l.InvokeHTTP(k.event(t, tc.req))
				if err != nil {
					t.Errorf("%s: %v", k.name, err)
					continue
				}
				if a.StatusCode != tc.status {
					t.Errorf("%s: status %d, want %d: %s", k.name, a.StatusCode, tc.status, a.Body)
					continue
				}
				if ct := a.Header("Content-Type"); ct != "application/problem+json" {
					t.Errorf("%s: Content-Type %q", k.name, ct)
				}
				if a.IsBase64Encoded {
					t.Errorf("%s: problem body base64-encoded", k.name)
				}
				if got := decodeProblemBody(t, []byte(a.Body)); !reflect.DeepEqual(got, wantProblem) {
					t.Errorf("%s: problem\n%+v\nwant (server mode)\n%+v", k.name, got, wantProblem)
				}
			}
		})
	}
	if n, _ := countRows(l.pool, "orders"); n != 0 {
		t.Errorf("%d orders stored from bad input", n)
	}
}

// decodeProblemBody keeps what both modes must agree on.
func decodeProblemBody(t *testing.T, b []byte) web.Error {
	t.Helper()
	var p web.Error
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("problem %q: %v", b, err)
	}
	return p
}

func countRows(pool *pgxpool.Pool, table string) (int, error) {
	var n int
	err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n)
	return n, err
}

// awsSample reads one of the sample events that ship with aws-lambda-go.
func awsSample(t *testing.T, name string) []byte {
	t.Helper()
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/aws/aws-lambda-go").Output()
	if err != nil {
		t.Fatalf("find aws-lambda-go: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(dir)), "events", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// AWS's own sample events, pointed at our routes but otherwise in their
// real shape (multi-value headers and query strings, cookies, a stage,
// path parameters of a {proxy+} resource, headers with commas).
func TestLambdaAWSSampleEvents(t *testing.T) {
	l := startOrdersLambda(t, nil)
	body := func(customer string) string {
		return fmt.Sprintf(`{"customerId":%q,"totalAmount":1250,"currency":"BRL"}`, customer)
	}

	// apigw-request.json: resource /{proxy+} on stage testStage, with a
	// query string, stage variables and an identity.
	rest := invokeHTTP(t, l.Lambda, withJSON(t, awsSample(t, "apigw-request.json"), map[string]any{
		"path": "/orders", "pathParameters": map[string]string{"proxy": "orders"},
		"requestContext.path": "/testStage/orders", "body": body("aws-rest"),
	}))
	if rest.StatusCode != 201 {
		t.Fatalf("apigw-request.json POST /orders: %d %s", rest.StatusCode, rest.Body)
	}
	o := plainJSON[Order](t, rest, "application/json")
	if rest.Header("Location") != "/orders/"+o.ID.String() || o.CustomerID != "aws-rest" {
		t.Errorf("apigw-request.json: Location %q, order %+v", rest.Header("Location"), o)
	}
	// The same sample as GET /orders/{id} behind a base path mapping: the
	// router sees the resource filled in, not "/v1/...".
	get := invokeHTTP(t, l.Lambda, withJSON(t, awsSample(t, "apigw-request.json"), map[string]any{
		"httpMethod": "GET", "resource": "/orders/{id}", "path": "/v1/orders/" + o.ID.String(),
		"pathParameters": map[string]string{"id": o.ID.String()}, "requestContext.resourcePath": "/orders/{id}",
		"body": nil,
	}))
	if got := plainJSON[Order](t, get, "application/json"); get.StatusCode != 200 || got.ID != o.ID {
		t.Errorf("apigw-request.json GET /orders/{id}: %d %s", get.StatusCode, get.Body)
	}

	// lambda-urls-request.json: a Function URL POST with cookies, a header
	// holding "value1,value2" and a repeated query parameter.
	furl := withJSON(t, awsSample(t, "lambda-urls-request.json"), map[string]any{
		"rawPath": "/orders", "requestContext.http.path": "/orders", "body": body("aws-url"),
		"headers.content-type": "application/json", "headers.idempotency-key": "aws-url-1",
	})
	created := invokeHTTP(t, l.Lambda, furl)
	if created.StatusCode != 201 {
		t.Fatalf("lambda-urls-request.json: %d %s", created.StatusCode, created.Body)
	}
	urlOrder := plainJSON[Order](t, created, "application/json")
	replay := invokeHTTP(t, l.Lambda, furl)
	if replay.StatusCode != 201 || replay.Header("Idempotent-Replayed") != "true" || plainJSON[Order](t, replay, "application/json").ID != urlOrder.ID {
		t.Errorf("lambda-urls-request.json replay: %d %v %s", replay.StatusCode, replay.Headers, replay.Body)
	}

	// apigw-v2-request-no-authorizer.json: GET on the $default route, then
	// the same on a named stage whose prefix is in rawPath.
	list := func(name string, a testenv.HTTPAnswer, want uuid.UUID) {
		t.Helper()
		if a.StatusCode != 200 {
			t.Errorf("%s: %d %s", name, a.StatusCode, a.Body)
			return
		}
		page := plainJSON[struct {
			Data []Order `json:"data"`
		}](t, a, "application/json")
		if len(page.Data) != 1 || page.Data[0].ID != want {
			t.Errorf("%s: %+v, want order %s", name, page.Data, want)
		}
	}
	v2 := awsSample(t, "apigw-v2-request-no-authorizer.json")
	list("apigw-v2-request-no-authorizer.json", invokeHTTP(t, l.Lambda, withJSON(t, v2, map[string]any{
		"rawPath": "/orders", "requestContext.http.path": "/orders",
		"rawQueryString": "customerId=aws-url&limit=1", "queryStringParameters": map[string]string{"customerId": "aws-url", "limit": "1"},
	})), urlOrder.ID)
	list("apigw-v2-request-no-authorizer.json on stage prod", invokeHTTP(t, l.Lambda, withJSON(t, v2, map[string]any{
		"rawPath": "/prod/orders", "requestContext.http.path": "/prod/orders", "requestContext.stage": "prod",
		"rawQueryString": "customerId=aws-rest", "queryStringParameters": map[string]string{"customerId": "aws-rest"},
	})), o.ID)

	// alb-lambda-target-request-multivalue-headers.json: GET with
	// multi-value query parameters, one of them percent-encoded as the
	// client sent it (ALB does not decode).
	alb := invokeHTTP(t, l.Lambda, withJSON(t, awsSample(t, "alb-lambda-target-request-multivalue-headers.json"), map[string]any{
		"path": "/orders", "multiValueQueryStringParameters": map[string][]string{"customerId": {"aws%2Drest"}, "key": {"hello"}},
	}))
	list("alb-lambda-target-request-multivalue-headers.json", alb, o.ID)
	if alb.StatusDescription != "200 OK" || alb.MultiValueHeaders["Content-Type"] == nil {
		t.Errorf("ALB answer: %q, headers %v", alb.StatusDescription, alb.MultiValueHeaders)
	}
}

// An event the function does not serve fails the invocation with an error
// that says what arrived.
func TestLambdaUnknownEventFails(t *testing.T) {
	l := startOrdersLambda(t, nil)
	s3 := `{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}`
	_, err := l.InvokeOK([]byte(s3))
	var fe *testenv.FunctionError
	if !errors.As(err, &fe) {
		t.Fatalf("S3 event: %v, want a failed invocation", err)
	}
	if !strings.Contains(fe.Message, "unrecognised event") || !strings.Contains(fe.Message, "Records") {
		t.Errorf("error %q does not say what arrived", fe.Message)
	}
	// The function still serves what it knows.
	if a := invokeHTTP(t, l.Lambda, readEvent(t, "alb-health.json")); a.StatusCode != 200 {
		t.Errorf("after an unknown event: %d %s", a.StatusCode, a.Body)
	}
}

// A container is frozen between invocations, and the connections it holds
// may be dead when it thaws: the next invocation still works.
func TestLambdaFrozenContainerReconnects(t *testing.T) {
	dbURL := testenv.Database(t)
	brokerURL := testenv.Vhost(t)
	dbu, _ := url.Parse(dbURL)
	bu, _ := url.Parse(brokerURL)
	dbProxy := testenv.NewProxy(t, dbu.Host)
	brokerProxy := testenv.NewProxy(t, bu.Host)
	l := startOrdersLambda(t, map[string]string{
		"DATABASE_URL": proxiedURL(t, dbURL, dbProxy), "BROKER_URL": proxiedURL(t, brokerURL, brokerProxy),
	})
	var migrated map[string]string
	invokeJSON(t, l.Lambda, readEvent(t, "migrate.json"), &migrated)
	recv := receive(t, brokerURL)
	post := func(customer string) Order {
		t.Helper()
		a := invokeHTTP(t, l.Lambda, withJSON(t, readEvent(t, "apigw-http-create.json"), map[string]any{
			"body": fmt.Sprintf(`{"customerId":%q,"totalAmount":100}`, customer),
		}))
		if a.StatusCode != 201 {
			t.Fatalf("POST %s: %d %s", customer, a.StatusCode, a.Body)
		}
		return plainJSON[Order](t, a, "application/json")
	}
	first := post("before")
	recv.byOrder(t, []Order{first}, 5*time.Second)

	brokerProxy.Cut()
	brokerProxy.Restore()
	second := post("after-broker-cut")
	recv.byOrder(t, []Order{second}, 5*time.Second)
	if n, _ := countRows(l.pool, "outbox"); n != 0 {
		t.Errorf("%d events left in the outbox after the broker came back", n)
	}

	dbProxy.Cut()
	dbProxy.Restore()
	third := post("after-database-cut")
	recv.byOrder(t, []Order{third}, 5*time.Second)
}

// With telemetry on, an invocation's spans (resource: deployment.mode
// lambda and the faas attributes) are exported before it returns, not at
// the next batch timeout.
func TestLambdaTelemetryIsFlushedPerInvocation(t *testing.T) {
	recv := testenv.NewOTLPReceiver(t)
	l := startOrdersLambda(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": recv.URL,
		"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
		"OTEL_BSP_SCHEDULE_DELAY":     "600000", // only a flush sends spans
		"OTEL_METRICS_EXPORTER":       "none",
		"AWS_LAMBDA_FUNCTION_NAME":    "orders-fn",
		"AWS_REGION":                  "us-east-1",
	})
	a := invokeHTTP(t, l.Lambda, readEvent(t, "apigw-http-create.json"))
	if a.StatusCode != 201 {
		t.Fatalf("POST: %d %s", a.StatusCode, a.Body)
	}
	// No waiting: the invocation returned, so its spans were received.
	spans := recv.Spans()
	var invocation, server *testenv.Span
	for i, s := range spans {
		switch {
		case s.ParentID() == "" && invocation == nil:
			invocation = &spans[i]
		case s.Attr("http.route") == "/orders" || strings.HasPrefix(s.Name, "POST"):
			server = &spans[i]
		}
	}
	if invocation == nil || server == nil {
		names := []string{}
		for _, s := range spans {
			names = append(names, s.Name)
		}
		t.Fatalf("spans when the invocation returned: %v; want the invocation and the POST", names)
	}
	if invocation.TraceID() != server.TraceID() {
		t.Errorf("the POST span is not in the invocation's trace")
	}
	res := invocation.Resource
	for k, want := range map[string]string{"deployment.mode": "lambda", "service.name": "orders", "cloud.provider": "aws", "faas.name": "orders-fn"} {
		if res[k] != want {
			t.Errorf("resource %s = %q, want %q (resource %v)", k, res[k], want, res)
		}
	}
	if invocation.Attr("faas.invocation_id") == "" && invocation.Attr("faas.execution") == "" {
		t.Errorf("invocation span %q has no invocation id: %v", invocation.Name, invocation.Attributes)
	}
}
