package runtime

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"invoicing/shared/secrets"
	"time"
)

// RunFunc is a service's whole program, with its environment as arguments.
type RunFunc func(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error

// Main runs run with the process's environment and a context cancelled by
// SIGINT or SIGTERM, and exits 1 when it fails. Settings passed by
// reference (NAME_SECRET_ARN) are read from Secrets Manager first.
func Main(name string, run RunFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	getenv, err := secrets.Getenv(ctx, os.Environ(), os.Getenv)
	if err == nil {
		err = run(ctx, os.Args[1:], getenv, os.Stdout)
	}
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// Commands a service binary accepts as its first argument.
const (
	CommandServe   = "serve"
	CommandMigrate = "migrate"
	// CommandHealthcheck asks the server running beside it whether it is
	// alive, for a container HEALTHCHECK in an image with no shell or curl.
	CommandHealthcheck = "healthcheck"
)

// ParseCommand returns the command named by args, serve when none is.
func ParseCommand(args []string) (string, error) {
	if len(args) == 0 {
		return CommandServe, nil
	}
	switch args[0] {
	case CommandServe, CommandMigrate, CommandHealthcheck:
		return args[0], nil
	}
	return "", fmt.Errorf("unknown command %q (want %s, %s or %s)", args[0], CommandServe, CommandMigrate, CommandHealthcheck)
}

// IsHealthcheck tells whether args ask for the healthcheck command. A
// service checks it before Start, so a probe never touches the database,
// the broker or telemetry.
func IsHealthcheck(args []string) bool {
	return len(args) > 0 && args[0] == CommandHealthcheck
}

// HealthcheckTimeout bounds one probe; container runtimes give the command
// a timeout of their own, but a hung probe must not pile up.
const HealthcheckTimeout = 3 * time.Second

// Healthcheck GETs http://127.0.0.1:port/health/live, or the /health path
// args name after the command ("healthcheck /health/ready", for compose's
// readiness check), and returns nil when it answers 200, an error
// otherwise (the binary then exits 1).
func Healthcheck(ctx context.Context, args []string, port int, stdout io.Writer) error {
	path := "/health/live"
	if len(args) > 1 {
		path = args[1]
	}
	if path != "/health" && !strings.HasPrefix(path, "/health/") {
		return fmt.Errorf("healthcheck: path %q is not a /health path", path)
	}
	ctx, cancel := context.WithTimeout(ctx, HealthcheckTimeout)
	defer cancel()
	url := "http://127.0.0.1:" + strconv.Itoa(port) + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: GET %s answered %s", url, resp.Status)
	}
	fmt.Fprintf(stdout, "healthcheck: GET %s answered %s\n", url, resp.Status)
	return nil
}
