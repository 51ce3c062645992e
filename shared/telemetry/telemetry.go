// Package telemetry sets up OpenTelemetry tracing and metrics from the
// standard OTEL_* environment variables, once per process (or Lambda
// container), and carries trace ids into the JSON logs.
//
// Nothing is exported unless an OTLP endpoint is configured
// (OTEL_EXPORTER_OTLP_ENDPOINT, or the per-signal _TRACES_ / _METRICS_
// variants); OTEL_SDK_DISABLED=true turns everything off. Headers (Grafana
// Cloud's Authorization), protocol (http/protobuf, the default, or grpc),
// service name, resource attributes, samplers and batch and export intervals
// follow the specification's variables, read by the SDK itself.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	lambdadetector "go.opentelemetry.io/contrib/detectors/aws/lambda"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// DeploymentModeKey is the resource attribute telling how the service runs:
// "server" (a long-lived process) or "lambda".
const DeploymentModeKey = attribute.Key("deployment.mode")

// Deployment modes, for Config.DeploymentMode.
const (
	ModeServer = "server"
	ModeLambda = "lambda"
)

// Config names the service; the environment can override the name.
type Config struct {
	ServiceName    string
	DeploymentMode string
	Getenv         func(string) string
}

// Telemetry holds the process's providers. They are also installed as the
// otel globals, which the instrumentation libraries use.
type Telemetry struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	tracing        *sdktrace.TracerProvider
	metering       *sdkmetric.MeterProvider
}

// Setup builds the providers and installs them with the W3C trace-context
// and baggage propagators. Call it once; call Shutdown before exit.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t := &Telemetry{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: metricnoop.NewMeterProvider()}
	env := cfg.Getenv
	if strings.EqualFold(env("OTEL_SDK_DISABLED"), "true") {
		otel.SetTracerProvider(t.TracerProvider)
		otel.SetMeterProvider(t.MeterProvider)
		return t, nil
	}
	opts := []resource.Option{
		resource.WithAttributes(semconv.ServiceName(cfg.ServiceName), DeploymentModeKey.String(cfg.DeploymentMode)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessRuntimeName(),
	}
	if cfg.DeploymentMode == ModeLambda {
		// cloud.* and faas.* (function name, version, instance, memory);
		// outside AWS (an emulator without those variables) there are none.
		if faas, err := lambdadetector.NewResourceDetector().Detect(ctx); err == nil {
			opts = append(opts, resource.WithAttributes(faas.Attributes()...))
		}
	}
	res, err := resource.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	if exporting(env, "TRACES") {
		exp, err := traceExporter(ctx, protocol(env, "TRACES"))
		if err != nil {
			return nil, err
		}
		// The sampler comes from OTEL_TRACES_SAMPLER(_ARG), parent-based
		// always-on by default; the batcher from OTEL_BSP_*.
		t.tracing = sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithBatcher(exp))
		t.TracerProvider = t.tracing
	}
	if exporting(env, "METRICS") {
		exp, err := metricExporter(ctx, protocol(env, "METRICS"))
		if err != nil {
			return nil, err
		}
		// The export interval comes from OTEL_METRIC_EXPORT_INTERVAL.
		t.metering = sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)))
		t.MeterProvider = t.metering
	}
	otel.SetTracerProvider(t.TracerProvider)
	otel.SetMeterProvider(t.MeterProvider)
	return t, nil
}

func exporting(env func(string) string, signal string) bool {
	if strings.EqualFold(env("OTEL_"+signal+"_EXPORTER"), "none") {
		return false
	}
	return env("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || env("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") != ""
}

func protocol(env func(string) string, signal string) string {
	if p := env("OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL"); p != "" {
		return p
	}
	if p := env("OTEL_EXPORTER_OTLP_PROTOCOL"); p != "" {
		return p
	}
	return "http/protobuf"
}

func traceExporter(ctx context.Context, proto string) (sdktrace.SpanExporter, error) {
	switch proto {
	case "http/protobuf":
		return otlptracehttp.New(ctx)
	case "grpc":
		return otlptracegrpc.New(ctx)
	}
	return nil, fmt.Errorf("telemetry: OTLP protocol %q is not supported (use http/protobuf or grpc)", proto)
}

func metricExporter(ctx context.Context, proto string) (sdkmetric.Exporter, error) {
	switch proto {
	case "http/protobuf":
		return otlpmetrichttp.New(ctx)
	case "grpc":
		return otlpmetricgrpc.New(ctx)
	}
	return nil, fmt.Errorf("telemetry: OTLP protocol %q is not supported (use http/protobuf or grpc)", proto)
}

// ForceFlush exports what is buffered; Lambda mode calls it at the end of
// every invocation, since the container may be frozen afterwards.
func (t *Telemetry) ForceFlush(ctx context.Context) error {
	var errs []error
	if t.tracing != nil {
		errs = append(errs, t.tracing.ForceFlush(ctx))
	}
	if t.metering != nil {
		errs = append(errs, t.metering.ForceFlush(ctx))
	}
	return errors.Join(errs...)
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	if t.tracing != nil {
		errs = append(errs, t.tracing.Shutdown(ctx))
	}
	if t.metering != nil {
		errs = append(errs, t.metering.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// Close flushes and stops the providers within timeout, logging a failure;
// services defer it so telemetry is flushed on every exit path.
func (t *Telemetry) Close(timeout time.Duration, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := t.Shutdown(ctx); err != nil {
		log.Warn("telemetry flush failed", "err", err)
	}
}

// Enabled reports whether Setup installed a tracer or meter provider that
// exports. Instrumentation that costs CPU on every request or statement
// (otelhttp, otelpgx) is left out when it is not, so that a service without
// an OTLP endpoint pays nothing for telemetry. Before Setup it reports true.
func Enabled() bool {
	_, noTraces := otel.GetTracerProvider().(tracenoop.TracerProvider)
	_, noMetrics := otel.GetMeterProvider().(metricnoop.MeterProvider)
	return !noTraces || !noMetrics
}
