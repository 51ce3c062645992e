// Package migrations embeds the invoices database schema, applied at start.
package migrations

import "embed"

// FS holds the goose SQL migrations.
//
//go:embed *.sql
var FS embed.FS
