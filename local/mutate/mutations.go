package main

// mutation is one planted bug: Old, found exactly once in File, becomes New;
// the tests of Package matching Run must then fail.
type mutation struct {
	Name    string
	File    string
	Old     string
	New     string
	Package string
	Run     string
}

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
}
