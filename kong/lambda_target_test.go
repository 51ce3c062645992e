package kong_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	invoicemigrations "invoicing/functions/invoices/migrations"
	ordermigrations "invoicing/functions/orders/migrations"
	"invoicing/kong"
	"invoicing/shared/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// answer is what a client of Kong sees, from either target.
type answer struct {
	status      int
	contentType string
	location    string
	body        map[string]any
}

func decodeBody(t *testing.T, b []byte) map[string]any {
	t.Helper()
	m := map[string]any{}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("answer body is not a JSON object: %q", b)
		}
	}
	// Values that differ between two creates are not compared.
	for _, k := range []string{"id", "createdAt"} {
		if _, ok := m[k]; ok {
			m[k] = "<" + k + ">"
		}
	}
	return m
}

// TestLambdaTargetAnswersLikeTheContainers sends each request twice: over
// HTTP to the server-mode binary (the container target) and, as the event
// Kong's aws-lambda plugin builds for it, to the same binary running as a
// Lambda function under the emulator (the Lambda target). The client must
// not tell the two apart.
func TestLambdaTargetAnswersLikeTheContainers(t *testing.T) {
	brokerURL := testenv.Vhost(t)
	ordersDB, _ := testenv.MigratedDatabase(t, ordermigrations.FS)
	invoicesDB, _ := testenv.MigratedDatabase(t, invoicemigrations.FS)
	bins := map[string]string{
		"orders":   testenv.Binary(t, "invoicing/functions/orders/cmd/orders"),
		"invoices": testenv.Binary(t, "invoicing/functions/invoices/cmd/invoices"),
	}
	env := map[string]map[string]string{
		"orders":   {"DATABASE_URL": ordersDB, "BROKER_URL": brokerURL},
		"invoices": {"DATABASE_URL": invoicesDB, "BROKER_URL": brokerURL},
	}
	servers := map[string]*testenv.Process{}
	functions := map[string]*testenv.Lambda{}
	for svc, bin := range bins {
		servers[svc] = testenv.Start(t, bin, env[svc])
		functions[svc] = testenv.StartLambda(t, bin, env[svc])
	}
	rendered, err := kong.Render(kong.Lambda("us-east-1", "orders-fn", "invoices-fn"))
	if err != nil {
		t.Fatal(err)
	}
	kf, err := parseKong(t, rendered)
	if err != nil {
		t.Fatal(err)
	}
	gateway := newGateway(t, kf)

	big := `{"customerId":"` + strings.Repeat("x", 1<<20) + `","totalAmount":1}`
	cases := []struct {
		name, method, path, body, contentType string
		headers                               map[string]string
	}{
		{"create", "POST", "/orders", `{"customerId":"kong-lambda","totalAmount":1999,"currency":"BRL"}`, "application/json", nil},
		{"create with items", "POST", "/orders", `{"customerId":"kong-lambda","items":[{"sku":"é-1","quantity":2,"unitPrice":5}]}`, "application/json", nil},
		{"create with a CJK customer", "POST", "/orders", `{"customerId":"` + strings.Repeat("注", 64) + `","totalAmount":1}`, "application/json; charset=utf-8", nil},
		{"replayed idempotent create", "POST", "/orders", `{"customerId":"kong-lambda","totalAmount":5}`, "application/json", map[string]string{"Idempotency-Key": "kong-lambda-key"}},
		{"malformed JSON", "POST", "/orders", `{"customerId":`, "application/json", nil},
		{"unknown field", "POST", "/orders", `{"customerId":"a","totalAmount":1,"discount":5}`, "application/json", nil},
		{"wrong content type", "POST", "/orders", `{"customerId":"a","totalAmount":1}`, "text/plain", nil},
		{"body over the limit", "POST", "/orders", big, "application/json", nil},
		{"invalid UTF-8", "POST", "/orders", "{\"customerId\":\"a\xff\",\"totalAmount\":1}", "application/json", nil},
		{"list", "GET", "/orders?customerId=nobody&limit=5", "", "", nil},
		{"bad limit", "GET", "/orders?limit=1000", "", "", nil},
		{"NUL in a filter", "GET", "/orders?customerId=a%00b", "", "", nil},
		{"id not a UUID", "GET", "/orders/42", "", "", nil},
		{"unknown order", "GET", "/orders/0196f3c0-0000-7000-8000-000000000000", "", "", nil},
		{"invoices list", "GET", "/invoices?customerId=nobody", "", "", nil},
		{"invoices bad order id", "GET", "/invoices?orderId=42", "", "", nil},
		{"unknown invoice", "GET", "/invoices/0196f3c0-0000-7000-8000-000000000000", "", "", nil},
		{"orders health", "GET", "/health/orders", "", "", nil},
		{"invoices health", "GET", "/health/invoices", "", "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			newReq := func() *http.Request {
				r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
				if tc.contentType != "" {
					r.Header.Set("Content-Type", tc.contentType)
				}
				for k, v := range tc.headers {
					r.Header.Set(k, v)
				}
				return r
			}
			path, _, _ := strings.Cut(tc.path, "?")
			routed, ok := gateway.route(t, tc.method, path)
			if !ok {
				t.Fatalf("Kong routes no %s %s", tc.method, tc.path)
			}
			svc := routed.backend
			// The container target, as Kong would proxy it.
			r := newReq()
			upstream := servers[svc].URL + routed.upstream
			if r.URL.RawQuery != "" {
				upstream += "?" + r.URL.RawQuery
			}
			req, _ := http.NewRequest(tc.method, upstream, strings.NewReader(tc.body))
			req.Header = r.Header.Clone()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			server := answer{resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Location"), decodeBody(t, b)}

			// The Lambda target: the event Kong builds, sent to the function.
			r = newReq()
			r.URL.Path = routed.upstream
			evt, err := kong.KongLambdaEvent(r, routed.route.Paths[0], "kong-request-1", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			payload, _ := json.Marshal(evt)
			out, err := functions[svc].Invoke(payload)
			if err != nil {
				t.Fatal(err)
			}
			var lr events.APIGatewayProxyResponse
			if err := json.Unmarshal(out, &lr); err != nil || lr.StatusCode == 0 {
				t.Fatalf("function answered %s", out)
			}
			body := []byte(lr.Body)
			if lr.IsBase64Encoded {
				if body, err = base64.StdEncoding.DecodeString(lr.Body); err != nil {
					t.Fatal(err)
				}
			}
			header := http.Header{}
			for k, vs := range lr.MultiValueHeaders {
				for _, v := range vs {
					header.Add(k, v)
				}
			}
			for k, v := range lr.Headers {
				header.Set(k, v)
			}
			lambda := answer{lr.StatusCode, header.Get("Content-Type"), header.Get("Location"), decodeBody(t, body)}

			if server.status != lambda.status || server.contentType != lambda.contentType ||
				(server.location == "") != (lambda.location == "") {
				t.Errorf("container target: %d %q Location %q; Lambda target: %d %q Location %q",
					server.status, server.contentType, server.location, lambda.status, lambda.contentType, lambda.location)
			}
			sj, _ := json.Marshal(server.body)
			lj, _ := json.Marshal(lambda.body)
			if string(sj) != string(lj) {
				t.Errorf("bodies differ:\ncontainer target %s\nLambda target    %s", sj, lj)
			}
		})
	}
}
