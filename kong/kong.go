// Package kong renders the gateway's declarative (DB-less) Kong 3.x
// configuration for either target: the services as containers (compose,
// ECS) or as AWS Lambda functions. Kong cannot read the environment inside a
// declarative file, so the targets are inputs here; kong/kong.yml is the
// rendered local (compose) configuration, and the infra program renders its
// own with the same package.
package kong

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Target is where Kong sends the requests it routes.
type Target string

const (
	// TargetContainer proxies to the services over HTTP (host:port).
	TargetContainer Target = "container"
	// TargetLambda invokes the functions with the aws-lambda plugin, in
	// the API Gateway REST (payload 1.0) shape, with the credentials of
	// Kong's own role (ECS task role or instance profile).
	TargetLambda Target = "lambda"
)

// Backend is one service behind the gateway.
type Backend struct {
	Host     string // TargetContainer: DNS name or address
	Port     int    // TargetContainer
	Function string // TargetLambda: function name or ARN
}

// Consumer is an API client allowed in when key authentication is on.
type Consumer struct {
	Username string
	Key      string
}

// Options are the inputs of one rendering.
type Options struct {
	Target   Target
	Orders   Backend
	Invoices Backend
	// Region is the functions' AWS region (TargetLambda).
	Region string
	// AllowedOrigins are the browser origins CORS lets in; never "*".
	AllowedOrigins []string
	// BodyLimitBytes should equal the services' BODY_LIMIT_BYTES, so the
	// gateway refuses (413) exactly what the services would refuse.
	BodyLimitBytes int64
	// RateLimitPerMinute is the limit per client (consumer when key
	// authentication identifies one, otherwise client IP) on ONE Kong
	// node: the policy is "local", see RateLimitPolicy.
	RateLimitPerMinute int
	// KeyAuth, when set, requires an API key (header "apikey") on every
	// API route; health routes stay open for load balancer probes.
	KeyAuth []Consumer
	// KeyAuthEnabled turns key authentication on even with no consumer
	// in this file (consumers then come from elsewhere).
	KeyAuthEnabled bool
}

// Names shared with the services and the tests.
const (
	// CorrelationIDHeader must match web.CorrelationIDHeader, which the
	// services log (a test checks it).
	CorrelationIDHeader = "X-Correlation-ID"
	// UpstreamHealthPath is what each service's health route is rewritten
	// to: readiness, so Kong and load balancers stop sending work to a
	// service that cannot do it.
	UpstreamHealthPath = "/health/ready"
	// APIKeyHeader is the header key-auth reads the key from.
	APIKeyHeader = "apikey"
	// RateLimitPolicy keeps counters in each node's memory: no extra
	// dependency, no added latency, and DB-less Kong cannot use "cluster".
	// With N nodes a client may get up to N times RateLimitPerMinute, so
	// the infra program divides the limit by its node count; exact
	// cluster-wide limits need policy "redis" and a shared Redis.
	RateLimitPolicy = "local"
)

// HealthPath is the gateway path of a service's health check.
func HealthPath(service string) string { return "/health/" + service }

// Local returns the options of the checked-in kong/kong.yml: the compose
// stack (services named orders and invoices on their default ports).
func Local() Options {
	return Options{
		Target:             TargetContainer,
		Orders:             Backend{Host: "orders", Port: 3333},
		Invoices:           Backend{Host: "invoices", Port: 3334},
		AllowedOrigins:     []string{"http://localhost:3000", "http://127.0.0.1:3000"},
		BodyLimitBytes:     1 << 20,
		RateLimitPerMinute: 600,
	}
}

// Lambda returns options for the Lambda target with the given functions.
func Lambda(region, ordersFunction, invoicesFunction string) Options {
	o := Local()
	o.Target = TargetLambda
	o.Region = region
	o.Orders = Backend{Function: ordersFunction}
	o.Invoices = Backend{Function: invoicesFunction}
	return o
}

// api describes one service's public routes; the tests prove it against
// the services' real routers.
type api struct {
	name    string
	backend Backend
	routes  []apiRoute
}

type apiRoute struct {
	suffix  string // route name suffix
	path    string // Kong path: "~" starts a regex, anything else a prefix
	methods []string
}

func (o Options) apis() []api {
	return []api{
		{name: "orders", backend: o.Orders, routes: []apiRoute{
			{"collection", `~/orders$`, []string{"GET", "POST", "OPTIONS"}},
			{"item", "/orders/", []string{"GET", "OPTIONS"}},
		}},
		{name: "invoices", backend: o.Invoices, routes: []apiRoute{
			{"collection", `~/invoices$`, []string{"GET", "OPTIONS"}},
			{"item", "/invoices/", []string{"GET", "OPTIONS"}},
		}},
	}
}

// The rendered document. Field order is output order; the tests decode it
// strictly into structs written independently from Kong's schemas.
type document struct {
	FormatVersion string     `yaml:"_format_version"`
	Services      []service  `yaml:"services,omitempty"`
	Routes        []route    `yaml:"routes,omitempty"`
	Consumers     []consumer `yaml:"consumers,omitempty"`
	Plugins       []plugin   `yaml:"plugins,omitempty"`
}

type service struct {
	Name           string   `yaml:"name"`
	Protocol       string   `yaml:"protocol"`
	Host           string   `yaml:"host"`
	Port           int      `yaml:"port"`
	Retries        int      `yaml:"retries"`
	ConnectTimeout int      `yaml:"connect_timeout"`
	ReadTimeout    int      `yaml:"read_timeout"`
	WriteTimeout   int      `yaml:"write_timeout"`
	Tags           []string `yaml:"tags,omitempty"`
	Routes         []route  `yaml:"routes,omitempty"`
}

type route struct {
	Name          string   `yaml:"name"`
	Protocols     []string `yaml:"protocols"`
	Methods       []string `yaml:"methods"`
	Paths         []string `yaml:"paths"`
	StripPath     bool     `yaml:"strip_path"`
	PreserveHost  bool     `yaml:"preserve_host"`
	RegexPriority int      `yaml:"regex_priority"`
	Tags          []string `yaml:"tags,omitempty"`
	Plugins       []plugin `yaml:"plugins,omitempty"`
}

type consumer struct {
	Username           string       `yaml:"username"`
	KeyauthCredentials []credential `yaml:"keyauth_credentials,omitempty"`
}

type credential struct {
	Key string `yaml:"key"`
}

type plugin struct {
	Name      string   `yaml:"name"`
	Protocols []string `yaml:"protocols,omitempty"`
	Config    any      `yaml:"config"`
}

var protocols = []string{"http", "https"}

// Render returns the declarative configuration for o.
func Render(o Options) ([]byte, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	doc := document{FormatVersion: "3.0", Plugins: o.globalPlugins()}
	for _, a := range o.apis() {
		routes := o.routes(a)
		switch o.Target {
		case TargetContainer:
			doc.Services = append(doc.Services, service{
				Name: a.name, Protocol: "http", Host: a.backend.Host, Port: a.backend.Port,
				// Connection failures are retried; nginx never retries a
				// POST once it was sent, and POST /orders is idempotent
				// with an Idempotency-Key anyway.
				Retries:        2,
				ConnectTimeout: 5000,
				// The services time out writes at 30 s.
				ReadTimeout: 35000, WriteTimeout: 35000,
				Tags: []string{"invoicing"}, Routes: routes,
			})
		case TargetLambda:
			// Routes without a service: the aws-lambda plugin answers.
			doc.Routes = append(doc.Routes, routes...)
		}
	}
	for _, c := range o.KeyAuth {
		doc.Consumers = append(doc.Consumers, consumer{Username: c.Username, KeyauthCredentials: []credential{{Key: c.Key}}})
	}
	var buf bytes.Buffer
	buf.WriteString("# Rendered by kong/cmd/kong-config (make kong-config) from package kong; do not edit.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode kong config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (o Options) routes(a api) []route {
	var out []route
	for _, r := range a.routes {
		var plugins []plugin
		if o.keyAuth() {
			plugins = append(plugins, plugin{Name: "key-auth", Config: keyAuthConfig{
				KeyNames: []string{APIKeyHeader}, KeyInHeader: true, KeyInQuery: false, KeyInBody: false,
				HideCredentials: true, RunOnPreflight: false,
			}})
		}
		plugins = append(plugins, o.lambdaPlugin(a.backend)...)
		out = append(out, route{
			Name: a.name + "-" + r.suffix, Protocols: protocols, Methods: r.methods, Paths: []string{r.path},
			Tags: []string{"invoicing"}, Plugins: plugins,
		})
	}
	// The health route is rewritten to the service's readiness endpoint;
	// request-transformer runs before aws-lambda (priority 801 > 750), so
	// the same rewrite holds for both targets.
	health := []plugin{{Name: "request-transformer", Config: requestTransformerConfig{Replace: &transformReplace{URI: UpstreamHealthPath}}}}
	out = append(out, route{
		Name: a.name + "-health", Protocols: protocols, Methods: []string{"GET"},
		Paths: []string{"~" + HealthPath(a.name) + "$"}, Tags: []string{"invoicing"},
		Plugins: append(health, o.lambdaPlugin(a.backend)...),
	})
	return out
}

func (o Options) keyAuth() bool { return o.KeyAuthEnabled || len(o.KeyAuth) > 0 }

func (o Options) lambdaPlugin(b Backend) []plugin {
	if o.Target != TargetLambda {
		return nil
	}
	return []plugin{{Name: "aws-lambda", Config: awsLambdaConfig{
		FunctionName: b.Function, AWSRegion: o.Region,
		InvocationType: "RequestResponse", LogType: "None",
		Timeout: 35000, Keepalive: 60000,
		AWSGatewayCompatible: true, IsProxyIntegration: true,
		// Bodies larger than nginx's buffer are kept on disk; skipping
		// them would hand the function an empty order.
		SkipLargeBodies: false, Base64EncodeBody: true,
		// A crashed function is a bad gateway, not Kong's default 200.
		UnhandledStatus: 502,
	}}}
}

func (o Options) globalPlugins() []plugin {
	headers := []string{"Accept", "Content-Type", "Idempotency-Key", CorrelationIDHeader}
	if o.keyAuth() {
		headers = append(headers, APIKeyHeader)
	}
	return []plugin{
		{Name: "correlation-id", Protocols: protocols, Config: correlationIDConfig{
			HeaderName: CorrelationIDHeader, Generator: "uuid#counter", EchoDownstream: true,
		}},
		{Name: "cors", Protocols: protocols, Config: corsConfig{
			Origins: o.AllowedOrigins, Methods: []string{"GET", "POST", "OPTIONS"}, Headers: headers,
			ExposedHeaders: []string{"Location", "Idempotent-Replayed", CorrelationIDHeader, "Retry-After"},
			MaxAge:         3600, Credentials: false, PreflightContinue: false,
		}},
		{Name: "request-size-limiting", Protocols: protocols, Config: requestSizeLimitingConfig{
			AllowedPayloadSize: o.BodyLimitBytes, SizeUnit: "bytes", RequireContentLength: false,
		}},
		{Name: "rate-limiting", Protocols: protocols, Config: rateLimitingConfig{
			Minute: o.RateLimitPerMinute, LimitBy: "consumer", Policy: RateLimitPolicy,
			FaultTolerant: true, HideClientHeaders: false, ErrorCode: 429, ErrorMessage: "API rate limit exceeded",
		}},
	}
}

type correlationIDConfig struct {
	HeaderName     string `yaml:"header_name"`
	Generator      string `yaml:"generator"`
	EchoDownstream bool   `yaml:"echo_downstream"`
}

type corsConfig struct {
	Origins           []string `yaml:"origins"`
	Methods           []string `yaml:"methods"`
	Headers           []string `yaml:"headers"`
	ExposedHeaders    []string `yaml:"exposed_headers"`
	MaxAge            int      `yaml:"max_age"`
	Credentials       bool     `yaml:"credentials"`
	PreflightContinue bool     `yaml:"preflight_continue"`
}

type requestSizeLimitingConfig struct {
	AllowedPayloadSize   int64  `yaml:"allowed_payload_size"`
	SizeUnit             string `yaml:"size_unit"`
	RequireContentLength bool   `yaml:"require_content_length"`
}

type rateLimitingConfig struct {
	Minute            int    `yaml:"minute"`
	LimitBy           string `yaml:"limit_by"`
	Policy            string `yaml:"policy"`
	FaultTolerant     bool   `yaml:"fault_tolerant"`
	HideClientHeaders bool   `yaml:"hide_client_headers"`
	ErrorCode         int    `yaml:"error_code"`
	ErrorMessage      string `yaml:"error_message"`
}

type keyAuthConfig struct {
	KeyNames        []string `yaml:"key_names"`
	KeyInHeader     bool     `yaml:"key_in_header"`
	KeyInQuery      bool     `yaml:"key_in_query"`
	KeyInBody       bool     `yaml:"key_in_body"`
	HideCredentials bool     `yaml:"hide_credentials"`
	RunOnPreflight  bool     `yaml:"run_on_preflight"`
}

type requestTransformerConfig struct {
	Replace *transformReplace `yaml:"replace"`
}

type transformReplace struct {
	URI string `yaml:"uri"`
}

type awsLambdaConfig struct {
	FunctionName         string `yaml:"function_name"`
	AWSRegion            string `yaml:"aws_region"`
	InvocationType       string `yaml:"invocation_type"`
	LogType              string `yaml:"log_type"`
	Timeout              int    `yaml:"timeout"`
	Keepalive            int    `yaml:"keepalive"`
	AWSGatewayCompatible bool   `yaml:"awsgateway_compatible"`
	IsProxyIntegration   bool   `yaml:"is_proxy_integration"`
	SkipLargeBodies      bool   `yaml:"skip_large_bodies"`
	Base64EncodeBody     bool   `yaml:"base64_encode_body"`
	UnhandledStatus      int    `yaml:"unhandled_status"`
}

var (
	hostname   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)
	awsRegion  = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-\d$`)
	lambdaName = regexp.MustCompile(`^(arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:)?[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9$_-]+)?$`)
)

func (o Options) validate() error {
	var errs []error
	switch o.Target {
	case TargetContainer:
		for _, a := range o.apis() {
			name, b := a.name, a.backend
			if !hostname.MatchString(b.Host) || b.Port < 1 || b.Port > 65535 {
				errs = append(errs, fmt.Errorf("kong: %s upstream %s:%d is not a host and port", name, b.Host, b.Port))
			}
		}
	case TargetLambda:
		if !awsRegion.MatchString(o.Region) {
			errs = append(errs, fmt.Errorf("kong: region %q is not an AWS region", o.Region))
		}
		for _, a := range o.apis() {
			name, b := a.name, a.backend
			if !lambdaName.MatchString(b.Function) {
				errs = append(errs, fmt.Errorf("kong: %s function %q is not a Lambda function name or ARN", name, b.Function))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("kong: target %q is neither %s nor %s", o.Target, TargetContainer, TargetLambda))
	}
	if len(o.AllowedOrigins) == 0 {
		errs = append(errs, errors.New("kong: no allowed origin for CORS"))
	}
	for _, origin := range o.AllowedOrigins {
		u, err := url.Parse(origin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || strings.Contains(origin, "*") {
			errs = append(errs, fmt.Errorf("kong: CORS origin %q is not scheme://host[:port]", origin))
		}
	}
	if o.BodyLimitBytes < 1 {
		errs = append(errs, errors.New("kong: body limit must be positive"))
	}
	if o.RateLimitPerMinute < 1 {
		errs = append(errs, errors.New("kong: rate limit must be positive"))
	}
	for _, c := range o.KeyAuth {
		if c.Username == "" || len(c.Key) < 16 {
			errs = append(errs, fmt.Errorf("kong: consumer %q needs a name and a key of 16 characters or more", c.Username))
		}
	}
	return errors.Join(errs...)
}
