// Package local_test checks the container side of the stack without a
// Docker engine: the Dockerfile's instructions and build command, and
// local/compose.yaml loaded and validated by compose-go, down to starting
// each app service's command and environment against the local servers.
// compose-go lives only here, so no service binary compiles it.
package local_test

import (
	"bufio"
	"context"
	"debug/elf"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/gorilla/mux"

	"invoicing/functions/invoices"
	"invoicing/functions/orders"
	"invoicing/shared/telemetry"
	"invoicing/shared/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd, args string
	stage     int
}

func parseDockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []instruction
	var cur strings.Builder
	stage := -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, instruction{cmd: cmd, args: strings.Join(strings.Fields(args), " "), stage: stage})
	}
	return out
}

func lastOf(ins []instruction, cmd string, stage int) (string, bool) {
	var got string
	var ok bool
	for _, in := range ins {
		if in.cmd == cmd && in.stage == stage {
			got, ok = in.args, true
		}
	}
	return got, ok
}

var goBuildLine = regexp.MustCompile(`CGO_ENABLED=0 .*?(go build .*)$`)

// dockerBuildArgs returns the Dockerfile's go build arguments for service.
func dockerBuildArgs(t *testing.T, service, out string) []string {
	t.Helper()
	for _, in := range parseDockerfile(t) {
		if in.cmd != "RUN" || !strings.Contains(in.args, "go build") {
			continue
		}
		m := goBuildLine.FindStringSubmatch(in.args)
		if m == nil {
			t.Fatalf("the go build in %q is not run with CGO_ENABLED=0", in.args)
		}
		line := strings.NewReplacer("${SERVICE}", service, "/out/service", out).Replace(m[1])
		return shellWords(line)[1:]
	}
	t.Fatal("no go build in the Dockerfile")
	return nil
}

// shellWords splits a command line as sh does for plain words and
// single-quoted strings, enough for a go build line.
func shellWords(line string) []string {
	var words []string
	var cur strings.Builder
	quoted, inWord := false, false
	for _, r := range line {
		switch {
		case r == '\'':
			quoted, inWord = !quoted, true
		case r == ' ' && !quoted:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

func TestDockerfile(t *testing.T) {
	ins := parseDockerfile(t)
	final := ins[len(ins)-1].stage
	if final < 1 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", final+1)
	}
	want := map[string]string{
		"FROM":        "gcr.io/distroless/static-debian12:nonroot",
		"USER":        "nonroot:nonroot",
		"STOPSIGNAL":  "SIGTERM",
		"ENTRYPOINT":  `["/service"]`,
		"CMD":         `["serve"]`,
		"HEALTHCHECK": `CMD ["/service", "healthcheck"]`,
	}
	for cmd, w := range want {
		got, ok := lastOf(ins, cmd, final)
		if !ok || !strings.HasSuffix(got, w) {
			t.Errorf("final stage %s = %q, want %q", cmd, got, w)
		}
	}
	if hc, _ := lastOf(ins, "HEALTHCHECK", final); !strings.Contains(hc, "--timeout=") || !strings.Contains(hc, "--interval=") {
		t.Errorf("HEALTHCHECK %q needs an interval and a timeout", hc)
	}
	if cp, _ := lastOf(ins, "COPY", final); cp != "--from=build /out/service /service" {
		t.Errorf("final stage copies %q, want only the binary", cp)
	}
	args := dockerBuildArgs(t, "orders", "/tmp/x")
	if !slices.Contains(args, "-trimpath") || !slices.Contains(args, "-ldflags=-s -w") || !slices.Contains(args, "./functions/orders/cmd/orders") {
		t.Errorf("go build %v: want -trimpath and the service's cmd package", args)
	}
	ignore, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".git", "bin"} {
		if !slices.Contains(strings.Fields(string(ignore)), p) {
			t.Errorf(".dockerignore lacks %s", p)
		}
	}
}

// loadCompose loads local/compose.yaml as docker compose would, with env
// as the environment for ${VAR} substitution.
func loadCompose(t *testing.T, env map[string]string) *types.Project {
	t.Helper()
	wd, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  wd,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(wd, "compose.yaml")}},
		Environment: env,
	}, func(o *loader.Options) {
		o.SetProjectName("invoicing", true)
		o.SkipResolveEnvironment = true
		o.ResolvePaths = true
	})
	if err != nil {
		t.Fatalf("load compose.yaml: %v", err)
	}
	return p
}

func environment(s types.ServiceConfig) map[string]string {
	env := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			env[k] = *v
		} else {
			env[k] = ""
		}
	}
	return env
}

func TestComposeStack(t *testing.T) {
	p := loadCompose(t, map[string]string{})
	want := []string{"invoices", "jaeger", "kong", "orders", "postgres", "rabbitmq"}
	if got := p.ServiceNames(); !slices.Equal(slices.Sorted(slices.Values(got)), want) {
		t.Fatalf("services = %v, want %v", got, want)
	}
	for name, s := range p.Services {
		if s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) < 2 || s.HealthCheck.Timeout == nil || s.HealthCheck.Interval == nil {
			t.Errorf("%s: needs a health check with interval and timeout", name)
		}
		for dep, d := range s.DependsOn {
			if d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s depends on %s with condition %q, want service_healthy", name, dep, d.Condition)
			}
		}
		for _, port := range s.Ports {
			if port.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes %s:%s on %q; bind it to 127.0.0.1", name, port.Published, strconv.Itoa(int(port.Target)), port.HostIP)
			}
		}
		for k, v := range environment(s) {
			if strings.Contains(strings.ToUpper(k), "PASS") || strings.Contains(v, ":local-only-") {
				if !strings.Contains(v, "local-only") {
					t.Errorf("%s: %s holds a credential not named local-only", name, k)
				}
			}
		}
	}
	published := map[string][]string{}
	for name, s := range p.Services {
		for _, port := range s.Ports {
			published[name] = append(published[name], port.Published+":"+strconv.Itoa(int(port.Target)))
		}
	}
	for name, ports := range map[string][]string{
		"kong": {"8000:8000"}, "jaeger": {"16686:16686", "4317:4317", "4318:4318"}, "rabbitmq": {"5672:5672", "15672:15672"},
		"orders": nil, "invoices": nil,
	} {
		if !slices.Equal(published[name], ports) {
			t.Errorf("%s publishes %v, want %v", name, published[name], ports)
		}
	}
	deps := map[string][]string{
		"orders": {"jaeger", "postgres", "rabbitmq"}, "invoices": {"jaeger", "postgres", "rabbitmq"}, "kong": {"invoices", "orders"},
	}
	for name, want := range deps {
		var got []string
		for d := range p.Services[name].DependsOn {
			got = append(got, d)
		}
		if slices.Sort(got); !slices.Equal(got, want) {
			t.Errorf("%s depends on %v, want %v", name, got, want)
		}
	}
	for svc, volume := range map[string]string{"postgres": "/var/lib/postgresql/data", "rabbitmq": "/var/lib/rabbitmq"} {
		ok := slices.ContainsFunc(p.Services[svc].Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Type == types.VolumeTypeVolume && v.Target == volume && p.Volumes[v.Source].Name != ""
		})
		if !ok {
			t.Errorf("%s keeps %s in no named volume", svc, volume)
		}
	}
	if p.Services["rabbitmq"].Hostname == "" {
		t.Error("rabbitmq needs a fixed hostname, or its data directory changes with the container")
	}

	kong := p.Services["kong"]
	kenv := environment(kong)
	if kenv["KONG_DATABASE"] != "off" || !strings.HasPrefix(kenv["KONG_ADMIN_LISTEN"], "127.0.0.1:") {
		t.Errorf("kong must be DB-less with the admin API on loopback: %v", kenv)
	}
	mounted := slices.ContainsFunc(kong.Volumes, func(v types.ServiceVolumeConfig) bool {
		abs, _ := filepath.Abs("../kong/kong.yml")
		return v.Source == abs && v.Target == kenv["KONG_DECLARATIVE_CONFIG"] && v.ReadOnly
	})
	if !mounted {
		t.Errorf("kong does not mount kong/kong.yml read-only at KONG_DECLARATIVE_CONFIG: %+v", kong.Volumes)
	}
	pg := p.Services["postgres"]
	initSQL := slices.ContainsFunc(pg.Volumes, func(v types.ServiceVolumeConfig) bool {
		return strings.HasPrefix(v.Target, "/docker-entrypoint-initdb.d/")
	})
	sql, _ := os.ReadFile("postgres/databases.sql")
	if !initSQL || !strings.Contains(string(sql), "CREATE DATABASE orders") || !strings.Contains(string(sql), "CREATE DATABASE invoices") {
		t.Error("postgres must create the orders and invoices databases at first start")
	}

	for _, svc := range []string{"orders", "invoices"} {
		s := p.Services[svc]
		if s.Build == nil || s.Build.Dockerfile != "Dockerfile" || s.Build.Args["SERVICE"] == nil || *s.Build.Args["SERVICE"] != svc {
			t.Errorf("%s must build from the Dockerfile with SERVICE=%s: %+v", svc, svc, s.Build)
		}
		if abs, _ := filepath.Abs(".."); s.Build != nil && s.Build.Context != abs {
			t.Errorf("%s build context %s, want the repository root", svc, s.Build.Context)
		}
		if !slices.Equal(s.HealthCheck.Test, []string{"CMD", "/service", "healthcheck", "/health/ready"}) {
			t.Errorf("%s health check %v, want the binary's readiness probe", svc, s.HealthCheck.Test)
		}
	}
}

// goRuntimeVariables are read by the Go runtime rather than the services.
var goRuntimeVariables = []string{"GOMAXPROCS"}

var configVariables = map[string]func() []string{"orders": orders.ConfigVariables, "invoices": invoices.ConfigVariables}

// telemetryVariables returns the OTEL_* variables telemetry.Setup reads
// given env, found by running it.
func telemetryVariables(t *testing.T, service string, env map[string]string) map[string]bool {
	t.Helper()
	read := map[string]bool{}
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: service, DeploymentMode: telemetry.ModeServer,
		Getenv: func(k string) string { read[k] = true; return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	tel.Close(time.Second, nil)
	return read
}

func TestComposeSetsExactlyWhatTheServicesRead(t *testing.T) {
	p := loadCompose(t, map[string]string{})
	for svc, vars := range configVariables {
		t.Run(svc, func(t *testing.T) {
			env := environment(p.Services[svc])
			reads := vars()
			if len(reads) < 5 {
				t.Fatalf("%s reports only %v", svc, reads)
			}
			for _, k := range reads {
				if _, ok := env[k]; !ok {
					t.Errorf("compose does not set %s, which %s reads", k, svc)
				}
			}
			otel := telemetryVariables(t, svc, env)
			for k := range env {
				if !slices.Contains(reads, k) && !otel[k] && !slices.Contains(goRuntimeVariables, k) {
					t.Errorf("compose sets %s, which %s never reads", k, svc)
				}
			}
			if env["OTEL_EXPORTER_OTLP_ENDPOINT"] != "http://jaeger:4318" {
				t.Errorf("traces must go to Jaeger: %q", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
			}
		})
	}
}

// The app services' command and environment, with compose's hostnames
// replaced by the local servers (a database and vhost of the test's own),
// start the Dockerfile's static binaries here, which then pass the
// compose health check.
func TestComposeServicesStartHere(t *testing.T) {
	testenv.RequireServers(t)
	p := loadCompose(t, map[string]string{})
	dir := t.TempDir()
	otlp := testenv.NewOTLPReceiver(t)
	for _, svc := range []string{"orders", "invoices"} {
		t.Run(svc, func(t *testing.T) {
			bin := filepath.Join(dir, svc)
			build := exec.Command("go", dockerBuildArgs(t, svc, bin)...)
			build.Dir = ".."
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("the Dockerfile's go build: %v\n%s", err, out)
			}
			assertStatic(t, bin)

			s := p.Services[svc]
			env := environment(s)
			db, broker := testenv.Database(t), testenv.Vhost(t)
			if u, _ := url.Parse(env["DATABASE_URL"]); u == nil || u.Hostname() != "postgres" || u.Path != "/"+svc {
				t.Errorf("DATABASE_URL %q: want host postgres, database %s", env["DATABASE_URL"], svc)
			}
			if u, _ := url.Parse(env["BROKER_URL"]); u == nil || u.Hostname() != "rabbitmq" {
				t.Errorf("BROKER_URL %q: want host rabbitmq", env["BROKER_URL"])
			}
			port := testenv.FreePort(t)
			env["DATABASE_URL"], env["BROKER_URL"] = db, broker
			env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.URL // jaeger:4318 → a receiver in the test
			env["PORT"] = strconv.Itoa(port)
			envList := []string{"PATH=" + os.Getenv("PATH")}
			for k, v := range env {
				envList = append(envList, k+"="+v)
			}
			var logs strings.Builder
			cmd := exec.Command(bin, s.Command...)
			cmd.Env, cmd.Stdout, cmd.Stderr = envList, &logs, &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })

			base := "http://127.0.0.1:" + strconv.Itoa(port)
			testenv.Eventually(t, 30*time.Second, svc+" healthy", func() bool {
				resp, err := http.Get(base + "/health")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			})
			probe := func(args ...string) error {
				c := exec.Command(bin, args...)
				c.Env = envList
				out, err := c.CombinedOutput()
				if err != nil {
					t.Logf("%s %v: %s", svc, args, out)
				}
				return err
			}
			router := map[string]*mux.Router{"orders": orders.Router(), "invoices": invoices.Router()}[svc]
			for _, hc := range [][]string{s.HealthCheck.Test[2:], {"healthcheck"}} {
				path := "/health/live"
				if len(hc) > 1 {
					path = hc[1]
				}
				var m mux.RouteMatch
				if !router.Match(httptestRequest(path), &m) || m.MatchErr != nil {
					t.Logf("%s does not serve %s yet (the health split is merged separately); skipping %v", svc, path, hc)
					continue
				}
				if err := probe(hc...); err != nil {
					t.Errorf("health check %v failed against the running %s: %v\n%s", hc, svc, err, logs.String())
				}
			}
			// A probe with nothing listening fails fast and touches no database.
			env["PORT"] = strconv.Itoa(testenv.FreePort(t))
			env["DATABASE_URL"] = "postgres://nobody@127.0.0.1:1/none"
			c := exec.Command(bin, "healthcheck")
			for k, v := range env {
				c.Env = append(c.Env, k+"="+v)
			}
			start := time.Now()
			if out, err := c.CombinedOutput(); err == nil || strings.Contains(string(out), "postgres") || time.Since(start) > 5*time.Second {
				t.Errorf("healthcheck with no server: err %v after %s, output %s", err, time.Since(start), out)
			}
		})
	}
}

func httptestRequest(path string) *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1"+path, nil)
	return r
}

// assertStatic fails unless bin is an ELF executable with no interpreter
// (no dynamic libc), as distroless/static needs.
func assertStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s is dynamically linked", bin)
		}
	}
}
