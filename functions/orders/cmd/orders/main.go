// Command orders is the orders service: the HTTP API that stores orders and
// their order.created events in one transaction, and the outbox relay that
// publishes those events to RabbitMQ.
//
//	orders            serve the API and run the relay
//	orders migrate    apply the database migrations and exit
package main

import (
	"invoicing/functions/orders"
	"invoicing/shared/runtime"
)

func main() { runtime.Main("orders", orders.Run) }
