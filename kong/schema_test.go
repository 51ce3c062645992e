package kong_test

// Kong 3.x entities and the configuration of every plugin the gateway uses,
// written from Kong's documented schemas (field names, types, enumerations,
// ranges), independently of the renderer's own structs. Decoding is strict:
// a field Kong does not know fails the test, as it would fail Kong at start.

import (
	"bytes"
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

type kongFile struct {
	FormatVersion string         `yaml:"_format_version"`
	Transform     *bool          `yaml:"_transform"`
	Services      []kongService  `yaml:"services"`
	Routes        []kongRoute    `yaml:"routes"`
	Consumers     []kongConsumer `yaml:"consumers"`
	Plugins       []kongPlugin   `yaml:"plugins"`
}

type kongService struct {
	ID                string       `yaml:"id"`
	Name              string       `yaml:"name"`
	URL               string       `yaml:"url"`
	Protocol          string       `yaml:"protocol"`
	Host              string       `yaml:"host"`
	Port              *int         `yaml:"port"`
	Path              string       `yaml:"path"`
	Retries           *int         `yaml:"retries"`
	ConnectTimeout    *int         `yaml:"connect_timeout"`
	WriteTimeout      *int         `yaml:"write_timeout"`
	ReadTimeout       *int         `yaml:"read_timeout"`
	Tags              []string     `yaml:"tags"`
	ClientCertificate any          `yaml:"client_certificate"`
	TLSVerify         *bool        `yaml:"tls_verify"`
	TLSVerifyDepth    *int         `yaml:"tls_verify_depth"`
	CACertificates    []string     `yaml:"ca_certificates"`
	Enabled           *bool        `yaml:"enabled"`
	Routes            []kongRoute  `yaml:"routes"`
	Plugins           []kongPlugin `yaml:"plugins"`
}

type kongRoute struct {
	ID                      string              `yaml:"id"`
	Name                    string              `yaml:"name"`
	Protocols               []string            `yaml:"protocols"`
	Methods                 []string            `yaml:"methods"`
	Hosts                   []string            `yaml:"hosts"`
	Paths                   []string            `yaml:"paths"`
	Headers                 map[string][]string `yaml:"headers"`
	HTTPSRedirectStatusCode *int                `yaml:"https_redirect_status_code"`
	RegexPriority           *int                `yaml:"regex_priority"`
	StripPath               *bool               `yaml:"strip_path"`
	PathHandling            string              `yaml:"path_handling"`
	PreserveHost            *bool               `yaml:"preserve_host"`
	RequestBuffering        *bool               `yaml:"request_buffering"`
	ResponseBuffering       *bool               `yaml:"response_buffering"`
	SNIs                    []string            `yaml:"snis"`
	Sources                 []any               `yaml:"sources"`
	Destinations            []any               `yaml:"destinations"`
	Tags                    []string            `yaml:"tags"`
	Service                 any                 `yaml:"service"`
	Plugins                 []kongPlugin        `yaml:"plugins"`

	service *kongService // set by the test: the service it is nested in
}

type kongConsumer struct {
	ID                 string         `yaml:"id"`
	Username           string         `yaml:"username"`
	CustomID           string         `yaml:"custom_id"`
	Tags               []string       `yaml:"tags"`
	Plugins            []kongPlugin   `yaml:"plugins"`
	KeyauthCredentials []keyauthCreds `yaml:"keyauth_credentials"`
}

type keyauthCreds struct {
	ID   string   `yaml:"id"`
	Key  string   `yaml:"key"`
	TTL  *int     `yaml:"ttl"`
	Tags []string `yaml:"tags"`
}

type kongPlugin struct {
	ID            string    `yaml:"id"`
	Name          string    `yaml:"name"`
	InstanceName  string    `yaml:"instance_name"`
	Enabled       *bool     `yaml:"enabled"`
	Protocols     []string  `yaml:"protocols"`
	Tags          []string  `yaml:"tags"`
	Route         any       `yaml:"route"`
	Service       any       `yaml:"service"`
	Consumer      any       `yaml:"consumer"`
	ConsumerGroup any       `yaml:"consumer_group"`
	Ordering      any       `yaml:"ordering"`
	Config        yaml.Node `yaml:"config"`
}

// correlation-id
type correlationIDConfig struct {
	HeaderName     *string `yaml:"header_name"`
	Generator      *string `yaml:"generator"`
	EchoDownstream *bool   `yaml:"echo_downstream"`
}

// cors
type corsConfig struct {
	Origins           []string `yaml:"origins"`
	Headers           []string `yaml:"headers"`
	ExposedHeaders    []string `yaml:"exposed_headers"`
	Methods           []string `yaml:"methods"`
	MaxAge            *float64 `yaml:"max_age"`
	Credentials       *bool    `yaml:"credentials"`
	PrivateNetwork    *bool    `yaml:"private_network"`
	PreflightContinue *bool    `yaml:"preflight_continue"`
}

// request-size-limiting
type requestSizeLimitingConfig struct {
	AllowedPayloadSize   *int    `yaml:"allowed_payload_size"`
	SizeUnit             *string `yaml:"size_unit"`
	RequireContentLength *bool   `yaml:"require_content_length"`
}

// rate-limiting (the redis_* fields are the pre-3.6 spelling of the redis record)
type rateLimitingConfig struct {
	Second            *float64       `yaml:"second"`
	Minute            *float64       `yaml:"minute"`
	Hour              *float64       `yaml:"hour"`
	Day               *float64       `yaml:"day"`
	Month             *float64       `yaml:"month"`
	Year              *float64       `yaml:"year"`
	LimitBy           *string        `yaml:"limit_by"`
	HeaderName        *string        `yaml:"header_name"`
	Path              *string        `yaml:"path"`
	Policy            *string        `yaml:"policy"`
	FaultTolerant     *bool          `yaml:"fault_tolerant"`
	Redis             map[string]any `yaml:"redis"`
	RedisHost         *string        `yaml:"redis_host"`
	RedisPort         *int           `yaml:"redis_port"`
	RedisPassword     *string        `yaml:"redis_password"`
	RedisUsername     *string        `yaml:"redis_username"`
	RedisSSL          *bool          `yaml:"redis_ssl"`
	RedisSSLVerify    *bool          `yaml:"redis_ssl_verify"`
	RedisServerName   *string        `yaml:"redis_server_name"`
	RedisTimeout      *int           `yaml:"redis_timeout"`
	RedisDatabase     *int           `yaml:"redis_database"`
	HideClientHeaders *bool          `yaml:"hide_client_headers"`
	ErrorCode         *float64       `yaml:"error_code"`
	ErrorMessage      *string        `yaml:"error_message"`
	SyncRate          *float64       `yaml:"sync_rate"`
}

// key-auth
type keyAuthConfig struct {
	KeyNames        []string `yaml:"key_names"`
	HideCredentials *bool    `yaml:"hide_credentials"`
	Anonymous       *string  `yaml:"anonymous"`
	KeyInHeader     *bool    `yaml:"key_in_header"`
	KeyInQuery      *bool    `yaml:"key_in_query"`
	KeyInBody       *bool    `yaml:"key_in_body"`
	RunOnPreflight  *bool    `yaml:"run_on_preflight"`
	Realm           *string  `yaml:"realm"`
}

// request-transformer
type requestTransformerConfig struct {
	HTTPMethod *string           `yaml:"http_method"`
	Remove     *transformRemove  `yaml:"remove"`
	Rename     *transformPairs   `yaml:"rename"`
	Replace    *transformReplace `yaml:"replace"`
	Add        *transformPairs   `yaml:"add"`
	Append     *transformPairs   `yaml:"append"`
}

type transformRemove struct {
	Body        []string `yaml:"body"`
	Headers     []string `yaml:"headers"`
	Querystring []string `yaml:"querystring"`
}

type transformPairs struct {
	Body        []string `yaml:"body"`
	Headers     []string `yaml:"headers"`
	Querystring []string `yaml:"querystring"`
}

type transformReplace struct {
	Body        []string `yaml:"body"`
	Headers     []string `yaml:"headers"`
	Querystring []string `yaml:"querystring"`
	URI         *string  `yaml:"uri"`
}

// aws-lambda
type awsLambdaConfig struct {
	Timeout                *float64 `yaml:"timeout"`
	Keepalive              *float64 `yaml:"keepalive"`
	AWSKey                 *string  `yaml:"aws_key"`
	AWSSecret              *string  `yaml:"aws_secret"`
	AWSAssumeRoleARN       *string  `yaml:"aws_assume_role_arn"`
	AWSRoleSessionName     *string  `yaml:"aws_role_session_name"`
	AWSSTSEndpointURL      *string  `yaml:"aws_sts_endpoint_url"`
	AWSRegion              *string  `yaml:"aws_region"`
	FunctionName           *string  `yaml:"function_name"`
	Qualifier              *string  `yaml:"qualifier"`
	InvocationType         *string  `yaml:"invocation_type"`
	LogType                *string  `yaml:"log_type"`
	Host                   *string  `yaml:"host"`
	Port                   *int     `yaml:"port"`
	DisableHTTPS           *bool    `yaml:"disable_https"`
	UnhandledStatus        *int     `yaml:"unhandled_status"`
	ForwardRequestMethod   *bool    `yaml:"forward_request_method"`
	ForwardRequestURI      *bool    `yaml:"forward_request_uri"`
	ForwardRequestHeaders  *bool    `yaml:"forward_request_headers"`
	ForwardRequestBody     *bool    `yaml:"forward_request_body"`
	IsProxyIntegration     *bool    `yaml:"is_proxy_integration"`
	AWSGatewayCompatible   *bool    `yaml:"awsgateway_compatible"`
	ProxyURL               *string  `yaml:"proxy_url"`
	SkipLargeBodies        *bool    `yaml:"skip_large_bodies"`
	Base64EncodeBody       *bool    `yaml:"base64_encode_body"`
	AWSIMDSProtocolVersion *string  `yaml:"aws_imds_protocol_version"`
	EmptyArraysMode        *string  `yaml:"empty_arrays_mode"`
}

func strictDecode(node any, into any) error {
	var b []byte
	switch n := node.(type) {
	case []byte:
		b = n
	case *yaml.Node:
		var err error
		if b, err = yaml.Marshal(n); err != nil {
			return err
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(into)
}

// parseKong decodes a rendered file strictly, plugin configs included, and
// checks every value against Kong's ranges. It returns the file with each
// route linked to its service.
func parseKong(t *testing.T, b []byte) (*kongFile, error) {
	t.Helper()
	var f kongFile
	if err := strictDecode(b, &f); err != nil {
		return nil, fmt.Errorf("kong file: %w", err)
	}
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if f.FormatVersion != "3.0" {
		fail("_format_version = %q, want 3.0", f.FormatVersion)
	}
	names := map[string]bool{}
	checkPlugins := func(where string, ps []kongPlugin) {
		seen := map[string]bool{}
		for _, p := range ps {
			if seen[p.Name] {
				fail("%s: plugin %s twice", where, p.Name)
			}
			seen[p.Name] = true
			if err := checkPlugin(p); err != nil {
				fail("%s: plugin %s: %v", where, p.Name, err)
			}
		}
	}
	checkRoute := func(r kongRoute) {
		if r.Name == "" || names["route:"+r.Name] {
			fail("route name %q empty or repeated", r.Name)
		}
		names["route:"+r.Name] = true
		for _, p := range r.Protocols {
			if !slices.Contains([]string{"http", "https", "grpc", "grpcs", "tcp", "tls", "udp", "tls_passthrough", "ws", "wss"}, p) {
				fail("route %s: protocol %q", r.Name, p)
			}
		}
		if len(r.Methods) == 0 {
			fail("route %s: methods must be explicit", r.Name)
		}
		for _, m := range r.Methods {
			if !regexp.MustCompile(`^[A-Z]+$`).MatchString(m) {
				fail("route %s: method %q", r.Name, m)
			}
		}
		if len(r.Paths) == 0 {
			fail("route %s: no paths", r.Name)
		}
		for _, p := range r.Paths {
			if re, ok := strings.CutPrefix(p, "~"); ok {
				if _, err := regexp.Compile(re); err != nil || !strings.HasPrefix(re, "/") {
					fail("route %s: regex path %q: %v", r.Name, p, err)
				}
			} else if !strings.HasPrefix(p, "/") {
				fail("route %s: path %q must start with / or ~", r.Name, p)
			}
		}
		if r.StripPath == nil || *r.StripPath {
			fail("route %s: strip_path must be set to false", r.Name)
		}
		if r.PathHandling != "" && r.PathHandling != "v0" && r.PathHandling != "v1" {
			fail("route %s: path_handling %q", r.Name, r.PathHandling)
		}
		if c := r.HTTPSRedirectStatusCode; c != nil && !slices.Contains([]int{426, 301, 302, 307, 308}, *c) {
			fail("route %s: https_redirect_status_code %d", r.Name, *c)
		}
		if p := r.RegexPriority; p != nil && (*p < -(1<<31) || *p > 1<<31-1) {
			fail("route %s: regex_priority %d", r.Name, *p)
		}
		checkPlugins("route "+r.Name, r.Plugins)
	}
	timeout := func(where string, v *int) {
		if v != nil && (*v < 1 || *v > 1<<31-2) {
			fail("%s: timeout %d out of 1..2147483646", where, *v)
		}
	}
	for i := range f.Services {
		s := &f.Services[i]
		if s.Name == "" || names["service:"+s.Name] {
			fail("service name %q empty or repeated", s.Name)
		}
		names["service:"+s.Name] = true
		if !slices.Contains([]string{"http", "https", "grpc", "grpcs", "tcp", "tls", "tls_passthrough", "udp", "ws", "wss"}, s.Protocol) {
			fail("service %s: protocol %q", s.Name, s.Protocol)
		}
		if s.Host == "" || s.Port == nil || *s.Port < 0 || *s.Port > 65535 {
			fail("service %s: host %q port %v", s.Name, s.Host, s.Port)
		}
		if s.Retries != nil && (*s.Retries < 0 || *s.Retries > 32767) {
			fail("service %s: retries %d", s.Name, *s.Retries)
		}
		timeout("service "+s.Name, s.ConnectTimeout)
		timeout("service "+s.Name, s.ReadTimeout)
		timeout("service "+s.Name, s.WriteTimeout)
		checkPlugins("service "+s.Name, s.Plugins)
		for j := range s.Routes {
			s.Routes[j].service = s
			checkRoute(s.Routes[j])
		}
	}
	for _, r := range f.Routes {
		if r.Service != nil {
			fail("top-level route %s names a service; nest it instead", r.Name)
		}
		checkRoute(r)
	}
	for _, c := range f.Consumers {
		if c.Username == "" && c.CustomID == "" {
			fail("consumer without username or custom_id")
		}
		for _, k := range c.KeyauthCredentials {
			if k.Key == "" {
				fail("consumer %s: empty key", c.Username)
			}
		}
		checkPlugins("consumer "+c.Username, c.Plugins)
	}
	checkPlugins("global", f.Plugins)
	if len(errs) > 0 {
		return &f, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return &f, nil
}

var methods = []string{"GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"}

func checkPlugin(p kongPlugin) error {
	for _, proto := range p.Protocols {
		if !slices.Contains([]string{"http", "https", "grpc", "grpcs"}, proto) {
			return fmt.Errorf("protocol %q", proto)
		}
	}
	oneOf := func(field string, v *string, allowed ...string) error {
		if v != nil && !slices.Contains(allowed, *v) {
			return fmt.Errorf("%s = %q, want one of %v", field, *v, allowed)
		}
		return nil
	}
	switch p.Name {
	case "correlation-id":
		var c correlationIDConfig
		if err := strictDecode(&p.Config, &c); err != nil {
			return err
		}
		if c.HeaderName != nil && textproto.CanonicalMIMEHeaderKey(*c.HeaderName) == "" {
			return fmt.Errorf("header_name %q", *c.HeaderName)
		}
		return oneOf("generator", c.Generator, "uuid", "uuid#counter", "tracker")
	case "cors":
		var c corsConfig
		if err := strictDecode(&p.Config, &c); err != nil {
			return err
		}
		for _, m := range c.Methods {
			if !slices.Contains(methods, m) {
				return fmt.Errorf("method %q", m)
			}
		}
		if c.Credentials != nil && *c.Credentials && (len(c.Origins) == 0 || slices.Contains(c.Origins, "*")) {
			return fmt.Errorf("credentials with origin * (or every origin)")
		}
		if c.MaxAge != nil && *c.MaxAge < 0 {
			return fmt.Errorf("max_age %v", *c.MaxAge)
		}
		return nil
	case "request-size-limiting":
		var c requestSizeLimitingConfig
		if err := strictDecode(&p.Config, &c); err != nil {
			return err
		}
		if c.AllowedPayloadSize != nil && *c.AllowedPayloadSize < 0 {
			return fmt.Errorf("allowed_payload_size %d", *c.AllowedPayloadSize)
		}
		return oneOf("size_unit", c.SizeUnit, "megabytes", "kilobytes", "bytes")
	case "rate-limiting":
		var c rateLimitingConfig
		if err := strictDecode(&p.Config, &c); err != nil {
			return err
		}
		windows := []*float64{c.Second, c.Minute, c.Hour, c.Day, c.Month, c.Year}
		last, any := 0.0, false
		for _, w := range windows {
			if w == nil {
				continue
			}
			if *w < 0 || *w < last {
				return fmt.Errorf("limits must be non-negative and grow with the window")
			}
			last, any = *w, true
		}
		if !any {
			return fmt.Errorf("no limit set")
		}
		if c.ErrorCode != nil && (*c.ErrorCode < 0) {
			return fmt.Errorf("error_code %v", *c.ErrorCode)
		}
		if err := oneOf("limit_by", c.LimitBy, "consumer", "credential", "ip", "service", "header", "path", "consumer-group"); err != nil {
			return err
		}
		return oneOf("policy", c.Policy, "local", "cluster", "redis")
	case "key-auth":
		var c keyAuthConfig
		if err := strictDecode(&p.Config, &c); err != nil {
			return err
		}
		for _, k := range c.KeyNames {
			if !regexp.MustCompile(`^[A-Za-z0-9_-]+$`).MatchString(k) {
				return fmt.Errorf("key name %q is not a header name", k)
			}
		}
		return nil
	case "request-transformer":
		var c requestTransformerConfig
		if err := strictDecode(&p.Config, &c); err != nil {
			return err
		}
		if c.Replace != nil && c.Replace.URI != nil && !strings.HasPrefix(*c.Replace.URI, "/") {
			return fmt.Errorf("replace.uri %q", *c.Replace.URI)
		}
		return nil
	case "aws-lambda":
		var c awsLambdaConfig
		if err := strictDecode(&p.Config, &c); err != nil {
			return err
		}
		if c.FunctionName == nil || *c.FunctionName == "" {
			return fmt.Errorf("function_name is required")
		}
		if c.Port != nil && (*c.Port < 0 || *c.Port > 65535) {
			return fmt.Errorf("port %d", *c.Port)
		}
		if c.UnhandledStatus != nil && (*c.UnhandledStatus < 100 || *c.UnhandledStatus > 999) {
			return fmt.Errorf("unhandled_status %d", *c.UnhandledStatus)
		}
		if err := oneOf("invocation_type", c.InvocationType, "RequestResponse", "Event", "DryRun"); err != nil {
			return err
		}
		if err := oneOf("aws_imds_protocol_version", c.AWSIMDSProtocolVersion, "v1", "v2"); err != nil {
			return err
		}
		if err := oneOf("empty_arrays_mode", c.EmptyArraysMode, "legacy", "correct"); err != nil {
			return err
		}
		return oneOf("log_type", c.LogType, "Tail", "None")
	}
	return fmt.Errorf("plugin %q has no schema in this test", p.Name)
}

func plugin[T any](t *testing.T, ps []kongPlugin, name string) (T, bool) {
	t.Helper()
	var c T
	for _, p := range ps {
		if p.Name == name {
			if err := strictDecode(&p.Config, &c); err != nil {
				t.Fatalf("plugin %s: %v", name, err)
			}
			return c, true
		}
	}
	return c, false
}

var _ = http.MethodGet
