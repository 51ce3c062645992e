package runtime

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/aws/aws-lambda-go/events"
)

func TestKind(t *testing.T) {
	cases := map[string]string{
		`{"httpMethod":"GET","path":"/orders","requestContext":{"apiId":"a","stage":"prod"}}`:                    KindREST,
		`{"httpMethod":"POST","path":"/orders","isBase64Encoded":true,"body":"e30="}`:                            KindREST, // Kong aws-lambda
		`{"version":"2.0","routeKey":"$default","rawPath":"/orders","requestContext":{"http":{"method":"GET"}}}`: KindHTTPAPI,
		`{"httpMethod":"GET","path":"/orders","requestContext":{"elb":{"targetGroupArn":"arn"}}}`:                KindALB,
		`{"source":"aws.events","detail-type":"Scheduled Event","detail":{}}`:                                    KindSchedule,
		`{"eventSource":"aws:rmq","rmqMessagesByQueue":{}}`:                                                      KindRabbitMQ,
		`{"command":"migrate"}`:                              KindMigrate,
		`{"source":"aws.s3","detail-type":"Object Created"}`: "",
		`{"version":"2.0"}`:                                  "",
		`[1,2]`:                                              "",
		`not json`:                                           "",
	}
	for payload, want := range cases {
		if got := Kind([]byte(payload)); got != want {
			t.Errorf("Kind(%s) = %q, want %q", payload, got, want)
		}
	}
}

func TestRESTPath(t *testing.T) {
	cases := []struct {
		name string
		e    events.APIGatewayProxyRequest
		want string
	}{
		{"base path mapping, templated resource", events.APIGatewayProxyRequest{
			Path: "/v1/orders/42", Resource: "/orders/{id}", PathParameters: map[string]string{"id": "42"},
			RequestContext: events.APIGatewayProxyRequestContext{APIID: "abc"}}, "/orders/42"},
		{"greedy proxy resource", events.APIGatewayProxyRequest{
			Path: "/api/orders/42", Resource: "/{proxy+}", PathParameters: map[string]string{"proxy": "orders/42"},
			RequestContext: events.APIGatewayProxyRequestContext{APIID: "abc"}}, "/orders/42"},
		{"plain resource", events.APIGatewayProxyRequest{Path: "/orders", Resource: "/orders",
			RequestContext: events.APIGatewayProxyRequestContext{APIID: "abc"}}, "/orders"},
		{"kong: resource is the route prefix", events.APIGatewayProxyRequest{Path: "/orders/42", Resource: "/orders"}, "/orders/42"},
		{"missing parameter keeps the path", events.APIGatewayProxyRequest{Path: "/orders/42", Resource: "/orders/{id}",
			RequestContext: events.APIGatewayProxyRequestContext{APIID: "abc"}}, "/orders/42"},
	}
	for _, tc := range cases {
		if got := restPath(tc.e); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestHTTPAPIPath(t *testing.T) {
	stage := func(s string) events.APIGatewayV2HTTPRequestContext {
		return events.APIGatewayV2HTTPRequestContext{Stage: s}
	}
	cases := []struct {
		name string
		e    events.APIGatewayV2HTTPRequest
		want string
	}{
		{"default stage", events.APIGatewayV2HTTPRequest{RouteKey: "$default", RawPath: "/orders", RequestContext: stage("$default")}, "/orders"},
		{"named stage prefix", events.APIGatewayV2HTTPRequest{RouteKey: "$default", RawPath: "/prod/orders", RequestContext: stage("prod")}, "/orders"},
		{"stage name is only a prefix of a segment", events.APIGatewayV2HTTPRequest{RouteKey: "$default", RawPath: "/production/x", RequestContext: stage("prod")}, "/production/x"},
		{"templated route", events.APIGatewayV2HTTPRequest{RouteKey: "GET /orders/{id}", RawPath: "/prod/v1/orders/7",
			PathParameters: map[string]string{"id": "7"}, RequestContext: stage("prod")}, "/orders/7"},
		{"function url", events.APIGatewayV2HTTPRequest{RouteKey: "$default", RawPath: "/invoices"}, "/invoices"},
	}
	for _, tc := range cases {
		if got := httpAPIPath(tc.e); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestAmazonMQHeaders(t *testing.T) {
	h := amazonMQHeaders(map[string]any{
		"traceparent": map[string]any{"bytes": []any{float64('0'), float64('0'), float64('-')}},
		"n":           float64(10),
	})
	if h["traceparent"] != "00-" || h["n"] != float64(10) {
		t.Errorf("headers = %#v", h)
	}
}

// echo answers with what the router would see: the query and the
// Idempotency-Key header lines.
func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"query": r.URL.Query(), "idempotencyKey": r.Header.Values("Idempotency-Key"),
		})
	})
}

func invokeEcho(t *testing.T, payload string) map[string]any {
	t.Helper()
	l := newLambdaHandler(Handlers{HTTP: echoHandler()}, nil)
	out, err := l.Invoke(context.Background(), json.RawMessage(payload))
	if err != nil {
		t.Fatalf("invoke: %v", err)
	}
	var body string
	switch r := out.(type) {
	case events.APIGatewayProxyResponse:
		body = r.Body
	case events.APIGatewayV2HTTPResponse:
		body = r.Body
	default:
		t.Fatalf("answer %T", out)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	return m
}

// Kong sends ?flag (no value) as JSON true; the request must still be served.
func TestKongBareQueryFlag(t *testing.T) {
	m := invokeEcho(t, `{"httpMethod":"GET","path":"/orders","headers":{},
		"queryStringParameters":{"flag":true,"customerId":"c"},
		"multiValueQueryStringParameters":{"flag":[true],"customerId":["c"]}}`)
	q, _ := json.Marshal(m["query"])
	if string(q) != `{"customerId":["c"],"flag":[""]}` {
		t.Errorf("query = %s", q)
	}
}

// An HTTP API header reaches the API as sent, not split at its commas.
func TestHTTPAPIHeaderKeptWhole(t *testing.T) {
	m := invokeEcho(t, `{"version":"2.0","routeKey":"$default","rawPath":"/orders",
		"headers":{"idempotency-key":"a, b"},"requestContext":{"http":{"method":"GET","path":"/orders"}}}`)
	k, _ := json.Marshal(m["idempotencyKey"])
	if string(k) != `["a, b"]` {
		t.Errorf("Idempotency-Key lines = %s", k)
	}
}
