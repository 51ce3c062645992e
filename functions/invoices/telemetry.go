package invoices

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"invoicing/shared/rabbit"
)

const instrumentation = "invoicing/functions/invoices"

var tracer = otel.Tracer(instrumentation)

// Instruments of the consumer. The global meter provider forwards them to
// the one telemetry.Setup installs, whenever that happens.
var (
	meter               = otel.Meter(instrumentation)
	messagesProcessed   = must(meter.Int64Counter("messaging.process.messages", metric.WithUnit("{message}"), metric.WithDescription("Messages processed, by outcome: invoiced, duplicate, dead_lettered")))
	messagesRedelivered = must(meter.Int64Counter("messaging.process.redelivered", metric.WithUnit("{message}"), metric.WithDescription("Deliveries the broker marked as redelivered")))
	orderToInvoice      = must(meter.Float64Histogram("invoices.order_to_invoice.duration", metric.WithUnit("s"), metric.WithDescription("Invoice issuedAt minus order createdAt"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)))
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err) // only for invalid instrument definitions, a programming error
	}
	return v
}

// registerLag reports the consumer lag: messages ready in queue "orders"
// that no consumer has taken yet, read from the broker at each collection.
func registerLag(session *rabbit.Session) error {
	lag, err := meter.Int64ObservableGauge("messaging.consumer.lag", metric.WithUnit("{message}"),
		metric.WithDescription("Messages ready in queue orders, not yet delivered to a consumer"))
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ch, err := session.Channel(ctx)
		if err != nil {
			return err
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(rabbit.Queue, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("measure consumer lag: %w", err)
		}
		o.ObserveInt64(lag, int64(q.Messages))
		return nil
	}, lag)
	return err
}
