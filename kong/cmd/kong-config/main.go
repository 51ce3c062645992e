// Command kong-config renders the gateway's declarative configuration.
//
//	kong-config -o kong/kong.yml                      the local (compose) file
//	kong-config -target container -orders orders.internal:3333 -invoices invoices.internal:3334
//	kong-config -target lambda -region us-east-1 -orders-function orders -invoices-function invoices
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"invoicing/kong"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kong-config:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	def := kong.Local()
	fs := flag.NewFlagSet("kong-config", flag.ContinueOnError)
	out := fs.String("o", "", "write to this file instead of stdout")
	target := fs.String("target", string(def.Target), "container or lambda")
	orders := fs.String("orders", net.JoinHostPort(def.Orders.Host, strconv.Itoa(def.Orders.Port)), "orders upstream host:port (container)")
	invoices := fs.String("invoices", net.JoinHostPort(def.Invoices.Host, strconv.Itoa(def.Invoices.Port)), "invoices upstream host:port (container)")
	region := fs.String("region", "", "AWS region of the functions (lambda)")
	ordersFn := fs.String("orders-function", "", "orders function name or ARN (lambda)")
	invoicesFn := fs.String("invoices-function", "", "invoices function name or ARN (lambda)")
	origins := fs.String("origins", strings.Join(def.AllowedOrigins, ","), "comma-separated CORS origins")
	bodyLimit := fs.Int64("body-limit", def.BodyLimitBytes, "largest request body in bytes (the services' BODY_LIMIT_BYTES)")
	rate := fs.Int("rate-per-minute", def.RateLimitPerMinute, "requests per minute per client on each Kong node")
	keyAuth := fs.Bool("key-auth", false, "require an API key (header apikey) on the API routes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o := def
	o.Target = kong.Target(*target)
	if o.Target == kong.TargetLambda {
		o = kong.Lambda(*region, *ordersFn, *invoicesFn)
	} else {
		var err error
		if o.Orders, err = backend(*orders); err != nil {
			return err
		}
		if o.Invoices, err = backend(*invoices); err != nil {
			return err
		}
	}
	o.AllowedOrigins = strings.Split(*origins, ",")
	o.BodyLimitBytes, o.RateLimitPerMinute, o.KeyAuthEnabled = *bodyLimit, *rate, *keyAuth
	b, err := kong.Render(o)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = stdout.Write(b)
		return err
	}
	return os.WriteFile(*out, b, 0o644)
}

func backend(hostport string) (kong.Backend, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return kong.Backend{}, fmt.Errorf("upstream %q: %w", hostport, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return kong.Backend{}, fmt.Errorf("upstream %q: port: %w", hostport, err)
	}
	return kong.Backend{Host: host, Port: n}, nil
}
