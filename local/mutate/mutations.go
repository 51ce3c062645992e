package main

// mutation is one planted bug: Old, found exactly once in File, becomes New;
// the tests of Package matching Run must then fail.
type mutation struct {
	Name    string
	File    string
	Old     string
	New     string
	Also    []edit // further edits of the same file, for bugs that take more than one
	Package string
	Run     string
}

// edit replaces Old, found exactly once, with New.
type edit struct{ Old, New string }

var mutations = []mutation{
	{
		Name:    "invoice numbers skip one per batch",
		File:    "functions/invoices/store.go",
		Old:     "$9::bigint + row_number() OVER (ORDER BY ord) AS seq",
		New:     "$9::bigint + 1 + row_number() OVER (ORDER BY ord) AS seq",
		Package: "./functions/invoices/",
		Run:     "TestEveryEventBecomesOneInvoice",
	},
	{
		Name:    "idempotency key replays a different body",
		File:    "functions/orders/store.go",
		Old:     "case !bytes.Equal(hash, idem.Hash):",
		New:     "case !bytes.Equal(hash, hash):",
		Package: "./functions/orders/",
		Run:     "TestIdempotencyKey",
	},
	{
		Name:    "unconfirmed COMMIT answered 503 without looking",
		File:    "functions/orders/writer.go",
		Old:     "\t\tw.settle(ctx, live, unknown)",
		New:     "\t\tfor _, p := range live {\n\t\t\tp.done <- notStored(unknown)\n\t\t}",
		Package: "./functions/orders/",
		Run:     "TestUnconfirmedCommitOfASharedBatchIs201",
	},
	{
		Name:    "per-order retry after the connection broke",
		File:    "functions/orders/writer.go",
		Old:     "case err == nil || len(live) == 1 || !postgres.IsDataRejected(err):",
		New:     "case err == nil || len(live) == 1:",
		Package: "./functions/orders/",
		Run:     "TestNoPerRowRetryWhenTheConnectionBreaks",
	},
	{
		Name:    "retry commits an order whose client left",
		File:    "functions/orders/writer.go",
		Old:     "\t\tcase p.ctx.Err() != nil:",
		New:     "\t\tcase false:",
		Package: "./functions/orders/",
		Run:     "TestNoRetryForAClientThatLeft",
	},
	{
		Name:    "create batch without a deadline",
		File:    "functions/orders/writer.go",
		Old:     "ctx, cancel := context.WithDeadline(context.WithoutCancel(live[0].ctx), deadline)",
		New:     "ctx, cancel := context.WithCancel(context.WithoutCancel(live[0].ctx))",
		Package: "./functions/orders/",
		Run:     "TestStalledDatabaseAnswersPromptly",
	},
	{
		Name:    "item sum wraps around int64",
		File:    "functions/orders/order.go",
		Old:     "sum, sumTooLarge = addLine(sum, *it.Quantity, *it.UnitPrice)",
		New:     "sum += *it.Quantity * *it.UnitPrice",
		Package: "./functions/orders/",
		Run:     "TestBadInput",
	},
	{
		Name:    "customer id limit counted in bytes",
		File:    "shared/event/rules.go",
		Old:     "if n := utf8.RuneCountInString(s); n < 1 || n > MaxCustomerIDLength {",
		New:     "if n := len(s); n < 1 || n > MaxCustomerIDLength {",
		Package: "./functions/invoices/",
		Run:     "TestEveryAcceptedOrderIsInvoiced",
	},
	{
		Name:    "orders not ready while the broker is away",
		File:    "functions/orders/routes.go",
		Old:     `ready := web.Ready(log, checks, "postgres")`,
		New:     `ready := web.Ready(log, checks, "postgres", "rabbitmq")`,
		Package: "./functions/orders/",
		Run:     "TestReadyWhileTheBrokerIsUnreachable",
	},
	{
		Name:    "health answer leaks the driver error",
		File:    "shared/web/health.go",
		Old:     "results[name], ready = checkUnavailable, false",
		New:     "results[name], ready = err.Error(), false",
		Package: "./functions/orders/",
		Run:     "TestNotReadyWithoutTheDatabase",
	},
	{
		Name:    "pprof on any address",
		File:    "shared/config/config.go",
		Old:     `if err == nil && (strings.EqualFold(host, "localhost") || isLoopbackIP(host)) {`,
		New:     `if err == nil && (strings.EqualFold(host, "localhost") || isLoopbackIP(host) || host != "") {`,
		Package: "./shared/config/",
		Run:     "TestPprofAddrIsLoopbackOnly",
	},
	{
		Name:    "panic in the consumer's one-by-one fallback",
		File:    "functions/invoices/consumer.go",
		Old:     `c.Log.WarnContext(ctx, "batch refused; issuing one by one", "deliveries", len(good), "err", batchErr)`,
		New:     `c.Log.WarnContext(ctx, "batch refused; issuing one by one", "deliveries", len(good), "err", batchErr); panic("planted")`,
		Package: "./functions/invoices/",
		Run:     "TestDataErrorDeadLettersOnlyItsMessage",
	},
	{
		Name:    "transient database errors dead-lettered",
		File:    "functions/invoices/consumer.go",
		Old:     "return errors.Is(err, event.ErrInvalid) || postgres.IsDataError(err)",
		New:     "return !postgres.IsUnavailable(err)",
		Package: "./functions/invoices/",
		Run:     "TestTransientDatabaseErrorDeadLettersNothing",
	},
	{
		Name:    "consumer acks before the invoices commit",
		File:    "functions/invoices/consumer.go",
		Old:     "issued, err := c.issue(batchCtx, stop, attempt > 0, heldEvents)",
		New:     "_ = ch.Ack(held[len(held)-1].DeliveryTag, true)\n\t\tissued, err := c.issue(batchCtx, stop, attempt > 0, heldEvents)",
		Package: "./functions/invoices/",
		Run:     "TestTransientDatabaseErrorDeadLettersNothing",
	},
	{
		Name:    "consumer keeps taking deliveries during a database outage",
		File:    "functions/invoices/consumer.go",
		Old:     "\t\tpause()\n",
		New:     "\n",
		Package: "./functions/invoices/",
		Run:     "TestDatabaseOutageDeadLettersNothing",
	},
	{
		Name:    "consumer starts while the database is down",
		File:    "functions/invoices/consumer.go",
		Old:     "if err := c.databaseReady(ctx); err != nil {\n\t\treturn fmt.Errorf(\"database unavailable; not consuming",
		New:     "if err := c.databaseReady(ctx); err != nil && false {\n\t\treturn fmt.Errorf(\"database unavailable; not consuming",
		Package: "./functions/invoices/",
		Run:     "TestRestartsDuringDatabaseOutageSpendNoDeliveries",
	},
	{
		Name:    "SIGTERM abandons the batch in hand",
		File:    "functions/invoices/consumer.go",
		Old:     "c.handle(context.WithoutCancel(ctx), ctx, ch, batch, pause)",
		New:     "c.handle(ctx, ctx, ch, batch, pause)",
		Package: "./functions/invoices/",
		Run:     "TestShutdownFinishesBatchInHand",
	},
	{
		Name:    "batch in hand committed but not acked at shutdown",
		File:    "functions/invoices/consumer.go",
		Old:     "if err := ch.Ack(held[len(held)-1].DeliveryTag, true); err != nil {",
		New:     "if stop.Err() != nil {\n\t\t\t\treturn nil\n\t\t\t}\n\t\t\tif err := ch.Ack(held[len(held)-1].DeliveryTag, true); err != nil {",
		Package: "./functions/invoices/",
		Run:     "TestConsumerStopsGracefully|TestShutdownFinishesBatchInHand",
	},
	{
		Name:    "relay stops waiting for publisher confirms",
		File:    "shared/rabbit/rabbit.go",
		Old:     "\t\tfor waiting := true; waiting; {",
		New:     "\t\tfor waiting := false; waiting; {",
		Also:    []edit{{Old: "\t\tif !dc.Acked() {", New: "\t\tif false {"}},
		Package: "./functions/orders/",
		Run:     "^TestRelayKeepsRowsTheBrokerNacks$",
	},
	{
		Name:    "relay claim without SKIP LOCKED",
		File:    "shared/outbox/relay.go",
		Old:     "    FOR UPDATE SKIP LOCKED)",
		New:     "    FOR UPDATE)",
		Package: "./functions/orders/",
		Run:     "^TestTwoRelaysPublishEachRowOnce$",
	},
	{
		Name:    "publishes not mandatory",
		File:    "shared/rabbit/rabbit.go",
		Old:     "m.Exchange, m.RoutingKey, true, false, amqp.Publishing{",
		New:     "m.Exchange, m.RoutingKey, false, false, amqp.Publishing{",
		Package: "./functions/orders/",
		Run:     "^TestRelaySetsAsidePoisonRows$",
	},
	{
		Name:    "returned messages ignored",
		File:    "shared/rabbit/rabbit.go",
		Old:     "\t\treturned[r.MessageId] = r",
		New:     "\t\t_ = r",
		Package: "./functions/orders/",
		Run:     "^TestRelaySetsAsidePoisonRows$",
	},
	{
		Name:    "unpublishable rows never set aside",
		File:    "shared/outbox/relay.go",
		Old:     "\tif attempts < limit {",
		New:     "\tif true {",
		Package: "./functions/orders/",
		Run:     "^TestRelaySetsAsidePoisonRows$",
	},
	{
		Name:    "publish timeout does not abandon a stalled connection",
		File:    "shared/rabbit/rabbit.go",
		Old:     "\tstop := context.AfterFunc(ctx, func() { p.session.Abandon(c.conn) })",
		New:     "\tstop := func() bool { return true }",
		Package: "./functions/orders/",
		Run:     "^TestRelayPublishTimesOutOnStalledBroker$",
	},
	{
		Name:    "consumer does not re-declare a deleted queue",
		File:    "functions/invoices/consumer.go",
		Old:     "\tif err := c.Session.Redeclare(ctx); err != nil {\n\t\treturn err\n\t}\n\tch, err := c.Session.Channel(ctx)",
		New:     "\tch, err := c.Session.Channel(ctx)",
		Package: "./functions/invoices/",
		Run:     "^TestTopologyDeletedUnderRunningServices$",
	},
	{
		Name:    "relay does not re-declare after a returned message",
		File:    "shared/rabbit/rabbit.go",
		Old:     "\t\tif derr := p.session.Redeclare(ctx); derr != nil {",
		New:     "\t\tif derr := error(nil); derr != nil {",
		Package: "./functions/invoices/",
		Run:     "^TestTopologyDeletedUnderRunningServices$",
	},
}
