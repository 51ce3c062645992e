package event

import (
	"errors"
	"fmt"
	"regexp"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/currency"
)

// The rules of the event's fields live here, and only here: the orders API
// validates requests with them and Parse checks messages with them, so an
// order the API accepts is an event the consumer accepts.
const (
	// MaxCustomerIDLength counts characters (runes), not bytes: the orders
	// table's CHECK uses length(), which counts characters too.
	MaxCustomerIDLength = 64
	// MaxAmount bounds every amount, in minor units, well inside int64 and
	// PostgreSQL bigint, so sums of bounded items can be checked without
	// overflow.
	MaxAmount = 1_000_000_000_000
)

// The errors read as the end of a sentence that names the field, for both
// an API field error ("customerId: must be ...") and a dead-letter reason.
var (
	errNotUTF8       = errors.New("must be valid UTF-8")
	errTextLength    = fmt.Errorf("must be 1 to %d characters", MaxCustomerIDLength)
	errNotPrintable  = errors.New("must contain printable characters only")
	errAmountRange   = fmt.Errorf("must be an integer number of minor units from 1 to %d", int64(MaxAmount))
	errCurrencyShape = errors.New("must be an ISO 4217 code of three capital letters, like BRL")
)

var currencyShape = regexp.MustCompile(`^[A-Z]{3}$`)

// CheckText is the rule of every free-text identifier of an order (the
// customer id, an item's SKU): valid UTF-8, 1 to MaxCustomerIDLength
// characters, printable only. Printable excludes NUL, which PostgreSQL
// cannot store in text, and control characters that would corrupt logs.
func CheckText(s string) error {
	if !utf8.ValidString(s) {
		return errNotUTF8
	}
	if n := utf8.RuneCountInString(s); n < 1 || n > MaxCustomerIDLength {
		return errTextLength
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return errNotPrintable
		}
	}
	return nil
}

// CheckCustomerID is the rule of customer.id (customerId in the API).
func CheckCustomerID(s string) error { return CheckText(s) }

// CheckAmount is the rule of totalAmount: 1 to MaxAmount minor units.
func CheckAmount(n int64) error {
	if n < 1 || n > MaxAmount {
		return errAmountRange
	}
	return nil
}

// CheckCurrency is the rule of currency: an ISO 4217 code that
// golang.org/x/text knows, in capitals (ParseISO alone also takes "brl").
func CheckCurrency(s string) error {
	if !currencyShape.MatchString(s) {
		return errCurrencyShape
	}
	if _, err := currency.ParseISO(s); err != nil {
		return fmt.Errorf("%q is not an ISO 4217 currency code", s)
	}
	return nil
}
