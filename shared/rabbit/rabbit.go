// Package rabbit owns the broker side of the order.created contract: the
// topology both services declare, a connection that redials on demand, and a
// publisher that waits for the broker's confirms.
package rabbit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// Names of the topology. They are the contract between the services.
const (
	Exchange               = "orders"
	Queue                  = "orders"
	RoutingKeyOrderCreated = "order.created"
	DeadLetterExchange     = "orders.dlx"
	DeadLetterQueue        = "orders.dead"
	// DeliveryLimit bounds redeliveries of one message on the quorum queue;
	// past it the broker dead-letters the message. The consumer rejects
	// messages it can never process at once, so this only catches messages
	// that keep crashing consumers.
	DeliveryLimit = 20
)

// Declare creates the topology idempotently: the durable topic exchange
// "orders", the durable quorum queue "orders" bound to it with a delivery
// limit and a dead-letter exchange, and the dead-letter queue.
func Declare(ch *amqp.Channel) error {
	if err := ch.ExchangeDeclare(DeadLetterExchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", DeadLetterExchange, err)
	}
	if _, err := ch.QueueDeclare(DeadLetterQueue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		return fmt.Errorf("declare queue %s: %w", DeadLetterQueue, err)
	}
	if err := ch.QueueBind(DeadLetterQueue, "", DeadLetterExchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s: %w", DeadLetterQueue, err)
	}
	if err := ch.ExchangeDeclare(Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", Exchange, err)
	}
	args := amqp.Table{
		"x-queue-type":           "quorum",
		"x-dead-letter-exchange": DeadLetterExchange,
		"x-delivery-limit":       int32(DeliveryLimit),
	}
	if _, err := ch.QueueDeclare(Queue, true, false, false, false, args); err != nil {
		return fmt.Errorf("declare queue %s: %w", Queue, err)
	}
	if err := ch.QueueBind(Queue, RoutingKeyOrderCreated, Exchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s: %w", Queue, err)
	}
	return nil
}

// Session keeps one AMQP connection per process and redials it lazily after
// it breaks, declaring the topology on each new connection. Callers back off
// between failed attempts; Session itself never sleeps.
type Session struct {
	url  string
	name string
	log  *slog.Logger

	mu   sync.Mutex
	conn *amqp.Connection
}

// NewSession returns a Session for url; name is shown in the broker's
// connection list.
func NewSession(url, name string, log *slog.Logger) *Session {
	return &Session{url: url, name: name, log: log}
}

// Connection returns the open connection, dialing a new one when needed.
func (s *Session) Connection(ctx context.Context) (*amqp.Connection, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && !s.conn.IsClosed() {
		return s.conn, nil
	}
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = max(time.Until(d), time.Millisecond)
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(s.name)
	conn, err := amqp.DialConfig(s.url, amqp.Config{
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Properties: props,
		Dial:       amqp.DefaultDial(timeout),
	})
	if err != nil {
		return nil, fmt.Errorf("dial broker: %w", err)
	}
	ch, err := conn.Channel()
	if err == nil {
		err = Declare(ch)
		_ = ch.Close()
	}
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("declare topology: %w", err)
	}
	s.log.Info("broker connected", "connection", s.name)
	s.conn = conn
	return conn, nil
}

// Channel opens a new channel on the session's connection.
func (s *Session) Channel(ctx context.Context) (*amqp.Channel, error) {
	conn, err := s.Connection(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	return ch, nil
}

// Check reports whether the broker answers, for health checks.
func (s *Session) Check(ctx context.Context) error {
	ch, err := s.Channel(ctx)
	if err != nil {
		return err
	}
	return ch.Close()
}

// Close closes the connection, if any.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}

// Message is one message to publish.
type Message struct {
	// Context is the trace context the publish span belongs to; the
	// relay restores it from the outbox row. Nil means the Publish ctx.
	Context    context.Context
	Exchange   string
	RoutingKey string
	MessageID  string
	Type       string
	Timestamp  time.Time
	Body       []byte
	Headers    amqp.Table
}

// Publisher publishes persistent messages on confirm-mode channels. A batch
// is sent as a window: every message goes out before any confirm is awaited.
// Concurrent Publish calls each use a channel of their own (kept for reuse),
// so their confirm waits overlap.
type Publisher struct {
	session *Session
	tracer  trace.Tracer
	confirm metric.Float64Histogram

	mu   sync.Mutex
	idle []*amqp.Channel
}

// NewPublisher returns a Publisher on s.
func NewPublisher(s *Session) *Publisher {
	confirm, _ := otel.Meter(instrumentation).Float64Histogram("messaging.publish.confirm.duration",
		metric.WithUnit("s"), metric.WithDescription("Time from publishing a message to the broker's confirm"))
	return &Publisher{session: s, tracer: otel.Tracer(instrumentation), confirm: confirm}
}

// Publish sends msgs and returns nil only when the broker confirmed every one.
// On error some messages may have been delivered; callers publish again, and
// consumers deduplicate.
func (p *Publisher) Publish(ctx context.Context, msgs []Message) error {
	ch, err := p.channel(ctx)
	if err != nil {
		return err
	}
	if err := p.publish(ctx, ch, msgs); err != nil {
		_ = ch.Close() // its confirms are out of step now
		return err
	}
	p.mu.Lock()
	p.idle = append(p.idle, ch)
	p.mu.Unlock()
	return nil
}

// channel returns an idle open channel, or a new one in confirm mode.
func (p *Publisher) channel(ctx context.Context) (*amqp.Channel, error) {
	p.mu.Lock()
	for len(p.idle) > 0 {
		ch := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if !ch.IsClosed() {
			p.mu.Unlock()
			return ch, nil
		}
	}
	p.mu.Unlock()
	ch, err := p.session.Channel(ctx)
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("enable confirms: %w", err)
	}
	return ch, nil
}

func (p *Publisher) publish(ctx context.Context, ch *amqp.Channel, msgs []Message) error {
	pending := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	spans := make([]trace.Span, 0, len(msgs))
	sent := make([]time.Time, 0, len(msgs))
	defer func() {
		for _, span := range spans {
			span.End()
		}
	}()
	fail := func(err error) error {
		for _, span := range spans {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		return err
	}
	for _, m := range msgs {
		parent := m.Context
		if parent == nil {
			parent = ctx
		}
		// One producer span per message, so each joins its own order's trace.
		_, span := p.tracer.Start(parent, "publish "+m.Exchange,
			trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(MessagingAttributes(m.Exchange, m.RoutingKey, m.MessageID, len(m.Body))...),
			trace.WithAttributes(semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("publish")))
		spans = append(spans, span)
		headers := make(amqp.Table, len(m.Headers)+2)
		for k, v := range m.Headers {
			headers[k] = v
		}
		otel.GetTextMapPropagator().Inject(trace.ContextWithSpan(ctx, span), HeaderCarrier(headers))
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, m.Exchange, m.RoutingKey, false, false, amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    m.MessageID,
			Type:         m.Type,
			Timestamp:    m.Timestamp,
			Headers:      headers,
			Body:         m.Body,
		})
		if err != nil {
			return fail(fmt.Errorf("publish %s: %w", m.MessageID, err))
		}
		pending = append(pending, dc)
		sent = append(sent, time.Now())
	}
	for i, dc := range pending {
		acked, err := dc.WaitContext(ctx)
		if err != nil {
			return fail(fmt.Errorf("await confirm of %s: %w", msgs[i].MessageID, err))
		}
		if !acked {
			return fail(fmt.Errorf("broker refused %s", msgs[i].MessageID))
		}
		p.confirm.Record(ctx, time.Since(sent[i]).Seconds())
	}
	return nil
}
