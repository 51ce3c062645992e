package invoices

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

func otelEnv(endpoint string) map[string]string {
	return map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
		"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
		"OTEL_BSP_SCHEDULE_DELAY":     "100",
		"OTEL_METRIC_EXPORT_INTERVAL": "300",
		"LOG_LEVEL":                   "debug",
	}
}

func with(env map[string]string, more map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	for k, v := range more {
		out[k] = v
	}
	return out
}

// findSpan waits for a span matching pred.
func findSpan(t *testing.T, recv *testenv.OTLPReceiver, what string, pred func(testenv.Span) bool) testenv.Span {
	t.Helper()
	var found testenv.Span
	testenv.Eventually(t, 20*time.Second, "span "+what, func() bool {
		for _, s := range recv.Spans() {
			if pred(s) {
				found = s
				return true
			}
		}
		return false
	})
	return found
}

// One trace runs from POST /orders through its SQL, the relay's publish
// (later, from another goroutine, through the outbox row), the consumer's
// processing in the other service, to the invoice INSERT.
func TestOneTraceFromRequestToInvoice(t *testing.T) {
	s := newService(t)
	recv := testenv.NewOTLPReceiver(t)
	env := otelEnv(recv.URL)
	orders := testenv.Start(t, testenv.Binary(t, "invoicing/functions/orders/cmd/orders"), with(env, map[string]string{
		"DATABASE_URL": testenv.Database(t), "BROKER_URL": s.brokerURL,
	}))
	testenv.Start(t, testenv.Binary(t, "invoicing/functions/invoices/cmd/invoices"), with(env, map[string]string{
		"DATABASE_URL": s.dbURL, "BROKER_URL": s.brokerURL,
	}))

	resp, err := http.Post(orders.URL+"/orders", "application/json", strings.NewReader(`{"customerId":"traced","totalAmount":777}`))
	if err != nil {
		t.Fatal(err)
	}
	var order struct{ ID uuid.UUID }
	if err := json.NewDecoder(resp.Body).Decode(&order); err != nil || resp.StatusCode != 201 {
		t.Fatalf("POST: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	s.waitInvoices(t, 1, 20*time.Second)

	server := findSpan(t, recv, "POST /orders", func(sp testenv.Span) bool {
		return sp.Service == "orders" && sp.Name == "POST /orders"
	})
	traceID := server.TraceID()
	defer func() {
		if t.Failed() {
			for _, sp := range recv.Spans() {
				if sp.TraceID() == traceID {
					t.Logf("%s %s id=%s parent=%s", sp.Service, sp.Name, sp.SpanID(), sp.ParentID())
				}
			}
		}
	}()
	inTrace := func(name string, parent testenv.Span) testenv.Span {
		t.Helper()
		// pgx also records a same-named prepare span under a statement's
		// first run on a connection; the statement's own span is the one
		// whose parent is the caller's.
		return findSpan(t, recv, name+" under "+parent.Name, func(sp testenv.Span) bool {
			return sp.TraceID() == traceID && sp.Name == name && sp.ParentID() == parent.SpanID()
		})
	}
	if server.Kind.String() != "SPAN_KIND_SERVER" || server.Attr("http.route") != "/orders" || server.ParentID() != "" {
		t.Errorf("server span: kind %s route %q parent %q", server.Kind, server.Attr("http.route"), server.ParentID())
	}
	// The transaction's BEGIN and INSERTs travel as one pgx batch.
	batch := inTrace("batch start", server)
	inTrace("INSERT orders", batch)
	inTrace("INSERT outbox", batch)
	inTrace("COMMIT", server)
	publish := inTrace("publish orders", server)
	if publish.Service != "orders" || publish.Kind.String() != "SPAN_KIND_PRODUCER" ||
		publish.Attr("messaging.system") != "rabbitmq" || publish.Attr("messaging.destination.name") != "orders" ||
		publish.Attr("messaging.rabbitmq.destination.routing_key") != "order.created" || publish.Attr("messaging.message.id") == "" ||
		publish.Attr("messaging.operation.type") != "send" {
		t.Errorf("publish span: %s %s %v", publish.Service, publish.Kind, publish.Attributes)
	}
	process := inTrace("process orders", publish)
	if process.Service != "invoices" || process.Kind.String() != "SPAN_KIND_CONSUMER" ||
		process.Attr("messaging.system") != "rabbitmq" || process.Attr("messaging.operation.type") != "process" ||
		process.Attr("messaging.message.id") != publish.Attr("messaging.message.id") {
		t.Errorf("process span: %s %s %v", process.Service, process.Kind, process.Attributes)
	}
	issue := inTrace("issue invoices", process)
	// The counter's lock and the insert travel as one pgx batch too.
	issueBatch := inTrace("batch start", issue)
	inTrace("INSERT invoice_counters", issueBatch)
	insert := inTrace("INSERT invoices", issueBatch)
	if insert.Service != "invoices" || !strings.Contains(insert.Attr("db.query.text"), "INSERT INTO invoices") {
		t.Errorf("invoice insert span: %s %v", insert.Service, insert.Attributes)
	}

	// The request's log line carries the same trace id.
	if !strings.Contains(orders.Logs(), `"path":"/orders","route":"/orders","status":201`) ||
		!logHasTrace(orders.Logs(), `"status":201`, traceID) {
		t.Errorf("no request log line with trace_id %s:\n%s", traceID, orders.Logs())
	}

	for _, m := range []string{
		"http.server.request.duration", "orders.created", "outbox.backlog", "outbox.oldest.age",
		"messaging.publish.confirm.duration", "messaging.process.messages", "invoices.order_to_invoice.duration",
		"db.client.operation.duration", "messaging.consumer.lag",
	} {
		testenv.Eventually(t, 10*time.Second, "metric "+m, func() bool { return recv.HasMetric(m) })
	}
}

func logHasTrace(logs, marker, traceID string) bool {
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, marker) && strings.Contains(line, `"trace_id":"`+traceID+`"`) && strings.Contains(line, `"span_id":"`) {
			return true
		}
	}
	return false
}

// A message from the original Node.js producer, with the traceparent header
// its amqplib instrumentation writes, continues that trace in our consumer.
func TestNodeTraceparentIsContinued(t *testing.T) {
	s := newService(t)
	recv := testenv.NewOTLPReceiver(t)
	invoices := testenv.Start(t, testenv.Binary(t, "invoicing/functions/invoices/cmd/invoices"), with(otelEnv(recv.URL), map[string]string{
		"DATABASE_URL": s.dbURL, "BROKER_URL": s.brokerURL,
	}))
	traceID, parentID := "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	orderID := uuid.New()
	err := s.pub.PublishWithContext(context.Background(), "", rabbit.Queue, false, false, amqp.Publishing{
		ContentType: "application/json",
		Headers:     amqp.Table{"traceparent": fmt.Sprintf("00-%s-%s-01", traceID, parentID), "tracestate": "vendor=node"},
		Body:        []byte(fmt.Sprintf(`{"orderId":%q,"totalAmount":100,"customer":{"id":"node"}}`, orderID)),
	})
	if err != nil {
		t.Fatal(err)
	}
	s.waitInvoices(t, 1, 10*time.Second)
	process := findSpan(t, recv, "process orders", func(sp testenv.Span) bool { return sp.Name == "process orders" })
	if process.TraceID() != traceID || process.ParentID() != parentID {
		t.Errorf("process span trace %s parent %s, want %s %s", process.TraceID(), process.ParentID(), traceID, parentID)
	}
	if process.TraceState != "vendor=node" {
		t.Errorf("tracestate %q not carried", process.TraceState)
	}
	findSpan(t, recv, "INSERT invoices in the Node trace", func(sp testenv.Span) bool {
		return sp.Name == "INSERT invoices" && sp.TraceID() == traceID
	})
	// The consumer's log lines within the trace carry its id too.
	testenv.Eventually(t, 5*time.Second, "a log line with the Node trace id", func() bool {
		return logHasTrace(invoices.Logs(), `"msg":"batch issued"`, traceID)
	})
}
