package runtime

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/awslabs/aws-lambda-go-api-proxy/httpadapter"
)

// Message is one broker message handed to a Lambda function by an event
// source mapping (Amazon MQ for RabbitMQ).
type Message struct {
	MessageID   string
	Type        string
	Headers     map[string]any
	Redelivered bool
	Body        []byte
}

// Handlers is what a service serves. The same values serve both modes: a
// server runs HTTP on a port and the Workers in the background; a Lambda
// function answers each invocation with HTTP, Scheduled or Messages,
// according to the shape of the event.
type Handlers struct {
	HTTP http.Handler
	// Workers run for the life of a server process (the relay loop, the
	// consumer, periodic pruning). They never run in Lambda, where the
	// process is frozen between invocations.
	Workers []Worker
	// Scheduled does one bounded round of background work for a scheduled
	// (EventBridge) invocation and returns a summary; it must return
	// before ctx's deadline.
	Scheduled func(ctx context.Context) (any, error)
	// Messages processes broker messages delivered by an event source
	// mapping. An error fails the invocation, so the whole batch comes again.
	Messages func(ctx context.Context, msgs []Message) error
	// Metrics registers metric callbacks that query the database or the
	// broker at every collection; server mode only, since a frozen Lambda
	// container cannot answer them.
	Metrics func() error
	// AfterHTTP, when set, runs in Lambda mode after each HTTP answer was
	// produced and before the invocation returns (the orders service
	// publishes the events its request stored).
	AfterHTTP func(ctx context.Context, r *http.Request, status int)
}

// Event kinds an invocation can carry.
const (
	KindREST      = "apigateway-rest" // API Gateway REST (payload 1.0), Kong's aws-lambda plugin
	KindHTTPAPI   = "apigateway-http" // API Gateway HTTP API and Function URLs (payload 2.0)
	KindALB       = "alb"
	KindSchedule  = "schedule"
	KindRabbitMQ  = "rabbitmq"
	KindMigrate   = "migrate"
	kindUnknown   = ""
	commandMarker = "command"
)

// probe has the fields that tell event shapes apart.
type probe struct {
	Version        string `json:"version"`
	HTTPMethod     string `json:"httpMethod"`
	Source         string `json:"source"`
	DetailType     string `json:"detail-type"`
	EventSource    string `json:"eventSource"`
	Command        string `json:"command"`
	RequestContext struct {
		ELB  json.RawMessage `json:"elb"`
		HTTP json.RawMessage `json:"http"`
	} `json:"requestContext"`
}

// Kind names the kind of event payload is, or "" when it is none we serve.
func Kind(payload []byte) string {
	var p probe
	if err := json.Unmarshal(payload, &p); err != nil {
		return kindUnknown
	}
	switch {
	case len(p.RequestContext.ELB) > 0 && p.HTTPMethod != "":
		return KindALB
	case p.Version == "2.0" && len(p.RequestContext.HTTP) > 0:
		return KindHTTPAPI
	case p.HTTPMethod != "":
		return KindREST
	case p.Source == "aws.events" && p.DetailType == "Scheduled Event":
		return KindSchedule
	case p.EventSource == "aws:rmq":
		return KindRabbitMQ
	case p.Command == CommandMigrate:
		return KindMigrate
	}
	return kindUnknown
}

// lambdaHandler answers invocations for one service.
type lambdaHandler struct {
	h       Handlers
	migrate func(ctx context.Context) error
	rest    *httpadapter.HandlerAdapter
	v2      *httpadapter.HandlerAdapterV2
	alb     *httpadapter.HandlerAdapterALB
}

func newLambdaHandler(h Handlers, migrate func(context.Context) error) *lambdaHandler {
	l := &lambdaHandler{h: h, migrate: migrate}
	if h.HTTP != nil {
		after := afterHTTP(h.HTTP, h.AfterHTTP)
		l.rest = httpadapter.New(after)
		l.v2 = httpadapter.NewV2(restoreHeaders(after))
		l.alb = httpadapter.NewALB(after)
	}
	return l
}

// v2HeadersKey carries a payload 2.0 event's headers to restoreHeaders.
type v2HeadersKey struct{}

// restoreHeaders gives the handler each header of a payload 2.0 event as
// API Gateway sent it. The proxy splits every header it does not know to
// be single-valued at its commas, so "Idempotency-Key: a,b" would reach the
// API as two keys, which a server never sees from one header line.
func restoreHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h, ok := r.Context().Value(v2HeadersKey{}).(map[string]string); ok {
			for k, v := range h {
				r.Header[textproto.CanonicalMIMEHeaderKey(k)] = []string{v}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// afterHTTP runs after, if set, once next has answered.
func afterHTTP(next http.Handler, after func(context.Context, *http.Request, int)) http.Handler {
	if after == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		after(r.Context(), r, sw.status)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// ErrUnknownEvent is returned for an invocation whose event this service
// does not serve.
var ErrUnknownEvent = errors.New("unrecognised event")

// Invoke answers one invocation according to the shape of its event; the
// answer has the format of the request.
func (l *lambdaHandler) Invoke(ctx context.Context, payload json.RawMessage) (any, error) {
	kind := Kind(payload)
	if l.h.HTTP == nil && (kind == KindREST || kind == KindHTTPAPI || kind == KindALB) {
		kind = kindUnknown
	}
	switch kind {
	case KindREST:
		var e events.APIGatewayProxyRequest
		if err := json.Unmarshal(payload, &e); err != nil {
			// Kong sends a query parameter without a value (?flag) as
			// true; a request's shape must not fail the invocation.
			if err = json.Unmarshal(flagsAsText(payload), &e); err != nil {
				return nil, fmt.Errorf("decode API Gateway REST event: %w", err)
			}
		}
		e.Path = escapePath(restPath(e))
		resp, err := l.rest.ProxyWithContext(ctx, e)
		if err != nil {
			return nil, err
		}
		// Kong's aws-lambda plugin reads only the single-value headers;
		// API Gateway takes both.
		resp.Headers = singleValued(resp.MultiValueHeaders)
		return resp, nil
	case KindHTTPAPI:
		var e events.APIGatewayV2HTTPRequest
		if err := json.Unmarshal(payload, &e); err != nil {
			return nil, fmt.Errorf("decode HTTP API event: %w", err)
		}
		e.RawPath = httpAPIPath(e)
		return l.v2.ProxyWithContext(context.WithValue(ctx, v2HeadersKey{}, e.Headers), e)
	case KindALB:
		var e events.ALBTargetGroupRequest
		if err := json.Unmarshal(payload, &e); err != nil {
			return nil, fmt.Errorf("decode ALB event: %w", err)
		}
		multi := e.MultiValueHeaders != nil
		albQuery(&e)
		resp, err := l.alb.ProxyWithContext(ctx, e)
		if err != nil {
			return nil, err
		}
		resp.StatusDescription = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
		if !multi {
			// A target group without multi-value headers reads only
			// "headers" from the answer.
			resp.Headers, resp.MultiValueHeaders = singleValued(resp.MultiValueHeaders), nil
		}
		return resp, nil
	case KindSchedule:
		if l.h.Scheduled != nil {
			return l.h.Scheduled(ctx)
		}
	case KindRabbitMQ:
		if l.h.Messages != nil {
			var e events.RabbitMQEvent
			if err := json.Unmarshal(payload, &e); err != nil {
				return nil, fmt.Errorf("decode Amazon MQ event: %w", err)
			}
			msgs, err := rabbitMQMessages(e)
			if err != nil {
				return nil, err
			}
			if err := l.h.Messages(ctx, msgs); err != nil {
				return nil, err
			}
			return map[string]int{"processed": len(msgs)}, nil
		}
	case KindMigrate:
		if err := l.migrate(ctx); err != nil {
			return nil, err
		}
		return map[string]string{"migrated": "ok"}, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrUnknownEvent, describe(payload))
}

// flagsAsText rewrites the query parameters of a REST-shaped event whose
// values are not strings (Kong's true for a bare ?flag) as the empty string
// a server sees for them.
func flagsAsText(payload []byte) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(payload, &m) != nil {
		return payload
	}
	text := func(v any) any {
		if _, ok := v.(string); ok || v == nil {
			return v
		}
		return ""
	}
	if raw, ok := m["queryStringParameters"]; ok {
		var q map[string]any
		if json.Unmarshal(raw, &q) == nil {
			for k, v := range q {
				q[k] = text(v)
			}
			m["queryStringParameters"], _ = json.Marshal(q)
		}
	}
	if raw, ok := m["multiValueQueryStringParameters"]; ok {
		var q map[string][]any
		if json.Unmarshal(raw, &q) == nil {
			for k, vs := range q {
				for i, v := range vs {
					vs[i] = text(v)
				}
				q[k] = vs
			}
			m["multiValueQueryStringParameters"], _ = json.Marshal(q)
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		return payload
	}
	return out
}

// describe names what an unrecognised event looked like, without its values.
func describe(payload []byte) string {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil {
		if len(payload) > 64 {
			payload = payload[:64]
		}
		return fmt.Sprintf("not a JSON object: %q", payload)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 12 {
		keys = append(keys[:12], "…")
	}
	return "an object with keys " + strings.Join(keys, ", ")
}

// escapePath turns a decoded path (API Gateway REST and Kong send the path
// percent-decoded) into the escaped form the proxy parses back, so that a
// path with a NUL, a "%", a "?" or a space reaches the router as it was
// sent, and bad input gets the router's 4xx, not a failed invocation.
func escapePath(p string) string {
	return (&url.URL{Path: p}).EscapedPath()
}

// rawPath keeps an already escaped path (HTTP API's rawPath, ALB's path),
// unless it cannot be one; then it escapes it.
func rawPath(p string) string {
	if u, err := url.Parse(p); err == nil && u.Path != "" && u.RawQuery == "" && u.Fragment == "" && !u.ForceQuery {
		return p
	}
	return escapePath(p)
}

// albQuery decodes an ALB event's query parameters: the load balancer
// passes them as the client sent them, percent-encoded, and the proxy
// encodes them again.
func albQuery(e *events.ALBTargetGroupRequest) {
	unescape := func(s string) string {
		if u, err := url.QueryUnescape(s); err == nil {
			return u
		}
		return s
	}
	if e.MultiValueQueryStringParameters != nil {
		q := make(map[string][]string, len(e.MultiValueQueryStringParameters))
		for k, vs := range e.MultiValueQueryStringParameters {
			k = unescape(k)
			for _, v := range vs {
				q[k] = append(q[k], unescape(v))
			}
		}
		e.MultiValueQueryStringParameters = q
	}
	if e.QueryStringParameters != nil {
		q := make(map[string]string, len(e.QueryStringParameters))
		for k, v := range e.QueryStringParameters {
			q[unescape(k)] = unescape(v)
		}
		e.QueryStringParameters = q
	}
}

// singleValued is h with each header's values joined by commas.
func singleValued(h map[string][]string) map[string]string {
	out := make(map[string]string, len(h))
	for k, vs := range h {
		out[k] = strings.Join(vs, ",")
	}
	return out
}

// restPath is the path the service's router sees for a REST (1.0) event.
// API Gateway's "path" carries a custom domain's base path mapping, which
// the API does not know; when API Gateway sent the event (it names its
// apiId) and the resource is a template, the path is rebuilt from the
// resource and its parameters instead. Kong's aws-lambda plugin sends the
// route's own path as resource, so its "path" is used as it is.
func restPath(e events.APIGatewayProxyRequest) string {
	if e.RequestContext.APIID == "" || !strings.Contains(e.Resource, "{") {
		return e.Path
	}
	if p, ok := fillTemplate(e.Resource, e.PathParameters); ok {
		return p
	}
	return e.Path
}

// httpAPIPath is the path the router sees for a payload 2.0 event: the
// route's template filled in when the route is not $default (so a named
// stage's prefix or a base path mapping does not reach the router), else
// the raw path without a named stage's prefix.
func httpAPIPath(e events.APIGatewayV2HTTPRequest) string {
	if _, tmpl, ok := strings.Cut(e.RouteKey, " "); ok && strings.Contains(tmpl, "{") {
		if p, ok := fillTemplate(tmpl, e.PathParameters); ok {
			return escapePath(p) // path parameters come decoded
		}
	}
	path := e.RawPath
	if path == "" {
		path = e.RequestContext.HTTP.Path
	}
	if st := e.RequestContext.Stage; st != "" && st != "$default" {
		if rest, ok := strings.CutPrefix(path, "/"+st); ok && (rest == "" || rest[0] == '/') {
			path = rest
			if path == "" {
				path = "/"
			}
		}
	}
	return rawPath(path)
}

// fillTemplate replaces each {name} or {name+} of tmpl with its parameter.
func fillTemplate(tmpl string, params map[string]string) (string, bool) {
	segs := strings.Split(tmpl, "/")
	for i, s := range segs {
		if !strings.HasPrefix(s, "{") || !strings.HasSuffix(s, "}") {
			continue
		}
		name := strings.TrimSuffix(strings.Trim(s, "{}"), "+")
		v, ok := params[name]
		if !ok {
			return "", false
		}
		segs[i] = v
	}
	return strings.Join(segs, "/"), true
}

// rabbitMQMessages flattens an Amazon MQ event's messages, in order, queue
// by queue (the mapping names one queue, so there is one).
func rabbitMQMessages(e events.RabbitMQEvent) ([]Message, error) {
	queues := make([]string, 0, len(e.MessagesByQueue))
	for q := range e.MessagesByQueue {
		queues = append(queues, q)
	}
	slices.Sort(queues)
	var msgs []Message
	for _, q := range queues {
		for _, m := range e.MessagesByQueue[q] {
			body, err := base64.StdEncoding.DecodeString(m.Data)
			if err != nil {
				return nil, fmt.Errorf("decode Amazon MQ message data: %w", err)
			}
			msgs = append(msgs, Message{
				MessageID:   deref(m.BasicProperties.MessageID),
				Type:        deref(m.BasicProperties.Type),
				Headers:     amazonMQHeaders(m.BasicProperties.Headers),
				Redelivered: m.Redelivered,
				Body:        body,
			})
		}
	}
	return msgs, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// amazonMQHeaders turns Amazon MQ's header encoding (strings arrive as
// {"bytes":[...]}) back into strings.
func amazonMQHeaders(h map[string]any) map[string]any {
	out := make(map[string]any, len(h))
	for k, v := range h {
		if m, ok := v.(map[string]any); ok {
			if raw, ok := m["bytes"].([]any); ok {
				b := make([]byte, 0, len(raw))
				for _, x := range raw {
					if f, ok := x.(float64); ok && f >= 0 && f < 256 {
						b = append(b, byte(f))
					}
				}
				out[k] = string(b)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// Remaining is how long an invocation may still run, with margin kept back
// so that what committed can be acknowledged and telemetry flushed.
func Remaining(ctx context.Context, margin time.Duration) time.Duration {
	d, ok := ctx.Deadline()
	if !ok {
		return time.Hour
	}
	return time.Until(d) - margin
}
