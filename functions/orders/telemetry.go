package orders

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// ordersCreated counts orders committed (replays of an idempotent request
// are not counted again). The global meter provider forwards it to the one
// telemetry.Setup installs.
var ordersCreated, _ = otel.Meter("invoicing/functions/orders").Int64Counter("orders.created",
	metric.WithUnit("{order}"), metric.WithDescription("Orders stored"))
