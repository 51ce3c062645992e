package runtime

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// RunFunc is a service's whole program, with its environment as arguments.
type RunFunc func(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error

// Main runs run with the process's environment and a context cancelled by
// SIGINT or SIGTERM, and exits 1 when it fails.
func Main(name string, run RunFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
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
)

// ParseCommand returns the command named by args, serve when none is.
func ParseCommand(args []string) (string, error) {
	if len(args) == 0 {
		return CommandServe, nil
	}
	switch args[0] {
	case CommandServe, CommandMigrate:
		return args[0], nil
	}
	return "", fmt.Errorf("unknown command %q (want %s or %s)", args[0], CommandServe, CommandMigrate)
}
