// Package rabbit owns the broker side of the order.created contract: the
// topology both services declare, a connection that redials on demand, and a
// publisher that waits for the broker's confirms.
package rabbit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
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

	mu      sync.Mutex
	conn    *amqp.Connection
	raw     *corkConn    // conn's socket, closed to abandon conn
	blocked *atomic.Bool // conn is under the broker's flow control
	// dialing is closed when the dial in flight ends; nil when none is.
	// Other callers wait for it, each only as long as its own context.
	dialing chan struct{}
	// closes counts Close calls: a dial that Close overtook closes what it
	// opened instead of keeping it.
	closes int
}

// NewSession returns a Session for url; name is shown in the broker's
// connection list.
func NewSession(url, name string, log *slog.Logger) *Session {
	return &Session{url: url, name: name, log: log}
}

// Connection returns the open connection, dialing a new one when needed.
// The handshake gives up at ctx's deadline or after 5 s; declaring the
// topology, and waiting for a dial that another caller started, end when
// ctx does.
func (s *Session) Connection(ctx context.Context) (*amqp.Connection, error) {
	for {
		s.mu.Lock()
		if s.conn != nil && !s.conn.IsClosed() {
			conn := s.conn
			s.mu.Unlock()
			return conn, nil
		}
		if wait := s.dialing; wait != nil {
			s.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("wait for the broker connection being dialed: %w", ctx.Err())
			}
		}
		done, closes := make(chan struct{}), s.closes
		s.dialing = done
		s.mu.Unlock()
		return s.dialAndKeep(ctx, done, closes)
	}
}

// dialAndKeep dials for Connection and keeps the connection, unless Close
// was called after the dial began (closes is Close's count then). However
// it ends, even by a panic, it closes done, so callers waiting for the dial
// go on.
func (s *Session) dialAndKeep(ctx context.Context, done chan struct{}, closes int) (conn *amqp.Connection, err error) {
	var raw *corkConn
	var blocked *atomic.Bool
	defer func() {
		s.mu.Lock()
		s.dialing = nil
		if conn != nil && s.closes != closes {
			_ = raw.Close()
			conn, err = nil, errors.New("broker connection discarded: the session was closed during the dial")
		}
		if conn != nil {
			s.conn, s.raw, s.blocked = conn, raw, blocked
		}
		s.mu.Unlock()
		close(done)
		if conn != nil {
			s.log.Info("broker connected", "connection", s.name)
		}
	}()
	conn, raw, blocked, err = s.dial(ctx)
	return conn, err
}

// dial opens a connection and declares the topology on it, within ctx.
func (s *Session) dial(ctx context.Context) (*amqp.Connection, *corkConn, *atomic.Bool, error) {
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = max(time.Until(d), time.Millisecond)
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(s.name)
	var raw *corkConn
	conn, err := amqp.DialConfig(s.url, amqp.Config{
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := amqp.DefaultDial(timeout)(network, addr)
			if err != nil {
				return nil, err
			}
			raw = &corkConn{Conn: c}
			return raw, nil
		},
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("dial broker: %w", err)
	}
	// The handshake had a deadline; opening a channel and declaring have
	// none, so a broker that stops answering now would hold them forever.
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	ch, err := conn.Channel()
	if err == nil {
		err = Declare(ch)
		_ = ch.Close()
	}
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		_ = raw.Close() // conn.Close would wait for a broker that may not answer
		return nil, nil, nil, fmt.Errorf("declare topology: %w", err)
	}
	blocked := &atomic.Bool{}
	blocks := conn.NotifyBlocked(make(chan amqp.Blocking, 1))
	go func() {
		// The library closes blocks when the connection closes.
		for b := range blocks {
			blocked.Store(b.Active)
			if b.Active {
				s.log.Warn("broker blocked the connection (flow control)", "connection", s.name, "reason", b.Reason)
			} else {
				s.log.Info("broker unblocked the connection", "connection", s.name)
			}
		}
	}()
	return conn, raw, blocked, nil
}

// Abandon closes conn's socket without the close handshake, when conn is
// still the session's connection: a broker that stopped answering would
// hold amqp091's Close (which waits for close-ok) and any blocked write
// forever. Everything waiting on conn fails at once; the next call dials.
func (s *Session) Abandon(conn *amqp.Connection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != conn || s.conn == nil {
		return
	}
	_ = s.raw.Close()
	s.conn, s.raw, s.blocked = nil, nil, nil
	s.log.Warn("broker connection abandoned", "connection", s.name)
}

// cork holds back conn's writes until release, when conn is the session's
// connection (see corkConn); otherwise release does nothing. It does not
// hold the session's lock while it waits for the socket's: a write blocked
// on a broker that stopped reading holds the socket's lock until Abandon,
// which needs the session's, closes the socket.
func (s *Session) cork(conn *amqp.Connection) (release func() error) {
	s.mu.Lock()
	raw := s.raw
	current := s.conn == conn && raw != nil
	s.mu.Unlock()
	if !current {
		return func() error { return nil }
	}
	return raw.cork()
}

// Blocked reports whether the broker has blocked the connection
// (connection.blocked, sent under a memory or disk alarm): publishes would
// stall in a socket write until it lifts.
func (s *Session) Blocked() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blocked != nil && s.blocked.Load()
}

// WithConnection runs fn on the session's connection, dialling it when
// needed. amqp091's calls (opening a channel, Qos, Consume, Close) wait for
// the broker and ignore contexts, so when ctx ends first the connection is
// abandoned (see Abandon), which makes them return, and the error says that
// ctx ended. An fn that returned just as ctx ended gets ctx's error too:
// what it opened is on a connection that is gone.
func (s *Session) WithConnection(ctx context.Context, fn func(*amqp.Connection) error) error {
	conn, err := s.Connection(ctx)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { s.Abandon(conn) })
	err = fn(conn)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		err = errors.Join(err, ctx.Err())
	}
	return err
}

// Redeclare declares the topology again on the open connection. Callers use
// it when the broker says that part of it is gone (a publish returned
// unroutable, a channel closed with 404, a consumer cancelled), since the
// connection only declares when it is dialed. It ends when ctx does.
func (s *Session) Redeclare(ctx context.Context) error {
	err := s.WithConnection(ctx, func(conn *amqp.Connection) error {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		defer ch.Close()
		if err := Declare(ch); err != nil {
			return fmt.Errorf("declare topology again: %w", err)
		}
		return nil
	})
	if err == nil {
		s.log.Info("broker topology declared again", "connection", s.name)
	}
	return err
}

// Channel opens a new channel on the session's connection. It returns when
// ctx ends even if the broker stopped answering.
func (s *Session) Channel(ctx context.Context) (*amqp.Channel, error) {
	var ch *amqp.Channel
	err := s.WithConnection(ctx, func(conn *amqp.Connection) (err error) {
		if ch, err = conn.Channel(); err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		return nil
	})
	return ch, err
}

// Check reports whether the broker answers, for health checks: it opens a
// channel and closes it. It returns when ctx ends even if the broker stopped
// answering, rather than wait for the broker's answer.
func (s *Session) Check(ctx context.Context) error {
	return s.WithConnection(ctx, func(conn *amqp.Connection) error {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		if err := ch.Close(); err != nil {
			return fmt.Errorf("close channel: %w", err)
		}
		return nil
	})
}

// closeTimeout bounds the close handshake: a broker that stopped answering
// must not hold a shutdown.
const closeTimeout = 5 * time.Second

// Close closes the connection, if any; a dial in flight when Close is
// called closes what it opens. Close does not end the session: a later
// call, or one that was waiting for that dial, dials again.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closes++
	if s.conn == nil {
		return nil
	}
	err := s.conn.CloseDeadline(time.Now().Add(closeTimeout))
	s.conn, s.raw, s.blocked = nil, nil, nil
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

// Publisher publishes persistent, mandatory messages on confirm-mode
// channels. A batch is sent as a window: every message goes out before any
// confirm is awaited. Concurrent Publish calls each use a channel of their
// own (kept for reuse), so their confirm waits overlap.
type Publisher struct {
	session *Session
	tracer  trace.Tracer
	confirm metric.Float64Histogram

	mu   sync.Mutex
	idle []*confirmChannel
}

// confirmChannel is a confirm-mode channel with its listeners, registered
// once since amqp091 cannot remove them.
type confirmChannel struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	returns chan amqp.Return
	closes  chan *amqp.Error
}

// returnBuffer holds basic.return frames until Publish reads them. amqp091
// drops a return its listener does not take within 5 s; Publish reads them
// while it sends and waits, so this only absorbs bursts.
const returnBuffer = 256

// ErrBlocked is returned while the broker has blocked the connection.
var ErrBlocked = errors.New("broker connection blocked by flow control")

// ErrNacked is returned when the broker refused a message (basic.nack), for
// instance because the queue is full and rejects publishes. The message
// itself may be fine.
var ErrNacked = errors.New("broker refused the message")

// ReturnedError reports messages the broker confirmed but returned as
// unroutable (mandatory publish with no queue bound for them): they were
// dropped, not delivered.
type ReturnedError struct {
	MessageIDs []string
	Code       uint16
	Text       string
}

func (e *ReturnedError) Error() string {
	return fmt.Sprintf("broker returned %d message(s) as unroutable (%d %s), first %s", len(e.MessageIDs), e.Code, e.Text, e.MessageIDs[0])
}

// IsMessageFault reports whether err is one a message can cause by itself,
// as opposed to a broker outage, a timeout or a nack: it was returned as
// unroutable, or its exchange does not exist (404 closes the channel).
// Publish reports such an error only after declaring the topology again
// succeeded, so a topology deleted by an operator heals on the next publish.
func IsMessageFault(err error) bool {
	var ret *ReturnedError
	var amqpErr *amqp.Error
	return errors.As(err, &ret) || errors.As(err, &amqpErr) && amqpErr.Code == amqp.NotFound
}

// NewPublisher returns a Publisher on s.
func NewPublisher(s *Session) *Publisher {
	confirm, _ := otel.Meter(instrumentation).Float64Histogram("messaging.publish.confirm.duration",
		metric.WithUnit("s"), metric.WithDescription("Time from publishing a message to the broker's confirm"))
	return &Publisher{session: s, tracer: otel.Tracer(instrumentation), confirm: confirm}
}

// Publish sends msgs and returns nil only when the broker confirmed every
// one and returned none. On error some messages may have been delivered;
// callers publish again, and consumers deduplicate. Publish returns when ctx
// ends even if the broker stopped answering or blocked the connection: it
// then abandons the connection, so callers must bound ctx.
func (p *Publisher) Publish(ctx context.Context, msgs []Message) error {
	c, err := p.channel(ctx)
	if err != nil {
		return err
	}
	if p.session.Blocked() {
		// A publish would block in a socket write until the alarm clears;
		// fail now and let the caller back off with its rows intact.
		p.release(c)
		return ErrBlocked
	}
	// Nothing below honours ctx by itself: a socket write blocks while the
	// broker does not read, and Channel.Close waits for close-ok.
	stop := context.AfterFunc(ctx, func() { p.session.Abandon(c.conn) })
	defer stop()
	err = p.publish(ctx, c, msgs)
	if err == nil {
		p.release(c)
		return nil
	}
	var ret *ReturnedError
	if errors.As(err, &ret) {
		p.release(c) // every confirm arrived: the channel is in step
	} else {
		_ = c.ch.Close() // its confirms are out of step now
	}
	if ctx.Err() != nil {
		return errors.Join(err, ctx.Err())
	}
	if IsMessageFault(err) {
		// A deleted queue, binding or exchange: declare it again so that
		// the next publish succeeds. Until that works the fault cannot be
		// blamed on the message.
		if derr := p.session.Redeclare(ctx); derr != nil {
			return fmt.Errorf("%v; %w", err, derr)
		}
	}
	return err
}

func (p *Publisher) release(c *confirmChannel) {
	p.mu.Lock()
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// channel returns an idle open channel, or a new one in confirm mode.
func (p *Publisher) channel(ctx context.Context) (*confirmChannel, error) {
	p.mu.Lock()
	for len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if !c.ch.IsClosed() {
			p.mu.Unlock()
			return c, nil
		}
	}
	p.mu.Unlock()
	var c *confirmChannel
	err := p.session.WithConnection(ctx, func(conn *amqp.Connection) error {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		if err := ch.Confirm(false); err != nil {
			_ = ch.Close()
			return fmt.Errorf("enable confirms: %w", err)
		}
		c = &confirmChannel{
			conn:    conn,
			ch:      ch,
			returns: ch.NotifyReturn(make(chan amqp.Return, returnBuffer)),
			closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (p *Publisher) publish(ctx context.Context, c *confirmChannel, msgs []Message) error {
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
	// The broker sends a message's basic.return before its basic.ack, and
	// amqp091 hands the return to our buffered channel before it processes
	// the ack; so once an ack is seen, draining finds every return before it.
	// A return carries no delivery tag: messages are matched by message id.
	returns := c.returns
	returned := map[string]amqp.Return{}
	take := func(r amqp.Return, ok bool) {
		if !ok {
			returns = nil // the channel closed; its confirms fail too
			return
		}
		returned[r.MessageId] = r
	}
	drain := func() {
		for returns != nil {
			select {
			case r, ok := <-returns:
				take(r, ok)
			default:
				return
			}
		}
	}
	// The batch leaves in one write (see corkConn) once every message is
	// framed, before any confirm is awaited.
	release := p.session.cork(c.conn)
	defer release()
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
		// Mandatory: a message no queue takes is returned rather than
		// confirmed and dropped.
		dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, m.Exchange, m.RoutingKey, true, false, amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    m.MessageID,
			Type:         m.Type,
			Timestamp:    m.Timestamp,
			Headers:      headers,
			Body:         m.Body,
		})
		if err != nil {
			return fail(errors.Join(fmt.Errorf("publish %s: %w", m.MessageID, err), channelError(c)))
		}
		pending = append(pending, dc)
		sent = append(sent, time.Now())
		drain()
	}
	if err := release(); err != nil {
		return fail(errors.Join(fmt.Errorf("send %d messages: %w", len(msgs), err), channelError(c)))
	}
	var unroutable *ReturnedError
	for i, dc := range pending {
		for waiting := true; waiting; {
			select {
			case <-dc.Done():
				waiting = false
			case r, ok := <-returns:
				take(r, ok)
			case <-ctx.Done():
				return fail(fmt.Errorf("await confirm of %s: %w", msgs[i].MessageID, ctx.Err()))
			}
		}
		drain()
		if !dc.Acked() {
			if err := channelError(c); err != nil {
				return fail(fmt.Errorf("publish %s: %w", msgs[i].MessageID, err))
			}
			return fail(fmt.Errorf("%w: %s", ErrNacked, msgs[i].MessageID))
		}
		if r, ok := returned[msgs[i].MessageID]; ok {
			if unroutable == nil {
				unroutable = &ReturnedError{Code: r.ReplyCode, Text: r.ReplyText}
			}
			unroutable.MessageIDs = append(unroutable.MessageIDs, msgs[i].MessageID)
			continue
		}
		p.confirm.Record(ctx, time.Since(sent[i]).Seconds())
	}
	if unroutable != nil {
		return fail(unroutable)
	}
	return nil
}

// channelError returns why c's channel closed, or nil while it is open.
// amqp091 sends the reason before it fails the pending confirms.
func channelError(c *confirmChannel) error {
	select {
	case e, ok := <-c.closes:
		if ok && e != nil {
			return e
		}
		return amqp.ErrClosed
	default:
		return nil
	}
}
