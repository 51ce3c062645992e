package rabbit

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
)

// instrumentation is the name of this package's tracer and meter.
const instrumentation = "invoicing/shared/rabbit"

// HeaderCarrier carries W3C trace context (traceparent, tracestate) in AMQP
// headers, the header names Node's amqplib instrumentation uses too.
type HeaderCarrier amqp.Table

// Get returns a header as a string; amqplib sends them as long strings.
func (c HeaderCarrier) Get(key string) string {
	switch v := c[key].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// Set stores a header.
func (c HeaderCarrier) Set(key, value string) { c[key] = value }

// Keys lists the headers.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Extract returns ctx with the trace context found in a delivery's headers.
func Extract(ctx context.Context, headers amqp.Table) context.Context {
	if headers == nil {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, HeaderCarrier(headers))
}

// MessagingAttributes are the messaging semantic-convention attributes of
// one message on exchange/routingKey.
func MessagingAttributes(exchange, routingKey, messageID string, bodySize int) []attribute.KeyValue {
	return []attribute.KeyValue{
		semconv.MessagingSystemRabbitMQ,
		semconv.MessagingDestinationName(exchange),
		semconv.MessagingRabbitMQDestinationRoutingKey(routingKey),
		semconv.MessagingMessageID(messageID),
		semconv.MessagingMessageBodySize(bodySize),
	}
}
