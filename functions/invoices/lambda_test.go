package invoices

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	ordersmigrations "invoicing/functions/orders/migrations"
	"invoicing/shared/event"
	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
)

const (
	invoicesCmd = "invoicing/functions/invoices/cmd/invoices"
	ordersCmd   = "invoicing/functions/orders/cmd/orders"
)

// startInvoicesLambda runs the invoices binary as a Lambda function over
// the service's migrated database and vhost; brokerURL, when not "",
// replaces the vhost's URL (to go through a proxy).
func (s *service) startInvoicesLambda(t *testing.T, brokerURL string) *testenv.Lambda {
	t.Helper()
	if brokerURL == "" {
		brokerURL = s.brokerURL
	}
	return testenv.StartLambda(t, testenv.Binary(t, invoicesCmd), map[string]string{
		"DATABASE_URL": s.dbURL, "BROKER_URL": brokerURL, "LOG_LEVEL": "debug",
	})
}

func sampleEvent(t *testing.T, fn, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "local", "events", fn, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// invokeJSON sends an event and decodes the function's answer into v.
func invokeJSON(t *testing.T, l *testenv.Lambda, payload []byte, v any) {
	t.Helper()
	answer, err := l.InvokeOK(payload)
	if err != nil {
		t.Fatalf("invoke %.300s: %v", payload, err)
	}
	if err := json.Unmarshal(answer, v); err != nil {
		t.Fatalf("decode %s: %v", answer, err)
	}
}

// amazonMQEvent is the event an Amazon MQ event source mapping hands the
// function for msgs: string headers as {"bytes": [...]}, the body base64.
func amazonMQEvent(t *testing.T, msgs []amqp.Delivery, redelivered bool) []byte {
	t.Helper()
	type props struct {
		ContentType  string         `json:"contentType"`
		Headers      map[string]any `json:"headers"`
		DeliveryMode uint8          `json:"deliveryMode"`
		MessageID    *string        `json:"messageId"`
		Timestamp    string         `json:"timestamp"`
		Type         *string        `json:"type"`
		BodySize     int            `json:"bodySize"`
	}
	type message struct {
		BasicProperties props  `json:"basicProperties"`
		Redelivered     bool   `json:"redelivered"`
		Data            string `json:"data"`
	}
	out := make([]message, 0, len(msgs))
	for _, d := range msgs {
		headers := map[string]any{}
		for k, v := range d.Headers {
			if s, ok := v.(string); ok {
				b := make([]int, len(s))
				for i := range len(s) {
					b[i] = int(s[i])
				}
				headers[k] = map[string]any{"bytes": b}
				continue
			}
			headers[k] = v
		}
		var id, typ *string
		if d.MessageId != "" {
			id = &d.MessageId
		}
		if d.Type != "" {
			typ = &d.Type
		}
		out = append(out, message{
			BasicProperties: props{ContentType: d.ContentType, Headers: headers, DeliveryMode: d.DeliveryMode, MessageID: id, Type: typ,
				Timestamp: d.Timestamp.UTC().Format("Jan 2, 2006, 3:04:05 PM"), BodySize: len(d.Body)},
			Redelivered: redelivered || d.Redelivered,
			Data:        base64.StdEncoding.EncodeToString(d.Body),
		})
	}
	b, err := json.Marshal(map[string]any{
		"eventSource":        "aws:rmq",
		"eventSourceArn":     "arn:aws:mq:us-east-1:123456789012:broker:orders-broker:b-9bcfa592-423a-4942-879d-eb284b418fc8",
		"rmqMessagesByQueue": map[string]any{rabbit.Queue + "::/": out},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// take gets n messages from queue "orders" and acks them, as an event
// source mapping does once the invocation it handed them to succeeded.
func (s *service) take(t *testing.T, n int) []amqp.Delivery {
	t.Helper()
	var out []amqp.Delivery
	testenv.Eventually(t, 10*time.Second, fmt.Sprintf("%d messages in queue orders", n), func() bool {
		for len(out) < n {
			d, ok, err := s.pub.Get(rabbit.Queue, true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				return false
			}
			out = append(out, d)
		}
		return true
	})
	return out
}

func (s *service) invoicesOf(t *testing.T, orderID uuid.UUID) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM invoices WHERE order_id = $1`, orderID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Every sample event in local/events/invoices, and AWS's own Amazon MQ
// sample carrying one of our events, on the real binary under the emulator.
func TestLambdaSampleEvents(t *testing.T) {
	s := newService(t)
	l := s.startInvoicesLambda(t, "")

	var migrated map[string]string
	invokeJSON(t, l, sampleEvent(t, "invoices", "migrate.json"), &migrated)
	if migrated["migrated"] != "ok" {
		t.Errorf("migrate answered %v", migrated)
	}
	if d, ok := l.InitDuration(); ok {
		t.Logf("invoices Init Duration: %s", d)
	} else {
		t.Errorf("no init duration reported")
	}

	var processed map[string]int
	invokeJSON(t, l, sampleEvent(t, "invoices", "amazonmq.json"), &processed)
	if processed["processed"] != 1 {
		t.Errorf("amazonmq.json answered %v", processed)
	}
	sampleOrder := uuid.MustParse("0193a1b2-0000-7000-8000-00000000a001")
	if n := s.invoicesOf(t, sampleOrder); n != 1 {
		t.Fatalf("order of amazonmq.json has %d invoices", n)
	}

	list, err := l.InvokeHTTP(sampleEvent(t, "invoices", "apigw-http-list.json"))
	if err != nil || list.StatusCode != 200 {
		t.Fatalf("apigw-http-list.json: %+v %v", list, err)
	}
	if ct := list.Header("Content-Type"); ct != "application/json" || list.IsBase64Encoded {
		t.Errorf("list answered Content-Type %q, base64 %v", ct, list.IsBase64Encoded)
	}
	var page struct {
		Data []struct {
			OrderID uuid.UUID `json:"orderId"`
			Number  string    `json:"number"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(list.Body), &page); err != nil || len(page.Data) != 1 || page.Data[0].OrderID != sampleOrder {
		t.Errorf("list of amazon-mq-customer: %s (%v)", list.Body, err)
	}

	// AWS's sample: a queue other than ours, an integer header, a null
	// message id and type; its data replaced by one of our events.
	e := newEvent("aws-sample", 990)
	body, _ := json.Marshal(e)
	var aws map[string]any
	if err := json.Unmarshal(awsRabbitMQSample(t), &aws); err != nil {
		t.Fatal(err)
	}
	for _, msgs := range aws["rmqMessagesByQueue"].(map[string]any) {
		msgs.([]any)[0].(map[string]any)["data"] = base64.StdEncoding.EncodeToString(body)
	}
	payload, _ := json.Marshal(aws)
	invokeJSON(t, l, payload, &processed)
	if processed["processed"] != 1 || s.invoicesOf(t, e.OrderID) != 1 {
		t.Errorf("rabbitmq-event.json with our event: answered %v, %d invoices", processed, s.invoicesOf(t, e.OrderID))
	}

	// schedule.json drains what waits in queue "orders".
	for i := range 3 {
		s.publishEvent(t, newEvent("scheduled", int64(100+i)))
	}
	testenv.Eventually(t, 5*time.Second, "3 messages in queue orders", func() bool { return s.ready(t) == 3 })
	var drained DrainResult
	invokeJSON(t, l, sampleEvent(t, "invoices", "schedule.json"), &drained)
	if drained.Messages != 3 || drained.Left != 0 {
		t.Errorf("schedule.json answered %+v, want 3 messages", drained)
	}
	if n := s.invoiceCount(t); n != 5 {
		t.Errorf("%d invoices, want 5", n)
	}
	s.assertGapless(t)

	// An unknown event fails and names what arrived.
	_, err = l.InvokeOK([]byte(`{"Records":[{"eventSource":"aws:sqs","body":"x"}]}`))
	var fe *testenv.FunctionError
	if !errors.As(err, &fe) || !strings.Contains(fe.Message, "Records") {
		t.Errorf("SQS event: %v, want a failed invocation naming Records", err)
	}
}

func awsRabbitMQSample(t *testing.T) []byte {
	t.Helper()
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/aws/aws-lambda-go").Output()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(dir)), "events", "testdata", "rabbitmq-event.json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// createOrder sends POST /orders to the orders function as an HTTP API
// event and returns the order's id.
func createOrder(t *testing.T, orders *testenv.Lambda, customer string, amount int) uuid.UUID {
	t.Helper()
	var e map[string]any
	if err := json.Unmarshal(sampleEvent(t, "orders", "apigw-http-create.json"), &e); err != nil {
		t.Fatal(err)
	}
	e["body"] = fmt.Sprintf(`{"customerId":%q,"totalAmount":%d}`, customer, amount)
	payload, _ := json.Marshal(e)
	a, err := orders.InvokeHTTP(payload)
	if err != nil || a.StatusCode != 201 {
		t.Fatalf("POST /orders: %+v %v", a, err)
	}
	return uuid.MustParse(strings.TrimPrefix(a.Header("Location"), "/orders/"))
}

// Both services as Lambda functions: orders created through HTTP API
// events (some while the broker is unreachable for the orders function,
// published by its scheduled sweep afterwards), then a scheduled drain of
// the invoices function: one invoice per order, numbered without gaps.
func TestLambdaEndToEnd(t *testing.T) {
	s := newService(t)
	ordersDB, ordersPool := testenv.MigratedDatabase(t, ordersmigrations.FS)
	bu, _ := url.Parse(s.brokerURL)
	brokerProxy := testenv.NewProxy(t, bu.Host)
	bu.Host = brokerProxy.Addr()
	orders := testenv.StartLambda(t, testenv.Binary(t, ordersCmd), map[string]string{
		"DATABASE_URL": ordersDB, "BROKER_URL": bu.String(), "LOG_LEVEL": "debug",
	})
	invoices := s.startInvoicesLambda(t, "")

	var ids []uuid.UUID
	for i := range 5 {
		ids = append(ids, createOrder(t, orders, fmt.Sprintf("lambda-%d", i%2), 100+i))
	}
	testenv.Eventually(t, 5*time.Second, "5 events published after their creates", func() bool { return s.ready(t) == 5 })

	brokerProxy.Cut()
	for i := range 3 {
		ids = append(ids, createOrder(t, orders, "while-broker-away", 200+i))
	}
	var left int
	if err := ordersPool.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&left); err != nil || left != 3 {
		t.Fatalf("%d events in the outbox while the broker was away (%v), want 3", left, err)
	}
	brokerProxy.Restore()
	var swept map[string]int
	invokeJSON(t, orders, sampleEvent(t, "orders", "schedule.json"), &swept)
	if swept["published"] != 3 {
		t.Errorf("sweep answered %v, want 3 published", swept)
	}
	if s.ready(t) != 8 {
		t.Errorf("%d messages in queue orders, want 8", s.ready(t))
	}

	var drained DrainResult
	invokeJSON(t, invoices, sampleEvent(t, "invoices", "schedule.json"), &drained)
	if drained.Messages != 8 {
		t.Errorf("drain answered %+v, want 8 messages", drained)
	}
	for _, id := range ids {
		if n := s.invoicesOf(t, id); n != 1 {
			t.Errorf("order %s has %d invoices", id, n)
		}
	}
	if n := s.invoiceCount(t); n != len(ids) {
		t.Errorf("%d invoices for %d orders", n, len(ids))
	}
	s.assertGapless(t)
	if s.ready(t) != 0 {
		t.Errorf("%d messages left in queue orders", s.ready(t))
	}
}

// The invoices function fed by an Amazon MQ event source mapping: the
// messages the orders function published, handed over as the mapping
// does. A redelivered message is no second invoice; a poison message in a
// batch is dead-lettered to orders.dead while the batch's good messages are
// invoiced and the invocation succeeds (so the mapping acks the batch).
func TestLambdaAmazonMQ(t *testing.T) {
	s := newService(t)
	ordersDB, _ := testenv.MigratedDatabase(t, ordersmigrations.FS)
	orders := testenv.StartLambda(t, testenv.Binary(t, ordersCmd), map[string]string{
		"DATABASE_URL": ordersDB, "BROKER_URL": s.brokerURL,
	})
	invoices := s.startInvoicesLambda(t, "")

	var ids []uuid.UUID
	for i := range 4 {
		ids = append(ids, createOrder(t, orders, "amazon-mq", 300+i))
	}
	msgs := s.take(t, 4)

	var answer map[string]int
	invokeJSON(t, invoices, amazonMQEvent(t, msgs[:3], false), &answer)
	if answer["processed"] != 3 || s.invoiceCount(t) != 3 {
		t.Fatalf("first batch: answered %v, %d invoices", answer, s.invoiceCount(t))
	}

	// The mapping hands the last message of the batch again (its ack was
	// lost), with the next one, and a poison message in the middle.
	poison := amqp.Delivery{MessageId: "poison-1", Type: event.TypeOrderCreated, ContentType: "application/json",
		DeliveryMode: 2, Timestamp: time.Now(), Body: []byte(`{"orderId":"not-a-uuid","totalAmount":"lots"`)}
	redelivered := msgs[2]
	redelivered.Redelivered = true
	invokeJSON(t, invoices, amazonMQEvent(t, []amqp.Delivery{redelivered, poison, msgs[3]}, false), &answer)
	if answer["processed"] != 3 {
		t.Errorf("second batch answered %v", answer)
	}
	for _, id := range ids {
		if n := s.invoicesOf(t, id); n != 1 {
			t.Errorf("order %s has %d invoices", id, n)
		}
	}
	if n := s.invoiceCount(t); n != 4 {
		t.Errorf("%d invoices, want 4", n)
	}
	s.assertGapless(t)
	var dead []amqp.Delivery
	testenv.Eventually(t, 5*time.Second, "the poison message in orders.dead", func() bool {
		dead = append(dead, s.deadLettered(t)...)
		return len(dead) >= 1
	})
	if len(dead) != 1 || dead[0].MessageId != "poison-1" || string(dead[0].Body) != string(poison.Body) {
		t.Errorf("orders.dead holds %d messages, first %+v", len(dead), dead[0])
	}
}

// A thawed invoices function whose broker connection died while it was
// frozen drains the queue on its next scheduled invocation.
func TestLambdaDrainAfterBrokerCut(t *testing.T) {
	s := newService(t)
	proxy, proxied := testenv.ProxyURL(t, s.brokerURL)
	l := s.startInvoicesLambda(t, proxied)

	s.publishEvent(t, newEvent("before-cut", 100))
	testenv.Eventually(t, 5*time.Second, "a message in queue orders", func() bool { return s.ready(t) == 1 })
	var drained DrainResult
	invokeJSON(t, l, sampleEvent(t, "invoices", "schedule.json"), &drained)
	if drained.Messages != 1 {
		t.Fatalf("first drain: %+v", drained)
	}
	proxy.Cut()
	proxy.Restore()
	s.publishEvent(t, newEvent("after-cut", 200))
	testenv.Eventually(t, 5*time.Second, "a message in queue orders", func() bool { return s.ready(t) == 1 })
	invokeJSON(t, l, sampleEvent(t, "invoices", "schedule.json"), &drained)
	if drained.Messages != 1 || s.invoiceCount(t) != 2 {
		t.Errorf("drain after the cut: %+v, %d invoices", drained, s.invoiceCount(t))
	}
}

// While the invoices database fails, an Amazon MQ batch is not failed (the
// mapping would redeliver it, spending its deliveries): it is held until
// shortly before the deadline, then handed back to queue "orders" and the
// invocation succeeds. Nothing is invoiced, nothing dead-lettered, and a
// drain once the database is back invoices every order once.
func TestLambdaAmazonMQDatabaseOutageHandsBatchBack(t *testing.T) {
	s := newService(t)
	proxy, proxied := testenv.ProxyURL(t, s.dbURL)
	l := testenv.StartLambda(t, testenv.Binary(t, invoicesCmd), map[string]string{
		"DATABASE_URL": proxied, "BROKER_URL": s.brokerURL, "LOG_LEVEL": "debug",
		"DB_TIMEOUT": "1s", "AWS_LAMBDA_FUNCTION_TIMEOUT": "8",
	})
	var msgs []amqp.Delivery
	var orderIDs []uuid.UUID
	for i := range 3 {
		e := newEvent("outage", int64(10+i))
		body, _ := json.Marshal(e)
		msgs = append(msgs, amqp.Delivery{MessageId: e.EventID.String(), Type: event.TypeOrderCreated,
			ContentType: "application/json", DeliveryMode: 2, Timestamp: time.Now(), Body: body})
		orderIDs = append(orderIDs, e.OrderID)
	}

	proxy.Cut()
	var answer map[string]int
	invokeJSON(t, l, amazonMQEvent(t, msgs, false), &answer)
	if answer["processed"] != 3 {
		t.Errorf("answered %v", answer)
	}
	proxy.Restore()
	testenv.Eventually(t, 10*time.Second, "the batch back in queue orders", func() bool { return s.ready(t) == 3 })
	if n := s.invoiceCount(t); n != 0 {
		t.Errorf("%d invoices while the database failed", n)
	}
	if n := s.deadLetters(t); n != 0 {
		t.Errorf("%d messages dead-lettered while the database failed", n)
	}

	var drained DrainResult
	invokeJSON(t, l, sampleEvent(t, "invoices", "schedule.json"), &drained)
	for _, id := range orderIDs {
		if n := s.invoicesOf(t, id); n != 1 {
			t.Errorf("order %s has %d invoices", id, n)
		}
	}
	s.assertGapless(t)
}
