package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"go.opentelemetry.io/contrib/instrumentation/github.com/aws/aws-lambda-go/otellambda"

	"invoicing/shared/config"
	"invoicing/shared/postgres"
	"invoicing/shared/telemetry"
)

// Mode returns telemetry.ModeLambda inside AWS Lambda, telemetry.ModeServer
// anywhere else.
func Mode(getenv func(string) string) string {
	if getenv(config.LambdaRuntimeAPI) != "" {
		return telemetry.ModeLambda
	}
	return telemetry.ModeServer
}

// Build makes what a service serves, once the base (logger, telemetry,
// pool) is up. It runs once per process or Lambda container. The returned
// close function, when not nil, runs when the process ends, after the
// server has drained.
type Build func(ctx context.Context, base *Base) (Handlers, func(), error)

// Run is a service's whole program: it sets up the base, then runs the
// migrate command, or serves what build returns, as a long-lived server or,
// when AWS_LAMBDA_RUNTIME_API is set, as a Lambda function. The service
// itself does not know which.
func Run(ctx context.Context, s Service, args []string, getenv func(string) string, stdout io.Writer, build Build) error {
	if IsHealthcheck(args) {
		return Healthcheck(ctx, args, s.Config.Port, stdout)
	}
	s.DeploymentMode = Mode(getenv)
	base, err := Start(ctx, s, args, getenv, stdout)
	if err != nil {
		return err
	}
	defer base.Close()
	if base.Command == CommandMigrate {
		return nil
	}
	h, closeFn, err := build(ctx, base)
	if err != nil {
		return err
	}
	if closeFn != nil {
		defer closeFn()
	}
	if s.DeploymentMode == telemetry.ModeLambda {
		migrate := func(ctx context.Context) error {
			return postgres.Migrate(ctx, base.Pool, s.Migrations, base.Log)
		}
		return serveLambda(ctx, base, newLambdaHandler(h, migrate))
	}
	if h.Metrics != nil {
		if err := h.Metrics(); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return Server{
		Log:             base.Log,
		Addr:            ":" + strconv.Itoa(s.Config.Port),
		Handler:         h.HTTP,
		ShutdownTimeout: s.Config.ShutdownTimeout,
		PprofAddr:       s.Config.PprofAddr,
		Workers:         h.Workers,
	}.Serve(ctx)
}

// serveLambda hands invocations to l until the Lambda runtime shuts the
// container down. Telemetry is flushed before each invocation returns,
// since the process may be frozen, or never thawed, right after.
func serveLambda(ctx context.Context, base *Base, l *lambdaHandler) error {
	var handler any = func(ctx context.Context, payload json.RawMessage) (any, error) {
		base.startInvocation()
		return l.Invoke(ctx, payload)
	}
	flush := func() {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := base.Telemetry.ForceFlush(fctx); err != nil && !errors.Is(err, context.Canceled) {
			base.Log.Warn("flush telemetry", "err", err)
		}
	}
	if telemetry.Enabled() {
		handler = otellambda.InstrumentHandler(handler, otellambda.WithFlusher(base.Telemetry))
	}
	base.Log.Info("serving as a Lambda function")
	lambda.StartWithOptions(handler, lambda.WithContext(ctx), lambda.WithEnableSIGTERM(func() {
		base.Log.Info("shutting down")
		flush()
	}))
	return nil
}
