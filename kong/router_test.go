package kong_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/gorilla/mux"

	"invoicing/functions/invoices"
	"invoicing/functions/orders"
	"invoicing/kong"
	"invoicing/shared/config"
	"invoicing/shared/web"
)

// renderings are the configurations the tests check: the checked-in local
// file, the Lambda target, and the container target with key auth on.
func renderings(t *testing.T) map[string][]byte {
	t.Helper()
	local, err := os.ReadFile("kong.yml")
	if err != nil {
		t.Fatal(err)
	}
	lo := kong.Lambda("eu-west-1", "invoicing-orders", "arn:aws:lambda:eu-west-1:123456789012:function:invoicing-invoices:live")
	lo.KeyAuthEnabled = true
	lambda, err := kong.Render(lo)
	if err != nil {
		t.Fatal(err)
	}
	keyed := kong.Local()
	keyed.Orders = kong.Backend{Host: "10.0.1.7", Port: 8080}
	keyed.KeyAuth = []kong.Consumer{{Username: "web-shop", Key: "local-only-0123456789abcdef"}}
	withKeys, err := kong.Render(keyed)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{"container (kong.yml)": local, "lambda": lambda, "container with key-auth": withKeys}
}

func TestKongYmlIsUpToDate(t *testing.T) {
	want, err := kong.Render(kong.Local())
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("kong.yml")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatal("kong/kong.yml is stale: run make kong-config and commit the result")
	}
}

func TestRenderedConfigsDecodeStrictlyWithSafeSettings(t *testing.T) {
	bodyLimit := config.ReadCommon(config.NewReader(func(string) string { return "" }), 0, "x").BodyLimit
	for name, b := range renderings(t) {
		t.Run(name, func(t *testing.T) {
			f, err := parseKong(t, b)
			if err != nil {
				t.Fatal(err)
			}
			cors, ok := plugin[corsConfig](t, f.Plugins, "cors")
			if !ok || len(cors.Origins) == 0 || slices.Contains(cors.Origins, "*") {
				t.Errorf("cors must be global with explicit origins: %+v", cors)
			}
			for _, h := range []string{"Idempotency-Key", "Content-Type", web.CorrelationIDHeader} {
				if !slices.Contains(cors.Headers, h) {
					t.Errorf("cors headers %v lack %s", cors.Headers, h)
				}
			}
			for _, h := range []string{"Location", "Idempotent-Replayed"} {
				if !slices.Contains(cors.ExposedHeaders, h) {
					t.Errorf("cors exposed_headers %v lack %s", cors.ExposedHeaders, h)
				}
			}
			if cors.MaxAge == nil || *cors.MaxAge <= 0 || !slices.Contains(cors.Methods, "POST") || !slices.Contains(cors.Methods, "OPTIONS") {
				t.Errorf("cors max_age / methods: %+v", cors)
			}
			size, ok := plugin[requestSizeLimitingConfig](t, f.Plugins, "request-size-limiting")
			if !ok || size.SizeUnit == nil || *size.SizeUnit != "bytes" || size.AllowedPayloadSize == nil || int64(*size.AllowedPayloadSize) != bodyLimit {
				t.Errorf("request-size-limiting must allow exactly BODY_LIMIT_BYTES's default %d bytes: %+v", bodyLimit, size)
			}
			rate, ok := plugin[rateLimitingConfig](t, f.Plugins, "rate-limiting")
			if !ok || rate.Policy == nil || *rate.Policy != kong.RateLimitPolicy || rate.Minute == nil {
				t.Errorf("rate-limiting: %+v", rate)
			}
			corr, ok := plugin[correlationIDConfig](t, f.Plugins, "correlation-id")
			if !ok || corr.HeaderName == nil || *corr.HeaderName != web.CorrelationIDHeader {
				t.Errorf("correlation-id header must be the one the services log (%s): %+v", web.CorrelationIDHeader, corr)
			}
			keyed := len(f.Consumers) > 0 || name == "lambda"
			for _, r := range allRoutes(f) {
				ka, hasKeyAuth := plugin[keyAuthConfig](t, r.Plugins, "key-auth")
				health := strings.Contains(r.Name, "health")
				if hasKeyAuth && (ka.KeyInQuery == nil || *ka.KeyInQuery || ka.HideCredentials == nil || !*ka.HideCredentials) {
					t.Errorf("route %s: key-auth must set key_in_query false and hide_credentials true: %+v", r.Name, ka)
				}
				if hasKeyAuth && health {
					t.Errorf("route %s: health checks must not need a key", r.Name)
				}
				if keyed && !health && !hasKeyAuth {
					t.Errorf("route %s: key auth is on but the route is open", r.Name)
				}
				l, hasLambda := plugin[awsLambdaConfig](t, r.Plugins, "aws-lambda")
				if (name == "lambda") != hasLambda {
					t.Errorf("route %s: aws-lambda plugin present = %v", r.Name, hasLambda)
				}
				if hasLambda {
					if l.AWSGatewayCompatible == nil || !*l.AWSGatewayCompatible || l.IsProxyIntegration == nil || !*l.IsProxyIntegration ||
						l.AWSRegion == nil || *l.AWSRegion != "eu-west-1" || l.AWSKey != nil || l.AWSSecret != nil ||
						l.SkipLargeBodies == nil || *l.SkipLargeBodies {
						t.Errorf("route %s: aws-lambda must be API-Gateway compatible, keyless, with the region and large bodies: %+v", r.Name, l)
					}
				}
			}
		})
	}
}

func TestCorrelationHeaderMatchesTheServices(t *testing.T) {
	if kong.CorrelationIDHeader != web.CorrelationIDHeader {
		t.Fatalf("kong sets %s, the services log %s", kong.CorrelationIDHeader, web.CorrelationIDHeader)
	}
}

// The strict decoding must catch what deck validate does not.
func TestStrictDecodingRejectsMistakes(t *testing.T) {
	good, err := os.ReadFile("kong.yml")
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string][2]string{
		"misspelled plugin field": {"echo_downstream:", "echo_downstram:"},
		"unknown plugin":          {"name: rate-limiting", "name: rate-limitting"},
		"bad enum":                {"policy: local", "policy: memory"},
		"misspelled route field":  {"preserve_host:", "preserve_hots:"},
		"wildcard with creds":     {"credentials: false", "credentials: true\n      private_network: false"},
		"string for a number":     {"max_age: 3600", "max_age: an hour"},
		"strip_path true":         {"strip_path: false", "strip_path: true"},
	} {
		t.Run(name, func(t *testing.T) {
			bad := strings.Replace(string(good), edit[0], edit[1], 1)
			if name == "wildcard with creds" {
				bad = strings.Replace(bad, "- http://localhost:3000", "- \"*\"", 1)
			}
			if bad == string(good) {
				t.Fatalf("edit %q did not apply", edit[0])
			}
			if _, err := parseKong(t, []byte(bad)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestRenderRefusesUnsafeOptions(t *testing.T) {
	for name, edit := range map[string]func(*kong.Options){
		"wildcard origin": func(o *kong.Options) { o.AllowedOrigins = []string{"*"} },
		"no origin":       func(o *kong.Options) { o.AllowedOrigins = nil },
		"origin path":     func(o *kong.Options) { o.AllowedOrigins = []string{"https://shop.example/app"} },
		"unknown target":  func(o *kong.Options) { o.Target = "ec2" },
		"no upstream":     func(o *kong.Options) { o.Orders.Host = "" },
		"lambda, no fn":   func(o *kong.Options) { *o = kong.Lambda("eu-west-1", "", "invoices") },
		"lambda, region":  func(o *kong.Options) { *o = kong.Lambda("europe", "orders", "invoices") },
		"short key":       func(o *kong.Options) { o.KeyAuth = []kong.Consumer{{Username: "a", Key: "k"}} },
		"no body limit":   func(o *kong.Options) { o.BodyLimitBytes = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			o := kong.Local()
			edit(&o)
			if _, err := kong.Render(o); err == nil {
				t.Fatal("rendered")
			}
		})
	}
}

// deck 1.4 (Debian) checks entity structure offline, not plugin configs.
func TestDeckValidate(t *testing.T) {
	deck, err := exec.LookPath("deck")
	if err != nil {
		t.Skip("deck is not installed (apt-get install deck); the strict decoding above still ran")
	}
	for name, b := range renderings(t) {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kong.yml")
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(deck, "validate", "-s", path).CombinedOutput(); err != nil {
				t.Fatalf("deck validate: %v\n%s", err, out)
			}
		})
	}
}

// ---- Kong's router, as Kong 3.x (traditional_compatible) matches HTTP ----

type gateway struct {
	routes    []kongRoute
	functions map[string]string // Lambda function name → service
}

type routed struct {
	route    kongRoute
	backend  string // service that answers
	upstream string // path the service sees
	host     string // Host header the service sees
}

func allRoutes(f *kongFile) []kongRoute {
	var rs []kongRoute
	for _, s := range f.Services {
		rs = append(rs, s.Routes...)
	}
	return append(rs, f.Routes...)
}

func newGateway(t *testing.T, f *kongFile) gateway {
	t.Helper()
	g := gateway{routes: allRoutes(f), functions: map[string]string{}}
	for _, r := range g.routes {
		if l, ok := plugin[awsLambdaConfig](t, r.Plugins, "aws-lambda"); ok {
			g.functions[*l.FunctionName] = strings.SplitN(r.Name, "-", 2)[0]
		}
	}
	// Kong orders routes by priority: how many fields they match on, then
	// regex paths before prefixes, then regex_priority, then the longest
	// prefix; ties keep the configuration's order.
	type prio struct{ weight, regex, regexPriority, length int }
	key := func(r kongRoute) prio {
		p := prio{}
		for _, n := range []int{len(r.Methods), len(r.Hosts), len(r.Paths), len(r.Headers), len(r.SNIs), len(r.Sources), len(r.Destinations)} {
			if n > 0 {
				p.weight++
			}
		}
		for _, path := range r.Paths {
			if strings.HasPrefix(path, "~") {
				p.regex = 1
			} else {
				p.length = max(p.length, len(path))
			}
		}
		if r.RegexPriority != nil {
			p.regexPriority = *r.RegexPriority
		}
		return p
	}
	sort.SliceStable(g.routes, func(i, j int) bool {
		a, b := key(g.routes[i]), key(g.routes[j])
		if a.weight != b.weight {
			return a.weight > b.weight
		}
		if a.regex != b.regex {
			return a.regex > b.regex
		}
		if a.regexPriority != b.regexPriority {
			return a.regexPriority > b.regexPriority
		}
		return a.length > b.length
	})
	return g
}

func pathMatches(routePath, path string) (prefix string, ok bool) {
	if re, isRegex := strings.CutPrefix(routePath, "~"); isRegex {
		m := regexp.MustCompile("^" + re).FindString(path)
		return m, m != "" || regexp.MustCompile("^"+re).MatchString(path)
	}
	return routePath, strings.HasPrefix(path, routePath)
}

func (g gateway) route(t *testing.T, method, path string) (routed, bool) {
	t.Helper()
	for _, r := range g.routes {
		if !slices.Contains(r.Methods, method) {
			continue
		}
		for _, p := range r.Paths {
			matched, ok := pathMatches(p, path)
			if !ok {
				continue
			}
			out := routed{route: r, upstream: path}
			if *r.StripPath {
				out.upstream = "/" + strings.TrimPrefix(strings.TrimPrefix(path, matched), "/")
			}
			if s := r.service; s != nil {
				out.backend, out.host = s.Name, s.Host
				if s.Path != "" && s.Path != "/" { // path_handling v0
					out.upstream = strings.TrimSuffix(s.Path, "/") + out.upstream
				}
				if r.PreserveHost != nil && *r.PreserveHost {
					out.host = "kong.example"
				}
			}
			if tr, ok := plugin[requestTransformerConfig](t, r.Plugins, "request-transformer"); ok && tr.Replace != nil && tr.Replace.URI != nil {
				out.upstream = *tr.Replace.URI
			}
			if l, ok := plugin[awsLambdaConfig](t, r.Plugins, "aws-lambda"); ok {
				out.backend = g.functions[*l.FunctionName]
			}
			return out, true
		}
	}
	return routed{}, false
}

func routers() map[string]*mux.Router {
	return map[string]*mux.Router{"orders": orders.Router(), "invoices": invoices.Router()}
}

// matchRoute tells which route template of router serves method and path.
func matchRoute(router *mux.Router, method, path string) (string, bool) {
	var m mux.RouteMatch
	if !router.Match(httptest.NewRequest(method, path, nil), &m) || m.MatchErr != nil || m.Route == nil {
		return "", false
	}
	tpl, _ := m.Route.GetPathTemplate()
	return tpl, true
}

const sampleID = "0190b7a2-7c5e-7a31-9d2e-3f4f6a1b2c3d"

// samplePath is a request path a Kong route path matches.
func samplePath(routePath string) string {
	p := strings.TrimSuffix(strings.TrimPrefix(routePath, "~"), "$")
	if strings.HasSuffix(p, "/") {
		p += sampleID
	}
	return p
}

func TestEveryKongRouteReachesAServiceRoute(t *testing.T) {
	for name, b := range renderings(t) {
		t.Run(name, func(t *testing.T) {
			f, err := parseKong(t, b)
			if err != nil {
				t.Fatal(err)
			}
			g := newGateway(t, f)
			for _, r := range allRoutes(f) {
				for _, p := range r.Paths {
					for _, method := range r.Methods {
						path := samplePath(p)
						got, ok := g.route(t, method, path)
						if !ok || got.route.Name != r.Name {
							t.Errorf("%s %s: Kong routes it to %q, want route %s (shadowed or unmatched)", method, path, got.route.Name, r.Name)
							continue
						}
						if method == http.MethodOptions {
							continue // the global cors plugin answers preflights
						}
						router := routers()[got.backend]
						if router == nil {
							t.Errorf("route %s reaches unknown backend %q", r.Name, got.backend)
							continue
						}
						if got.upstream == kong.UpstreamHealthPath {
							continue // TestHealthRoutesReachReadiness
						}
						if tpl, ok := matchRoute(router, method, got.upstream); !ok {
							t.Errorf("route %s: %s %s reaches %s as %s, which its router does not serve", r.Name, method, path, got.backend, got.upstream)
						} else {
							t.Logf("%s %s → %s %s (%s)", method, path, got.backend, got.upstream, tpl)
						}
					}
				}
			}
			for _, req := range [][2]string{{"DELETE", "/orders"}, {"PUT", "/orders/" + sampleID}, {"POST", "/orders/" + sampleID}, {"GET", "/ordersx"}, {"GET", "/"}, {"POST", "/invoices"}, {"GET", "/health/ordersx"}, {"GET", "/health/ready"}} {
				if got, ok := g.route(t, req[0], req[1]); ok {
					t.Errorf("%s %s is routed (to %s); Kong should answer 404 itself", req[0], req[1], got.route.Name)
				}
			}
		})
	}
}

func TestEveryServiceRouteIsExposed(t *testing.T) {
	for name, b := range renderings(t) {
		t.Run(name, func(t *testing.T) {
			f, err := parseKong(t, b)
			if err != nil {
				t.Fatal(err)
			}
			g := newGateway(t, f)
			for svc, router := range routers() {
				n := 0
				err := router.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
					tpl, err := route.GetPathTemplate()
					if err != nil || strings.HasPrefix(tpl, "/health") {
						return nil // health goes through /health/<service>
					}
					ms, _ := route.GetMethods()
					path := strings.ReplaceAll(tpl, "{id}", sampleID)
					for _, m := range ms {
						n++
						got, ok := g.route(t, m, path)
						switch {
						case !ok:
							t.Errorf("%s %s (%s) is not exposed through Kong", m, tpl, svc)
						case got.backend != svc || got.upstream != path:
							t.Errorf("%s %s reaches %s %s, want %s %s", m, tpl, got.backend, got.upstream, svc, path)
						case got.host != "" && got.host == "kong.example":
							t.Errorf("%s %s: preserve_host is on", m, tpl)
						}
						if _, ok := g.route(t, http.MethodOptions, path); !ok {
							t.Errorf("OPTIONS %s: a CORS preflight finds no route", path)
						}
					}
					return nil
				})
				if err != nil || n == 0 {
					t.Fatalf("%s router: %d routes, %v", svc, n, err)
				}
			}
		})
	}
}

func TestHealthRoutesReachReadiness(t *testing.T) {
	f, err := parseKong(t, renderings(t)["container (kong.yml)"])
	if err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, f)
	for svc, router := range routers() {
		got, ok := g.route(t, http.MethodGet, kong.HealthPath(svc))
		if !ok || got.backend != svc || got.upstream != kong.UpstreamHealthPath {
			t.Errorf("GET %s → %+v, want %s %s", kong.HealthPath(svc), got, svc, kong.UpstreamHealthPath)
			continue
		}
		if _, ok := matchRoute(router, http.MethodGet, kong.UpstreamHealthPath); !ok {
			if _, old := matchRoute(router, http.MethodGet, "/health"); old {
				t.Skipf("%s serves /health but not yet %s (the health split is merged separately)", svc, kong.UpstreamHealthPath)
			}
			t.Errorf("%s does not serve GET %s", svc, kong.UpstreamHealthPath)
		}
	}
}
