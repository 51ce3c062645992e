package kong_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"invoicing/kong"
)

func TestKongLambdaEventShape(t *testing.T) {
	body := `{"customerId":"c-1","totalAmount":1999,"currency":"BRL"}`
	r := httptest.NewRequest(http.MethodPost, "http://api.example.com/orders?tag=a&tag=b&limit=5", strings.NewReader(body))
	r.RemoteAddr = "203.0.113.9:51234"
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Idempotency-Key", "k-1")
	r.Header.Add("X-Forwarded-For", "198.51.100.1")
	r.Header.Add("X-Forwarded-For", "203.0.113.9")
	r.Header.Set("User-Agent", "curl/8")
	at := time.Date(2026, 11, 27, 12, 34, 56, 0, time.UTC)

	ev, err := kong.KongLambdaEvent(r, "~/orders$", "req-1", at)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(ev)
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"resource", "path", "httpMethod", "headers", "multiValueHeaders", "queryStringParameters",
		"multiValueQueryStringParameters", "pathParameters", "requestContext", "body", "isBase64Encoded"} {
		if _, ok := got[k]; !ok {
			t.Errorf("event lacks %q: %s", k, b)
		}
	}
	if ev.HTTPMethod != "POST" || ev.Path != "/orders" || ev.Resource != "~/orders$" || !ev.IsBase64Encoded {
		t.Errorf("event = %+v", ev)
	}
	if dec, _ := base64.StdEncoding.DecodeString(ev.Body); string(dec) != body {
		t.Errorf("body decodes to %q", dec)
	}
	if ev.Headers["idempotency-key"] != "k-1" || ev.Headers["x-forwarded-for"] != "203.0.113.9" ||
		len(ev.MultiValueHeaders["x-forwarded-for"]) != 2 || ev.Headers["host"] != "api.example.com" {
		t.Errorf("headers = %v / %v", ev.Headers, ev.MultiValueHeaders)
	}
	if ev.QueryStringParameters["tag"] != "b" || len(ev.MultiValueQueryStringParameters["tag"]) != 2 || ev.QueryStringParameters["limit"] != "5" {
		t.Errorf("query = %v / %v", ev.QueryStringParameters, ev.MultiValueQueryStringParameters)
	}
	rc := ev.RequestContext
	if rc.HTTPMethod != "POST" || rc.Path != "/orders" || rc.Protocol != "HTTP/1.1" || rc.DomainName != "api.example.com" ||
		rc.Identity.SourceIP != "203.0.113.9" || rc.Identity.UserAgent != "curl/8" || rc.RequestID != "req-1" ||
		rc.RequestTime != "27/Nov/2026:12:34:56 +0000" || rc.RequestTimeEpoch != at.UnixMilli() {
		t.Errorf("requestContext = %+v", rc)
	}

	get := httptest.NewRequest(http.MethodGet, "/orders/abc", nil)
	ev, err = kong.KongLambdaEvent(get, "/orders/", "req-2", at)
	if err != nil || ev.Body != "" || ev.IsBase64Encoded || ev.QueryStringParameters == nil || ev.PathParameters == nil {
		t.Errorf("GET event = %+v, %v; want empty body not base64, empty maps not null", ev, err)
	}
}
