package testenv

import (
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/gorilla/mux"
)

// CheckOpenAPI fails the test unless the routes of router and the paths of
// the OpenAPI document at docPath marked with x-service = service (one of
// its space-separated names) are the same, method for method.
func CheckOpenAPI(t *testing.T, router *mux.Router, docPath, service string) {
	t.Helper()
	raw, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", docPath, err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("%s is not OpenAPI 3: %q", docPath, doc.OpenAPI)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths {
		services, _ := item["x-service"].(string)
		if !slices.Contains(strings.Fields(services), service) {
			continue
		}
		for method := range item {
			if m := strings.ToUpper(method); m != "X-SERVICE" && m != "PARAMETERS" {
				documented[m+" "+path] = true
			}
		}
	}
	served := map[string]bool{}
	for _, op := range Routes(t, router) {
		served[op] = true
	}
	for op := range served {
		if !documented[op] {
			t.Errorf("%s is served but not in %s", op, docPath)
		}
	}
	for op := range documented {
		if !served[op] {
			t.Errorf("%s is in %s but not served", op, docPath)
		}
	}
	if len(served) == 0 {
		t.Error("the router serves no route")
	}
}

// Routes lists what router serves as "METHOD /path/{template}" entries.
func Routes(t testing.TB, router *mux.Router) []string {
	t.Helper()
	var ops []string
	err := router.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		path, err := route.GetPathTemplate()
		if err != nil {
			return err
		}
		methods, err := route.GetMethods()
		if err != nil {
			methods = []string{http.MethodGet}
		}
		for _, m := range methods {
			ops = append(ops, m+" "+path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ops)
	return ops
}
