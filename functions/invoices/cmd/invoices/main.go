// Command invoices is the invoices service: the consumer that turns every
// order.created event into exactly one invoice, and the read API over them.
//
//	invoices            serve the API and run the consumer
//	invoices migrate    apply the database migrations and exit
package main

import (
	"invoicing/functions/invoices"
	"invoicing/shared/runtime"
)

func main() { runtime.Main("invoices", invoices.Run) }
