package local_test

import (
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/awslabs/goformation/v7"
	"github.com/awslabs/goformation/v7/cloudformation"
	"github.com/awslabs/goformation/v7/intrinsics"

	"invoicing/functions/invoices"
	"invoicing/functions/orders"
	"invoicing/shared/testenv"
)

// openTemplate parses template.yaml with goformation. Ref is kept as
// "Ref:Name" instead of being resolved (SAM's implicit resources and
// parameters would otherwise resolve to nothing), so references can be checked.
func openTemplate(t *testing.T) *cloudformation.Template {
	t.Helper()
	tmpl, err := goformation.OpenWithOptions("../template.yaml", &intrinsics.ProcessorOptions{
		IntrinsicHandlerOverrides: map[string]intrinsics.IntrinsicHandler{
			"Ref": func(_ string, input any, _ any) any {
				if s, ok := input.(string); ok {
					return "Ref:" + s
				}
				return nil
			},
		},
	})
	if err != nil {
		t.Fatalf("parse template.yaml: %v", err)
	}
	return tmpl
}

func TestSAMTemplate(t *testing.T) {
	tmpl := openTemplate(t)
	if tmpl.Transform == nil || tmpl.Transform.String == nil || *tmpl.Transform.String != "AWS::Serverless-2016-10-31" {
		t.Errorf("transform = %+v, want the SAM transform", tmpl.Transform)
	}
	functions := tmpl.GetAllServerlessFunctionResources()
	services := map[string]struct {
		fn, api string
		routes  []string
		work    string
	}{
		"orders":   {"OrdersFunction", "OrdersApi", testenv.Routes(t, orders.Router()), "Sweep"},
		"invoices": {"InvoicesFunction", "InvoicesApi", testenv.Routes(t, invoices.Router()), "Drain"},
	}
	if got := slices.Sorted(maps.Keys(functions)); !slices.Equal(got, []string{"InvoicesFunction", "OrdersFunction"}) {
		t.Fatalf("functions = %v", got)
	}
	apis := tmpl.GetAllServerlessHttpApiResources()
	for name, svc := range services {
		t.Run(name, func(t *testing.T) {
			f := functions[svc.fn]
			// Globals are not merged by the parser; every property is on the function.
			if f.Runtime == nil || *f.Runtime != "provided.al2023" {
				t.Errorf("runtime %v, want provided.al2023", f.Runtime)
			}
			if !slices.Equal(f.Architectures, []string{"arm64"}) {
				t.Errorf("architectures %v, want [arm64]", f.Architectures)
			}
			if f.Handler == nil || *f.Handler != "bootstrap" {
				t.Errorf("handler %v, want bootstrap", f.Handler)
			}
			if f.CodeUri == nil || f.CodeUri.String == nil || *f.CodeUri.String != "." {
				t.Errorf("CodeUri %+v, want the repository root", f.CodeUri)
			}
			if f.AWSCloudFormationMetadata["BuildMethod"] != "makefile" {
				t.Errorf("metadata %v, want BuildMethod makefile", f.AWSCloudFormationMetadata)
			}
			if f.Timeout == nil || *f.Timeout < 10 || f.MemorySize == nil || *f.MemorySize < 128 {
				t.Errorf("timeout %v, memory %v", f.Timeout, f.MemorySize)
			}
			// sam build runs `make build-<Function> ARTIFACTS_DIR=...`: the
			// target must exist and build the right command as bootstrap.
			out, err := exec.Command("make", "-s", "-n", "-C", "..", "build-"+svc.fn, "ARTIFACTS_DIR=/artifacts").CombinedOutput()
			if err != nil {
				t.Fatalf("make build-%s: %v\n%s", svc.fn, err, out)
			}
			for _, want := range []string{"GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0", "lambda.norpc", "-o /artifacts/bootstrap", "./functions/" + name + "/cmd/" + name} {
				if !strings.Contains(string(out), want) {
					t.Errorf("make build-%s does not contain %q:\n%s", svc.fn, want, out)
				}
			}

			env := map[string]string{}
			if f.Environment != nil {
				env = f.Environment.Variables
			}
			for _, secret := range []string{"DATABASE_URL", "BROKER_URL"} {
				if !strings.HasPrefix(env[secret], "{{resolve:secretsmanager:") {
					t.Errorf("%s = %q, want a Secrets Manager dynamic reference", secret, env[secret])
				}
			}

			var routed []string
			scheduled := false
			for en, e := range f.Events {
				// An event is tried against every event type: switch on Type.
				switch e.Type {
				case "HttpApi":
					h := e.Properties.HttpApiEvent
					if h == nil || h.Path == nil || h.Method == nil {
						t.Errorf("event %s: HttpApi without path or method", en)
						continue
					}
					if h.ApiId == nil || *h.ApiId != "Ref:"+svc.api {
						t.Errorf("event %s: ApiId %+v, want Ref %s", en, h.ApiId, svc.api)
					}
					if _, ok := apis[svc.api]; !ok {
						t.Errorf("HttpApi %s is not declared", svc.api)
					}
					routed = append(routed, strings.ToUpper(*h.Method)+" "+*h.Path)
				case "Schedule":
					s := e.Properties.ScheduleEvent
					if en != svc.work || s == nil || s.Schedule == "" {
						t.Errorf("schedule event %s: %+v, want %s with a schedule", en, s, svc.work)
					}
					scheduled = true
				default:
					t.Errorf("event %s has unexpected type %s", en, e.Type)
				}
			}
			if !scheduled {
				t.Errorf("%s has no schedule event", svc.fn)
			}
			slices.Sort(routed)
			for _, op := range svc.routes {
				if !slices.Contains(routed, op) {
					t.Errorf("%s is served but no HttpApi event reaches it", op)
				}
			}
			for _, op := range routed {
				if !slices.Contains(svc.routes, op) {
					t.Errorf("HttpApi event %s points at a route the service does not serve", op)
				}
			}
		})
	}

	esm := tmpl.GetAllLambdaEventSourceMappingResources()
	m, ok := esm["InvoicesAmazonMQMapping"]
	if !ok {
		t.Fatal("no Amazon MQ event source mapping for invoices")
	}
	if m.AWSCloudFormationCondition != "UseAmazonMQ" || !slices.Equal(m.Queues, []string{"orders"}) ||
		m.FunctionName != "Ref:InvoicesFunction" || m.EventSourceArn == nil || *m.EventSourceArn != "Ref:BrokerArn" {
		t.Errorf("mapping = condition %q queues %v function %q source %v", m.AWSCloudFormationCondition, m.Queues, m.FunctionName, m.EventSourceArn)
	}
	if _, ok := tmpl.Conditions["UseAmazonMQ"]; !ok {
		t.Error("condition UseAmazonMQ is not declared")
	}

	// Parameters that name or carry secrets have no plain default value.
	for name, p := range tmpl.Parameters {
		lower := strings.ToLower(name)
		if !strings.Contains(lower, "secret") && !strings.Contains(lower, "password") && !strings.Contains(lower, "url") {
			continue
		}
		if d, ok := p.Default.(string); ok && d != "" {
			t.Errorf("parameter %s has a plain default %q", name, d)
		}
	}
	for _, out := range []string{"OrdersApiUrl", "InvoicesApiUrl"} {
		if _, ok := tmpl.Outputs[out]; !ok {
			t.Errorf("output %s is missing", out)
		}
	}
}
