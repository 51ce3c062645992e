package runtime

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
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
	pool, err := postgres.Prepare(ctx, postgres.Setup{
		URL: s.Config.DatabaseURL, MaxConns: s.DBMaxConns, Create: s.Config.CreateDatabase,
		Migrate: s.Config.AutoMigrate || command == CommandMigrate, Migrations: s.Migrations, Log: log,
	})
	if err != nil {
		tel.Close(5*time.Second, log)
		return nil, err
	}
	return &Base{Log: log, Telemetry: tel, Pool: pool, Command: command}, nil
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
