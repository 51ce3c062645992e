package runtime

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/shared/config"
	"invoicing/shared/postgres"
	"invoicing/shared/telemetry"
)

// Service names what a service needs set up before it can serve.
type Service struct {
	Name           string
	Config         config.Common
	DBMaxConns     int
	Migrations     fs.FS
	DeploymentMode string // telemetry.ModeServer or telemetry.ModeLambda
}

// Base is what every service process holds once it started: logger,
// telemetry, database pool, and the command it was asked to run. It is set
// up once per process (or Lambda container), never per request.
type Base struct {
	Log       *slog.Logger
	Telemetry *telemetry.Telemetry
	Pool      *pgxpool.Pool
	Command   string
	// invocationStart is when the current Lambda invocation began, in
	// Unix nanoseconds; nil outside Lambda.
	invocationStart *atomic.Int64
}

// Start sets up s: the JSON logger, telemetry from the OTEL_* variables, the
// database (created when asked, migrated under an advisory lock when asked
// or when the command is migrate) and its pool.
func Start(ctx context.Context, s Service, args []string, getenv func(string) string, stdout io.Writer) (*Base, error) {
	command, err := ParseCommand(args)
	if err != nil {
		return nil, err
	}
	log := NewLogger(stdout, s.Config.LogLevel).With("service", s.Name)
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: s.Name, DeploymentMode: s.DeploymentMode, Getenv: getenv})
	if err != nil {
		return nil, err
	}
	var invocationStart *atomic.Int64
	var configure func(*pgxpool.Config)
	if s.DeploymentMode == telemetry.ModeLambda {
		invocationStart = new(atomic.Int64)
		configure = func(c *pgxpool.Config) { c.ShouldPing = pingAfterThaw(invocationStart) }
	}
	pool, err := postgres.Prepare(ctx, postgres.Setup{
		URL: s.Config.DatabaseURL, MaxConns: s.DBMaxConns, Create: s.Config.CreateDatabase,
		Migrate: s.Config.AutoMigrate || command == CommandMigrate, Migrations: s.Migrations, Log: log,
		Configure: configure,
	})
	if err != nil {
		tel.Close(5*time.Second, log)
		return nil, err
	}
	return &Base{Log: log, Telemetry: tel, Pool: pool, Command: command, invocationStart: invocationStart}, nil
}

// pingAfterThaw decides which connections the pool pings before handing
// them out in a Lambda function: those that sat idle through the freeze
// before the current invocation (they were last used before it began),
// besides pgx's default of those idle for over a second. A container may
// be frozen for any length of time, and a connection can die meanwhile
// (an idle timeout of the database, RDS Proxy or a NAT, a failover);
// pinging it costs one round trip per connection per invocation, where
// using it dead would fail the request.
func pingAfterThaw(invocationStart *atomic.Int64) func(context.Context, pgxpool.ShouldPingParams) bool {
	return func(_ context.Context, p pgxpool.ShouldPingParams) bool {
		start := invocationStart.Load()
		return p.IdleDuration > time.Second || (start != 0 && p.IdleDuration > time.Since(time.Unix(0, start)))
	}
}

// startInvocation records that a Lambda invocation begins now.
func (b *Base) startInvocation() {
	if b.invocationStart != nil {
		b.invocationStart.Store(time.Now().UnixNano())
	}
}

// Close closes the pool and flushes telemetry.
func (b *Base) Close() {
	// Closing waits for every connection to finish, and pgx may spend up
	// to 15 s cleaning up one that broke mid-query (an unreachable
	// database); the process is exiting, so it waits only so long.
	closed := make(chan struct{})
	go func() { b.Pool.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(poolCloseTimeout):
		b.Log.Warn("database connections still closing; exiting anyway")
	}
	b.Telemetry.Close(5*time.Second, b.Log)
}

// poolCloseTimeout bounds the wait for database connections at exit.
const poolCloseTimeout = 3 * time.Second
