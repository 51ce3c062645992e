// Package config reads service settings from the environment once, at start,
// collecting every invalid value into one error so an operator sees them all.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Common holds the settings every service shares. The variable names match
// the original Node.js services (PORT, DATABASE_URL, BROKER_URL).
type Common struct {
	Port            int
	DatabaseURL     string
	BrokerURL       string
	ShutdownTimeout time.Duration
	BodyLimit       int64
	LogLevel        string
	AutoMigrate     bool
	CreateDatabase  bool
	PprofAddr       string
}

// LocalBrokerURL is the broker address used when BROKER_URL is unset. The
// guest/guest account only works on loopback and is meant for local use;
// deployments set BROKER_URL from a secret store.
const LocalBrokerURL = "amqp://guest:guest@127.0.0.1:5672/"

// LambdaRuntimeAPI is set by AWS Lambda (and its emulator) in every
// function's environment. Its presence makes a binary a Lambda function,
// and changes some defaults: one request at a time per container wants a
// small pool, and migrations run once per deploy, not at every cold start.
const LambdaRuntimeAPI = "AWS_LAMBDA_RUNTIME_API"

// ReadCommon reads the shared settings with the service's own defaults.
func ReadCommon(r *Reader, defaultPort int, defaultDatabase string) Common {
	return Common{
		Port:            r.Int("PORT", defaultPort, 0, 65535),
		DatabaseURL:     r.URL("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/"+defaultDatabase+"?sslmode=disable", "postgres", "postgresql"),
		BrokerURL:       r.URL("BROKER_URL", LocalBrokerURL, "amqp", "amqps"),
		ShutdownTimeout: r.Duration("SHUTDOWN_TIMEOUT", 25*time.Second, time.Second, 10*time.Minute),
		BodyLimit:       int64(r.Int("BODY_LIMIT_BYTES", 1<<20, 1, 64<<20)),
		LogLevel:        r.OneOf("LOG_LEVEL", "info", "debug", "info", "warn", "error"),
		AutoMigrate:     r.Bool("AUTO_MIGRATE", !r.InLambda()),
		CreateDatabase:  r.Bool("CREATE_DATABASE", false),
		PprofAddr:       r.LoopbackAddr("PPROF_ADDR", ""),
	}
}

// Reader reads typed values from a getenv function and remembers failures.
type Reader struct {
	getenv func(string) string
	errs   []error
}

// NewReader returns a Reader over getenv (os.Getenv in production, a map in tests).
func NewReader(getenv func(string) string) *Reader { return &Reader{getenv: getenv} }

// InLambda reports whether the process runs as an AWS Lambda function.
func (r *Reader) InLambda() bool { return r.getenv(LambdaRuntimeAPI) != "" }

// ByMode returns server in a long-lived process, lambda in a Lambda function.
func ByMode[T any](r *Reader, server, lambda T) T {
	if r.InLambda() {
		return lambda
	}
	return server
}

// Err returns every invalid setting seen so far, or nil.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

func (r *Reader) fail(name, value, want string) {
	r.errs = append(r.errs, fmt.Errorf("config: %s=%q is invalid: want %s", name, value, want))
}

func (r *Reader) lookup(name string) (string, bool) {
	v := strings.TrimSpace(r.getenv(name))
	return v, v != ""
}

// String returns the variable or def when unset.
func (r *Reader) String(name, def string) string {
	if v, ok := r.lookup(name); ok {
		return v
	}
	return def
}

// OneOf returns the variable when it is one of allowed, def when unset.
func (r *Reader) OneOf(name, def string, allowed ...string) string {
	v, ok := r.lookup(name)
	if !ok {
		return def
	}
	for _, a := range allowed {
		if strings.EqualFold(v, a) {
			return a
		}
	}
	r.fail(name, v, "one of "+strings.Join(allowed, ", "))
	return def
}

// Int returns the variable as an integer within [min, max].
func (r *Reader) Int(name string, def, min, max int) int {
	v, ok := r.lookup(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min || n > max {
		r.fail(name, v, fmt.Sprintf("an integer from %d to %d", min, max))
		return def
	}
	return n
}

// Duration returns the variable parsed by time.ParseDuration within [min, max].
func (r *Reader) Duration(name string, def, min, max time.Duration) time.Duration {
	v, ok := r.lookup(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < min || d > max {
		r.fail(name, v, fmt.Sprintf("a duration from %s to %s, like 5s", min, max))
		return def
	}
	return d
}

// Bool returns the variable parsed by strconv.ParseBool.
func (r *Reader) Bool(name string, def bool) bool {
	v, ok := r.lookup(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(name, v, "true or false")
		return def
	}
	return b
}

// LoopbackAddr returns the variable when it is host:port with a loopback
// host (127.0.0.0/8, ::1, localhost). It is for listeners that must never
// face the network, like pprof, which reveals memory contents and lets any
// caller make the process spend CPU: ":6060" or "0.0.0.0:6060" would open
// it on every interface, so they are errors, not a silent downgrade.
func (r *Reader) LoopbackAddr(name, def string) string {
	v, ok := r.lookup(name)
	if !ok {
		return def
	}
	host, port, err := net.SplitHostPort(v)
	if err == nil {
		var n int
		n, err = strconv.Atoi(port)
		if err == nil && (n < 0 || n > 65535) {
			err = errors.New("port out of range")
		}
	}
	if err == nil && (strings.EqualFold(host, "localhost") || isLoopbackIP(host)) {
		return v
	}
	r.fail(name, v, "a loopback host:port, like 127.0.0.1:6060, [::1]:6060 or localhost:6060")
	return def
}

func isLoopbackIP(host string) bool {
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// URL returns the variable when it parses as a URL with one of the schemes.
func (r *Reader) URL(name, def string, schemes ...string) string {
	v, ok := r.lookup(name)
	if !ok {
		return def
	}
	u, err := url.Parse(v)
	if err == nil {
		for _, s := range schemes {
			if u.Scheme == s && u.Host != "" {
				return v
			}
		}
	}
	r.fail(name, redact(v), "a URL with scheme "+strings.Join(schemes, " or "))
	return def
}

// redact hides a password so a rejected URL can be shown in logs.
func redact(v string) string {
	u, err := url.Parse(v)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// Variables returns every variable read asks getenv for, in order of first
// use, with all of them unset. Services expose it so deployment files
// (compose, task definitions) can be checked against what the code reads.
func Variables(read func(getenv func(string) string)) []string {
	var names []string
	seen := map[string]bool{}
	read(func(name string) string {
		if name == LambdaRuntimeAPI {
			return "" // set by the platform, never by a deployment file
		}
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
		return ""
	})
	return names
}
