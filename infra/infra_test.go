package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"go.yaml.in/yaml/v3"
)

// The secret values of the test stacks: none of them may appear outside
// Secrets Manager and the resources that need the value itself (the Amazon
// MQ user, the RDS master password).
var secretValues = map[string]string{
	"brokerPassword":      "broker-pw-S3cr3t-0123456789",
	"ordersDatabaseUrl":   "postgres://app:orders-pw-S3cr3t@db.example.com:5432/orders?sslmode=require",
	"invoicesDatabaseUrl": "postgres://app:invoices-pw-S3cr3t@db.example.com:5432/invoices?sslmode=require",
	"databasePassword":    "db-pw-S3cr3t-0123456789",
	"otlpHeaders":         "Authorization=Basic otlp-S3cr3t-token",
}

// secretNeedles are substrings that betray a secret wherever they appear.
var secretNeedles = []string{"broker-pw-S3cr3t", "orders-pw-S3cr3t", "invoices-pw-S3cr3t", "db-pw-S3cr3t", "otlp-S3cr3t"}

const (
	testRegion = "eu-west-1"
	adminCIDR  = "203.0.113.10/32"
	vpcCIDR    = "10.40.0.0/16"
)

type res struct {
	Type, Name string
	Inputs     resource.PropertyMap
}

type mocks struct {
	mu  sync.Mutex
	all []res
}

func (m *mocks) NewResource(a pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	m.mu.Lock()
	m.all = append(m.all, res{a.TypeToken, a.Name, a.Inputs})
	m.mu.Unlock()
	out := a.Inputs.Copy()
	svc := strings.Split(strings.Split(a.TypeToken, ":")[1], "/")[0]
	id := a.Name + "-id"
	out["arn"] = resource.NewStringProperty(fmt.Sprintf("arn:aws:%s:%s:123456789012:%s", svc, testRegion, a.Name))
	if _, ok := out["name"]; !ok {
		out["name"] = resource.NewStringProperty(a.Name)
	}
	switch a.TypeToken {
	case "aws:secretsmanager/secret:Secret":
		out["arn"] = resource.NewStringProperty(fmt.Sprintf("arn:aws:secretsmanager:%s:123456789012:secret:%s", testRegion, a.Name))
	case "aws:lambda/function:Function":
		out["arn"] = resource.NewStringProperty(fmt.Sprintf("arn:aws:lambda:%s:123456789012:function:%s", testRegion, a.Inputs["name"].StringValue()))
	case "aws:secretsmanager/secretVersion:SecretVersion":
		out["versionId"] = resource.NewStringProperty("v-" + a.Name)
	case "aws:lb/loadBalancer:LoadBalancer":
		out["dnsName"] = resource.NewStringProperty(a.Name + ".elb.example.com")
	case "aws:ecr/repository:Repository":
		out["repositoryUrl"] = resource.NewStringProperty("123456789012.dkr.ecr.eu-west-1.amazonaws.com/" + a.Inputs["name"].StringValue())
	case "aws:rds/instance:Instance":
		out["address"] = resource.NewStringProperty("db.rds.example.com")
	case "aws:rds/proxy:Proxy":
		out["endpoint"] = resource.NewStringProperty("proxy.rds.example.com")
	case "aws:mq/broker:Broker":
		out["instances"] = resource.NewArrayProperty([]resource.PropertyValue{resource.NewObjectProperty(resource.PropertyMap{
			"endpoints":  resource.NewArrayProperty([]resource.PropertyValue{resource.NewStringProperty("amqps://b-1234.mq.eu-west-1.amazonaws.com:5671")}),
			"consoleUrl": resource.NewStringProperty("https://b-1234.mq.eu-west-1.amazonaws.com"),
		})})
	}
	return id, out, nil
}

func (m *mocks) Call(a pulumi.MockCallArgs) (resource.PropertyMap, error) {
	return resource.PropertyMap{}, nil
}

// stack is one mocked run of the program.
type stack struct {
	t         *testing.T
	m         *mocks
	outputs   map[string]any
	secretOut []string
}

type mode struct{ deploy, broker, database string }

func (md mode) String() string { return md.deploy + "/" + md.broker + "/" + md.database }

func baseConfig(md mode) map[string]string {
	cfg := map[string]string{
		"aws:region":                    testRegion,
		"invoicing:deployMode":          md.deploy,
		"invoicing:brokerMode":          md.broker,
		"invoicing:database":            md.database,
		"invoicing:allowedOrigins":      `["https://app.example.com"]`,
		"invoicing:adminCidrs":          `["` + adminCIDR + `"]`,
		"invoicing:otlpEndpoint":        "https://otlp.example.com/otlp",
		"invoicing:imageTag":            "v1",
		"invoicing:desiredCount":        "2",
		"invoicing:maxCount":            "5",
		"invoicing:brokerPassword":      secretValues["brokerPassword"],
		"invoicing:otlpHeaders":         secretValues["otlpHeaders"],
		"invoicing:ordersDatabaseUrl":   secretValues["ordersDatabaseUrl"],
		"invoicing:invoicesDatabaseUrl": secretValues["invoicesDatabaseUrl"],
		"invoicing:databasePassword":    secretValues["databasePassword"],
	}
	return cfg
}

func run(t *testing.T, cfg map[string]string) (*stack, error) {
	t.Helper()
	b, _ := json.Marshal(cfg)
	t.Setenv("PULUMI_CONFIG", string(b))
	var keys []string
	for k := range secretValues {
		keys = append(keys, "invoicing:"+k)
	}
	kb, _ := json.Marshal(keys)
	t.Setenv("PULUMI_CONFIG_SECRET_KEYS", string(kb))
	st := &stack{t: t, m: &mocks{}, outputs: map[string]any{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		out, err := build(ctx)
		if err != nil {
			return err
		}
		for k, v := range out {
			o := pulumi.ToOutput(v)
			ctx.Export(k, o)
			if pulumi.IsSecret(o) {
				st.secretOut = append(st.secretOut, k)
			}
			wg.Add(1)
			o.ApplyT(func(x any) any {
				defer wg.Done()
				mu.Lock()
				st.outputs[k] = x
				mu.Unlock()
				return x
			})
		}
		return nil
	}, pulumi.WithMocks("invoicing", "test", st.m))
	if err == nil {
		// Applies on plain values are not awaited by RunErr.
		wg.Wait()
	}
	return st, err
}

func mustRun(t *testing.T, cfg map[string]string) *stack {
	t.Helper()
	st, err := run(t, cfg)
	if err != nil {
		t.Fatalf("program failed: %v", err)
	}
	return st
}

// ---- property helpers ----

// plain unwraps secrets and outputs; secret reports whether it had to.
func plain(v resource.PropertyValue) (resource.PropertyValue, bool) {
	secret := false
	for {
		switch {
		case v.IsSecret():
			v, secret = v.SecretValue().Element, true
		case v.IsOutput():
			secret = secret || v.OutputValue().Secret
			v = v.OutputValue().Element
		default:
			return v, secret
		}
	}
}

func str(v resource.PropertyValue) string {
	p, _ := plain(v)
	if p.IsString() {
		return p.StringValue()
	}
	if p.IsNumber() {
		return fmt.Sprint(p.NumberValue())
	}
	if p.IsBool() {
		return fmt.Sprint(p.BoolValue())
	}
	return ""
}

func num(v resource.PropertyValue) float64 {
	p, _ := plain(v)
	if p.IsNumber() {
		return p.NumberValue()
	}
	return -1
}

func obj(v resource.PropertyValue) resource.PropertyMap {
	p, _ := plain(v)
	if p.IsObject() {
		return p.ObjectValue()
	}
	return resource.PropertyMap{}
}

func arr(v resource.PropertyValue) []resource.PropertyValue {
	p, _ := plain(v)
	if p.IsArray() {
		return p.ArrayValue()
	}
	return nil
}

func strs(v resource.PropertyValue) []string {
	var out []string
	for _, x := range arr(v) {
		out = append(out, str(x))
	}
	return out
}

// allStrings flattens every string inside v.
func allStrings(v resource.PropertyValue) []string {
	p, _ := plain(v)
	switch {
	case p.IsString():
		return []string{p.StringValue()}
	case p.IsArray():
		var out []string
		for _, x := range p.ArrayValue() {
			out = append(out, allStrings(x)...)
		}
		return out
	case p.IsObject():
		var out []string
		for k, x := range p.ObjectValue() {
			out = append(out, string(k))
			out = append(out, allStrings(x)...)
		}
		return out
	}
	return nil
}

func (s *stack) byType(typ string) []res {
	var out []res
	for _, r := range s.m.all {
		if r.Type == typ {
			out = append(out, r)
		}
	}
	return out
}

func (s *stack) one(typ, name string) res {
	s.t.Helper()
	for _, r := range s.m.all {
		if r.Type == typ && r.Name == name {
			return r
		}
	}
	s.t.Fatalf("no %s named %q", typ, name)
	return res{}
}

func (s *stack) has(typ, name string) bool {
	for _, r := range s.m.all {
		if r.Type == typ && r.Name == name {
			return true
		}
	}
	return false
}

func (s *stack) names(typ string) []string {
	var out []string
	for _, r := range s.byType(typ) {
		out = append(out, r.Name)
	}
	slices.Sort(out)
	return out
}

// containers decodes a task definition's container definitions.
func (s *stack) containers(name string) []Container {
	s.t.Helper()
	r := s.one("aws:ecs/taskDefinition:TaskDefinition", name)
	v, secret := plain(r.Inputs["containerDefinitions"])
	if secret {
		s.t.Errorf("task definition %s: containerDefinitions derive from a secret value", name)
	}
	var cs []Container
	if err := json.Unmarshal([]byte(v.StringValue()), &cs); err != nil {
		s.t.Fatalf("task definition %s: %v", name, err)
	}
	return cs
}

func env(c Container) map[string]string {
	m := map[string]string{}
	for _, kv := range c.Environment {
		m[kv.Name] = kv.Value
	}
	return m
}

func secretEnv(c Container) map[string]string {
	m := map[string]string{}
	for _, kv := range c.Secrets {
		m[kv.Name] = kv.ValueFrom
	}
	return m
}

// ingress is one security group ingress rule, resolved.
type ingress struct {
	group, cidr, from string
	port              int
}

func (s *stack) ingress() []ingress {
	var out []ingress
	for _, r := range s.byType("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule") {
		in := ingress{
			group: strings.TrimSuffix(str(r.Inputs["securityGroupId"]), "-id"),
			cidr:  str(r.Inputs["cidrIpv4"]),
			from:  strings.TrimSuffix(str(r.Inputs["referencedSecurityGroupId"]), "-id"),
			port:  int(num(r.Inputs["fromPort"])),
		}
		if num(r.Inputs["toPort"]) != num(r.Inputs["fromPort"]) {
			s.t.Errorf("ingress %s opens a port range", r.Name)
		}
		out = append(out, in)
	}
	return out
}

var allModes = func() []mode {
	var out []mode
	for _, d := range []string{DeployFargate, DeployLambda} {
		for _, b := range []string{BrokerFargate, BrokerAmazonMQ} {
			for _, db := range []string{DatabaseExternal, DatabaseRDS} {
				out = append(out, mode{d, b, db})
			}
		}
	}
	return out
}()

// ---- tests ----

func TestEveryModeCombination(t *testing.T) {
	for _, md := range allModes {
		t.Run(strings.ReplaceAll(md.String(), "/", "_"), func(t *testing.T) {
			st := mustRun(t, baseConfig(md))
			checkNetwork(t, st)
			if got := st.names("aws:ecr/repository:Repository"); !slices.Equal(got, []string{"invoices", "orders"}) {
				t.Errorf("ECR repositories %v", got)
			}
			checkNoSecretLeaks(t, st)
			checkIngress(t, st, md)
			checkGateway(t, st, md)
			checkOutputs(t, st, md)
			checkDeployMode(t, st, md)
			checkBrokerMode(t, st, md)
			checkDatabase(t, st, md)
		})
	}
}

func checkNetwork(t *testing.T, st *stack) {
	t.Helper()
	vpc := st.one("aws:ec2/vpc:Vpc", "vpc")
	if str(vpc.Inputs["cidrBlock"]) != vpcCIDR {
		t.Errorf("vpc cidr %q", str(vpc.Inputs["cidrBlock"]))
	}
	azs := map[string]bool{}
	for _, sub := range st.byType("aws:ec2/subnet:Subnet") {
		azs[str(sub.Inputs["availabilityZone"])] = true
		if str(sub.Inputs["vpcId"]) != "vpc-id" {
			t.Errorf("subnet %s outside the stack's VPC", sub.Name)
		}
		if str(sub.Inputs["mapPublicIpOnLaunch"]) == "true" {
			t.Errorf("subnet %s gives public IPs", sub.Name)
		}
	}
	if got := st.names("aws:ec2/subnet:Subnet"); !slices.Equal(got, []string{"private-0", "private-1", "public-0", "public-1"}) {
		t.Errorf("subnets %v", got)
	}
	if len(azs) != 2 {
		t.Errorf("subnets over %d AZs, want 2", len(azs))
	}
	if n := len(st.byType("aws:ec2/natGateway:NatGateway")); n != 1 {
		t.Errorf("%d NAT gateways, want 1 (the cost choice)", n)
	}
	for _, svc := range st.byType("aws:ecs/service:Service") {
		nc := obj(svc.Inputs["networkConfiguration"])
		if str(nc["assignPublicIp"]) == "true" || !slices.Equal(strs(nc["subnets"]), []string{"private-0-id", "private-1-id"}) {
			t.Errorf("ECS service %s not in the private subnets only: %v", svc.Name, nc)
		}
	}
	for _, lg := range st.byType("aws:cloudwatch/logGroup:LogGroup") {
		if num(lg.Inputs["retentionInDays"]) != LogRetentionDays {
			t.Errorf("log group %s keeps logs forever", lg.Name)
		}
	}
}

// checkNoSecretLeaks: no secret value in a task definition, a Lambda
// environment, an output or any other resource than the few that must hold
// it; task definitions take credentials from Secrets Manager ARNs.
func checkNoSecretLeaks(t *testing.T, st *stack) {
	t.Helper()
	mayHold := map[string]bool{
		"aws:secretsmanager/secretVersion:SecretVersion": true,
		"aws:mq/broker:Broker":                           true, // the broker user's password
		"aws:rds/instance:Instance":                      true, // the master password
	}
	for _, r := range st.m.all {
		if mayHold[r.Type] {
			continue
		}
		for k, v := range r.Inputs {
			for _, s := range allStrings(v) {
				for _, needle := range secretNeedles {
					if strings.Contains(s, needle) {
						t.Errorf("%s %s: input %s holds a secret value", r.Type, r.Name, k)
					}
				}
			}
		}
	}
	for _, sv := range st.byType("aws:secretsmanager/secretVersion:SecretVersion") {
		if _, secret := plain(sv.Inputs["secretString"]); !secret {
			t.Errorf("secret version %s: secretString is not marked secret", sv.Name)
		}
	}
	for _, td := range st.byType("aws:ecs/taskDefinition:TaskDefinition") {
		for _, c := range st.containers(td.Name) {
			for name, from := range secretEnv(c) {
				if !strings.HasPrefix(from, "arn:aws:secretsmanager:") {
					t.Errorf("%s: secret %s from %q, not a Secrets Manager ARN", c.Name, name, from)
				}
			}
			for name := range env(c) {
				for _, bad := range []string{"DATABASE_URL", "BROKER_URL", "OTEL_EXPORTER_OTLP_HEADERS", "RABBITMQ_DEFAULT_PASS"} {
					if name == bad {
						t.Errorf("%s: %s is a plain environment variable", c.Name, name)
					}
				}
			}
		}
	}
	for _, fn := range st.byType("aws:lambda/function:Function") {
		vars := obj(obj(fn.Inputs["environment"])["variables"])
		if _, secret := plain(fn.Inputs["environment"]); secret {
			t.Errorf("function %s: environment derives from a secret", fn.Name)
		}
		for k, v := range vars {
			for _, bad := range []string{"DATABASE_URL", "BROKER_URL", "OTEL_EXPORTER_OTLP_HEADERS"} {
				if string(k) == bad {
					t.Errorf("function %s: %s in its environment", fn.Name, k)
				}
			}
			if strings.HasSuffix(string(k), SecretARNSuffix) && !strings.HasPrefix(str(v), "arn:aws:secretsmanager:") {
				t.Errorf("function %s: %s=%q", fn.Name, k, str(v))
			}
		}
	}
	if len(st.secretOut) > 0 {
		t.Errorf("secret outputs: %v", st.secretOut)
	}
	for k, v := range st.outputs {
		for _, needle := range secretNeedles {
			if strings.Contains(fmt.Sprint(v), needle) {
				t.Errorf("output %s holds a secret", k)
			}
		}
	}
}

func checkIngress(t *testing.T, st *stack, md mode) {
	t.Helper()
	allowedCIDR := map[int][]string{
		80:       {"0.0.0.0/0"},
		AMQPPort: {vpcCIDR, adminCIDR},
		MgmtPort: {adminCIDR},
		443:      {vpcCIDR}, // Amazon MQ console, from inside only
	}
	for _, in := range st.ingress() {
		if in.cidr != "" {
			if !slices.Contains(allowedCIDR[in.port], in.cidr) {
				t.Errorf("sg %s: port %d open to %s", in.group, in.port, in.cidr)
			}
			if in.cidr == "0.0.0.0/0" && in.group != "alb" {
				t.Errorf("sg %s: port %d open to the internet", in.group, in.port)
			}
		}
		if in.port == 8001 || in.port == 8444 {
			t.Errorf("sg %s opens Kong's admin API", in.group)
		}
		if (in.cidr == "") == (in.from == "") {
			t.Errorf("sg %s port %d: rule with neither or both of a CIDR and a group", in.group, in.port)
		}
		switch in.group {
		case "alb", "nlb":
			if in.cidr == "" {
				t.Errorf("sg %s admits group %s", in.group, in.from)
			}
		case "amazonmq":
			ok := (in.port == AMQPSPort && (in.from == "services" || in.from == "functions" || in.from == "amazonmq")) ||
				(in.port == 443 && in.cidr == vpcCIDR)
			if !ok {
				t.Errorf("Amazon MQ reachable on %d from %q %q", in.port, in.from, in.cidr)
			}
		case "db-proxy":
			if in.from != "functions" || in.port != PostgresPort {
				t.Errorf("db proxy reachable on %d from %q %q", in.port, in.from, in.cidr)
			}
		case "kong":
			if in.from != "alb" {
				t.Errorf("kong reachable from %q %q", in.from, in.cidr)
			}
		case "services":
			if in.from != "kong" || (in.port != 3333 && in.port != 3334) {
				t.Errorf("services reachable on %d from %q %q", in.port, in.from, in.cidr)
			}
		case "functions":
			t.Errorf("functions security group has ingress %+v", in)
		case "efs":
			if in.from != "rabbitmq" || in.port != 2049 {
				t.Errorf("EFS reachable on %d from %q %q", in.port, in.from, in.cidr)
			}
		case "db":
			want := "services"
			if md.deploy == DeployLambda {
				want = "db-proxy"
			}
			if in.from != want || in.port != PostgresPort {
				t.Errorf("db reachable on %d from %q %q", in.port, in.from, in.cidr)
			}
		case "rabbitmq":
			ok := (in.port == AMQPPort && (in.from == "nlb" || in.from == "services" || in.from == "functions")) ||
				(in.port == MgmtPort && in.from == "alb")
			if !ok {
				t.Errorf("rabbitmq reachable on %d from %q %q", in.port, in.from, in.cidr)
			}
		}
	}
}

func checkGateway(t *testing.T, st *stack, md mode) {
	t.Helper()
	cs := st.containers("kong")
	if len(cs) != 1 || !strings.HasPrefix(cs[0].Image, "kong:") {
		t.Fatalf("kong containers %+v", cs)
	}
	e := env(cs[0])
	for k, want := range map[string]string{"KONG_DATABASE": "off", "KONG_ADMIN_LISTEN": "off", "KONG_ADMIN_GUI_LISTEN": "off"} {
		if e[k] != want {
			t.Errorf("kong %s=%q, want %q", k, e[k], want)
		}
	}
	td := st.one("aws:ecs/taskDefinition:TaskDefinition", "kong")
	if str(td.Inputs["cpu"]) != "512" || str(td.Inputs["memory"]) != "1024" {
		t.Errorf("kong cpu/memory %s/%s", str(td.Inputs["cpu"]), str(td.Inputs["memory"]))
	}
	var doc struct {
		Services []struct {
			Name, Host string
			Port       int
		}
		Routes []struct {
			Name    string
			Plugins []struct {
				Name   string
				Config map[string]any
			}
		}
	}
	if err := yaml.Unmarshal([]byte(e["KONG_DECLARATIVE_CONFIG_STRING"]), &doc); err != nil {
		t.Fatalf("kong config: %v", err)
	}
	switch md.deploy {
	case DeployFargate:
		got := map[string]string{}
		for _, s := range doc.Services {
			got[s.Name] = fmt.Sprintf("%s:%d", s.Host, s.Port)
		}
		want := map[string]string{"orders": "orders.invoicing.internal:3333", "invoices": "invoices.invoicing.internal:3334"}
		if fmt.Sprint(got) != fmt.Sprint(want) || len(doc.Routes) != 0 {
			t.Errorf("kong services %v routes %d, want %v and no top-level routes", got, len(doc.Routes), want)
		}
		if st.has("aws:iam/rolePolicy:RolePolicy", "kong-task") {
			t.Errorf("kong task role has a policy in fargate mode")
		}
	case DeployLambda:
		if len(doc.Services) != 0 || len(doc.Routes) == 0 {
			t.Fatalf("kong lambda config: %d services, %d routes", len(doc.Services), len(doc.Routes))
		}
		for _, r := range doc.Routes {
			fn := ""
			for _, p := range r.Plugins {
				if p.Name == "aws-lambda" {
					fn = fmt.Sprint(p.Config["function_name"])
					if p.Config["aws_region"] != testRegion {
						t.Errorf("route %s: region %v", r.Name, p.Config["aws_region"])
					}
				}
			}
			want := "invoicing-test-" + strings.Split(r.Name, "-")[0]
			if fn != want {
				t.Errorf("route %s invokes %q, want %q", r.Name, fn, want)
			}
		}
		policies := st.one("aws:iam/rolePolicy:RolePolicy", "kong-task")
		var pol struct{ Statement []Statement }
		_ = json.Unmarshal([]byte(str(policies.Inputs["policy"])), &pol)
		want := []Statement{{Effect: "Allow", Action: []string{"lambda:InvokeFunction"}, Resource: []string{
			"arn:aws:lambda:eu-west-1:123456789012:function:invoicing-test-orders",
			"arn:aws:lambda:eu-west-1:123456789012:function:invoicing-test-invoices",
		}}}
		if fmt.Sprint(pol.Statement) != fmt.Sprint(want) {
			t.Errorf("kong task policy %+v, want %+v", pol.Statement, want)
		}
	}
	alb := st.one("aws:lb/loadBalancer:LoadBalancer", "gateway")
	if str(alb.Inputs["loadBalancerType"]) != "application" || str(alb.Inputs["internal"]) == "true" {
		t.Errorf("gateway load balancer %v", alb.Inputs)
	}
	listeners := map[int]res{}
	for _, l := range st.byType("aws:lb/listener:Listener") {
		listeners[int(num(l.Inputs["port"]))] = l
	}
	http := listeners[80]
	if str(http.Inputs["protocol"]) != "HTTP" || str(http.Inputs["loadBalancerArn"]) != "arn:aws:lb:eu-west-1:123456789012:gateway" {
		t.Errorf("no HTTP listener on the ALB")
	}
	if _, ok := listeners[443]; ok {
		t.Errorf("HTTPS listener without a certificate")
	}
	if md.broker == BrokerFargate {
		ui := listeners[MgmtPort]
		if str(ui.Inputs["loadBalancerArn"]) != "arn:aws:lb:eu-west-1:123456789012:gateway" ||
			str(obj(arr(ui.Inputs["defaultActions"])[0])["targetGroupArn"]) != "arn:aws:lb:eu-west-1:123456789012:rabbitmq-mgmt" {
			t.Errorf("management UI listener %v", ui.Inputs)
		}
		amqp := listeners[AMQPPort]
		if str(amqp.Inputs["protocol"]) != "TCP" || str(amqp.Inputs["loadBalancerArn"]) != "arn:aws:lb:eu-west-1:123456789012:amqp" {
			t.Errorf("AMQP listener %v", amqp.Inputs)
		}
		nlb := st.one("aws:lb/loadBalancer:LoadBalancer", "amqp")
		if str(nlb.Inputs["loadBalancerType"]) != "network" || !slices.Equal(strs(nlb.Inputs["securityGroups"]), []string{"nlb-id"}) {
			t.Errorf("amqp load balancer %v", nlb.Inputs)
		}
	} else if len(listeners) != 1 {
		t.Errorf("listeners %v with Amazon MQ, want HTTP only", listeners)
	}
}

func checkOutputs(t *testing.T, st *stack, md mode) {
	t.Helper()
	for _, k := range []string{"gatewayUrl", "rabbitmqManagementUrl", "amqpHost", "deployMode", "brokerMode"} {
		if v, ok := st.outputs[k]; !ok || fmt.Sprint(v) == "" {
			t.Errorf("output %s missing", k)
		}
	}
	if st.outputs["deployMode"] != md.deploy || st.outputs["brokerMode"] != md.broker {
		t.Errorf("mode outputs %v %v", st.outputs["deployMode"], st.outputs["brokerMode"])
	}
	if st.outputs["gatewayUrl"] != "http://gateway.elb.example.com" {
		t.Errorf("gatewayUrl %v", st.outputs["gatewayUrl"])
	}
	want := map[string]string{BrokerFargate: "amqp.elb.example.com", BrokerAmazonMQ: "b-1234.mq.eu-west-1.amazonaws.com"}[md.broker]
	if st.outputs["amqpHost"] != want {
		t.Errorf("amqpHost %v, want %s", st.outputs["amqpHost"], want)
	}
}

func checkDeployMode(t *testing.T, st *stack, md mode) {
	t.Helper()
	services := st.names("aws:ecs/service:Service")
	want := []string{"kong"}
	if md.broker == BrokerFargate {
		want = append(want, "rabbitmq")
	}
	if md.deploy == DeployFargate {
		want = append(want, "orders", "invoices")
	}
	slices.Sort(want)
	if !slices.Equal(services, want) {
		t.Errorf("ECS services %v, want %v", services, want)
	}
	switch md.deploy {
	case DeployFargate:
		if fns := st.byType("aws:lambda/function:Function"); len(fns) != 0 {
			t.Errorf("functions in fargate mode")
		}
		if n := len(st.byType("aws:cloudwatch/eventRule:EventRule")); n != 0 {
			t.Errorf("%d schedules in fargate mode", n)
		}
		for _, app := range apps {
			td := st.one("aws:ecs/taskDefinition:TaskDefinition", app.Name)
			if str(td.Inputs["cpu"]) != "256" || str(td.Inputs["memory"]) != "512" {
				t.Errorf("%s cpu/memory %s/%s", app.Name, str(td.Inputs["cpu"]), str(td.Inputs["memory"]))
			}
			c := st.containers(app.Name)[0]
			if c.Image != "123456789012.dkr.ecr.eu-west-1.amazonaws.com/invoicing-test/"+app.Name+":v1" {
				t.Errorf("%s image %s", app.Name, c.Image)
			}
			if got := slices.Sorted(maps.Keys(secretEnv(c))); !slices.Equal(got, []string{"BROKER_URL", "DATABASE_URL", "OTEL_EXPORTER_OTLP_HEADERS"}) {
				t.Errorf("%s secrets %v", app.Name, got)
			}
			if env(c)["SECRETS_VERSION"] != "v-"+app.Name+"-database-url,v-broker-url,v-otlp-headers" {
				t.Errorf("%s SECRETS_VERSION=%q", app.Name, env(c)["SECRETS_VERSION"])
			}
			if env(c)["PORT"] != fmt.Sprint(app.Port) || env(c)["OTEL_SERVICE_NAME"] != app.Name {
				t.Errorf("%s env %v", app.Name, env(c))
			}
			svc := st.one("aws:ecs/service:Service", app.Name)
			if str(obj(svc.Inputs["serviceRegistries"])["registryArn"]) != "arn:aws:servicediscovery:eu-west-1:123456789012:"+app.Name {
				t.Errorf("%s not registered in Cloud Map", app.Name)
			}
			tgt := st.one("aws:appautoscaling/target:Target", app.Name)
			if num(tgt.Inputs["minCapacity"]) != 2 || num(tgt.Inputs["maxCapacity"]) != 5 ||
				str(tgt.Inputs["resourceId"]) != "service/invoicing-test/"+app.Name {
				t.Errorf("%s scaling target %v", app.Name, tgt.Inputs)
			}
			pol := st.one("aws:appautoscaling/policy:Policy", app.Name+"-cpu")
			cfg := obj(pol.Inputs["targetTrackingScalingPolicyConfiguration"])
			if str(obj(cfg["predefinedMetricSpecification"])["predefinedMetricType"]) != "ECSServiceAverageCPUUtilization" {
				t.Errorf("%s scales on %v", app.Name, cfg)
			}
		}
	case DeployLambda:
		if n := len(st.byType("aws:appautoscaling/target:Target")); n != 0 {
			t.Errorf("scaling targets in lambda mode")
		}
		for _, app := range apps {
			fn := st.one("aws:lambda/function:Function", app.Name)
			in := fn.Inputs
			if str(in["runtime"]) != "provided.al2023" || !slices.Equal(strs(in["architectures"]), []string{"arm64"}) ||
				str(in["handler"]) != "bootstrap" || str(in["name"]) != "invoicing-test-"+app.Name {
				t.Errorf("function %s: %s %v %s", app.Name, str(in["runtime"]), strs(in["architectures"]), str(in["handler"]))
			}
			code, _ := plain(in["code"])
			if !code.IsArchive() || code.ArchiveValue().Path != "../dist/"+app.Name+".zip" {
				t.Errorf("function %s code %v", app.Name, code)
			}
			vpc := obj(in["vpcConfig"])
			if !slices.Equal(strs(vpc["subnetIds"]), []string{"private-0-id", "private-1-id"}) || !slices.Equal(strs(vpc["securityGroupIds"]), []string{"functions-id"}) {
				t.Errorf("function %s vpc %v", app.Name, vpc)
			}
			vars := obj(obj(in["environment"])["variables"])
			for _, k := range []string{"DATABASE_URL_SECRET_ARN", "BROKER_URL_SECRET_ARN", "OTEL_EXPORTER_OTLP_HEADERS_SECRET_ARN"} {
				if !strings.HasPrefix(str(vars[resource.PropertyKey(k)]), "arn:aws:secretsmanager:") {
					t.Errorf("function %s: %s=%q", app.Name, k, str(vars[resource.PropertyKey(k)]))
				}
			}
			what := map[string]string{"orders": "sweep", "invoices": "drain"}[app.Name]
			rule := st.one("aws:cloudwatch/eventRule:EventRule", app.Name+"-"+what)
			if str(rule.Inputs["scheduleExpression"]) != "rate(1 minute)" {
				t.Errorf("%s schedule %q", app.Name, str(rule.Inputs["scheduleExpression"]))
			}
			target := st.one("aws:cloudwatch/eventTarget:EventTarget", app.Name+"-"+what)
			if str(target.Inputs["arn"]) != "arn:aws:lambda:eu-west-1:123456789012:function:invoicing-test-"+app.Name {
				t.Errorf("%s schedule targets %q", app.Name, str(target.Inputs["arn"]))
			}
			perm := st.one("aws:lambda/permission:Permission", app.Name+"-"+what)
			if str(perm.Inputs["principal"]) != "events.amazonaws.com" || str(perm.Inputs["sourceArn"]) != "arn:aws:cloudwatch:eu-west-1:123456789012:"+app.Name+"-"+what ||
				str(perm.Inputs["function"]) != "invoicing-test-"+app.Name {
				t.Errorf("%s permission %v", app.Name, perm.Inputs)
			}
			// The role reads exactly the function's own secrets.
			var pol struct{ Statement []Statement }
			_ = json.Unmarshal([]byte(str(st.one("aws:iam/rolePolicy:RolePolicy", app.Name+"-function").Inputs["policy"])), &pol)
			var readable []string
			for _, s := range pol.Statement {
				if slices.Contains(s.Action, "secretsmanager:GetSecretValue") {
					readable = append(readable, s.Resource...)
				}
				if slices.Contains(s.Resource, "*") && slices.ContainsFunc(s.Action, func(a string) bool { return !strings.HasPrefix(a, "ec2:") }) {
					t.Errorf("%s role: %v on *", app.Name, s.Action)
				}
			}
			slices.Sort(readable)
			wantRead := []string{"broker-url", app.Name + "-database-url", "otlp-headers"}
			if md.broker == BrokerAmazonMQ && app.Name == "invoices" {
				wantRead = append(wantRead, "broker-credentials")
			}
			for i := range wantRead {
				wantRead[i] = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:" + wantRead[i]
			}
			slices.Sort(wantRead)
			if !slices.Equal(readable, wantRead) {
				t.Errorf("%s role reads %v, want %v", app.Name, readable, wantRead)
			}
		}
	}
}

func checkBrokerMode(t *testing.T, st *stack, md mode) {
	t.Helper()
	esm := st.byType("aws:lambda/eventSourceMapping:EventSourceMapping")
	switch md.broker {
	case BrokerFargate:
		if st.has("aws:mq/broker:Broker", "broker") {
			t.Errorf("Amazon MQ broker with brokerMode=fargate")
		}
		if len(esm) != 0 {
			t.Errorf("event source mapping without Amazon MQ")
		}
		fs := st.one("aws:efs/fileSystem:FileSystem", "rabbitmq")
		if str(fs.Inputs["encrypted"]) != "true" {
			t.Errorf("EFS not encrypted")
		}
		if n := len(st.byType("aws:efs/mountTarget:MountTarget")); n != 2 {
			t.Errorf("%d mount targets, want one per private subnet", n)
		}
		ap := st.one("aws:efs/accessPoint:AccessPoint", "rabbitmq")
		if num(obj(ap.Inputs["posixUser"])["uid"]) != RabbitMQUID {
			t.Errorf("access point user %v", ap.Inputs["posixUser"])
		}
		td := st.one("aws:ecs/taskDefinition:TaskDefinition", "rabbitmq")
		vols := arr(td.Inputs["volumes"])
		if len(vols) != 1 {
			t.Fatalf("rabbitmq volumes %v", vols)
		}
		efsCfg := obj(obj(vols[0])["efsVolumeConfiguration"])
		if str(efsCfg["fileSystemId"]) != "rabbitmq-id" || str(efsCfg["transitEncryption"]) != "ENABLED" ||
			str(obj(efsCfg["authorizationConfig"])["accessPointId"]) != "rabbitmq-id" {
			t.Errorf("rabbitmq volume %v", efsCfg)
		}
		c := st.containers("rabbitmq")[0]
		if !strings.HasPrefix(c.Image, "rabbitmq:") || !strings.Contains(c.Image, "management") {
			t.Errorf("rabbitmq image %s", c.Image)
		}
		if len(c.MountPoints) != 1 || c.MountPoints[0].ContainerPath != "/var/lib/rabbitmq" || c.MountPoints[0].SourceVolume != str(obj(vols[0])["name"]) || c.MountPoints[0].ReadOnly {
			t.Errorf("rabbitmq mounts %+v", c.MountPoints)
		}
		if env(c)["RABBITMQ_NODENAME"] != "rabbit@localhost" || env(c)["RABBITMQ_DEFAULT_USER"] != "invoicing" {
			t.Errorf("rabbitmq env %v", env(c))
		}
		if !strings.HasPrefix(secretEnv(c)["RABBITMQ_DEFAULT_PASS"], "arn:aws:secretsmanager:") {
			t.Errorf("rabbitmq password not from Secrets Manager")
		}
		if str(td.Inputs["cpu"]) != "512" || str(td.Inputs["memory"]) != "1024" {
			t.Errorf("rabbitmq cpu/memory %s/%s", str(td.Inputs["cpu"]), str(td.Inputs["memory"]))
		}
		svc := st.one("aws:ecs/service:Service", "rabbitmq")
		if num(svc.Inputs["desiredCount"]) != 1 || num(svc.Inputs["deploymentMaximumPercent"]) != 100 || num(svc.Inputs["deploymentMinimumHealthyPercent"]) != 0 {
			t.Errorf("rabbitmq deployment allows two writers: %v/%v/%v", svc.Inputs["desiredCount"], svc.Inputs["deploymentMaximumPercent"], svc.Inputs["deploymentMinimumHealthyPercent"])
		}
		if st.has("aws:appautoscaling/target:Target", "rabbitmq") {
			t.Errorf("rabbitmq scales")
		}
	case BrokerAmazonMQ:
		b := st.one("aws:mq/broker:Broker", "broker")
		if str(b.Inputs["engineType"]) != "RabbitMQ" || str(b.Inputs["publiclyAccessible"]) != "false" || str(b.Inputs["deploymentMode"]) != "SINGLE_INSTANCE" {
			t.Errorf("broker %v", b.Inputs)
		}
		for _, typ := range []string{"aws:efs/fileSystem:FileSystem", "aws:efs/mountTarget:MountTarget"} {
			if len(st.byType(typ)) != 0 {
				t.Errorf("%s with Amazon MQ", typ)
			}
		}
		if st.has("aws:lb/loadBalancer:LoadBalancer", "amqp") {
			t.Errorf("NLB with Amazon MQ")
		}
		if md.deploy == DeployLambda {
			if len(esm) != 1 {
				t.Fatalf("%d event source mappings", len(esm))
			}
			in := esm[0].Inputs
			if str(in["eventSourceArn"]) != "arn:aws:mq:eu-west-1:123456789012:broker" || str(in["queues"]) != "orders" ||
				str(in["functionName"]) != "arn:aws:lambda:eu-west-1:123456789012:function:invoicing-test-invoices" {
				t.Errorf("event source mapping %v", in)
			}
			auth := map[string]string{}
			for _, a := range arr(in["sourceAccessConfigurations"]) {
				auth[str(obj(a)["type"])] = str(obj(a)["uri"])
			}
			if auth["BASIC_AUTH"] != "arn:aws:secretsmanager:eu-west-1:123456789012:secret:broker-credentials" || auth["VIRTUAL_HOST"] != "/" {
				t.Errorf("event source mapping access %v", auth)
			}
		} else if len(esm) != 0 {
			t.Errorf("event source mapping in fargate mode")
		}
	}
}

func checkDatabase(t *testing.T, st *stack, md mode) {
	t.Helper()
	instances := st.byType("aws:rds/instance:Instance")
	proxies := st.byType("aws:rds/proxy:Proxy")
	switch md.database {
	case DatabaseExternal:
		if len(instances)+len(proxies) != 0 {
			t.Errorf("RDS with database=external")
		}
	case DatabaseRDS:
		if len(instances) != 1 {
			t.Fatalf("%d RDS instances", len(instances))
		}
		in := instances[0].Inputs
		if str(in["engine"]) != "postgres" || str(in["storageEncrypted"]) != "true" || str(in["publiclyAccessible"]) != "false" {
			t.Errorf("RDS instance %v", in)
		}
		if _, secret := plain(in["password"]); !secret {
			t.Errorf("RDS master password not marked secret")
		}
		wantProxies := map[string]int{DeployFargate: 0, DeployLambda: 1}[md.deploy]
		if len(proxies) != wantProxies {
			t.Errorf("%d RDS proxies, want %d", len(proxies), wantProxies)
		}
		if wantProxies == 1 && str(proxies[0].Inputs["requireTls"]) != "true" {
			t.Errorf("RDS proxy without TLS")
		}
	}
	// The services create their databases on RDS only.
	wantCreate := map[string]string{DatabaseExternal: "", DatabaseRDS: "true"}[md.database]
	for _, fn := range st.byType("aws:lambda/function:Function") {
		if got := str(obj(obj(fn.Inputs["environment"])["variables"])["CREATE_DATABASE"]); got != wantCreate {
			t.Errorf("function %s CREATE_DATABASE=%q", fn.Name, got)
		}
	}
	if md.deploy == DeployFargate {
		for _, app := range apps {
			if got := env(st.containers(app.Name)[0])["CREATE_DATABASE"]; got != wantCreate {
				t.Errorf("%s CREATE_DATABASE=%q", app.Name, got)
			}
		}
	}
}

func TestHTTPSWithCertificate(t *testing.T) {
	cfg := baseConfig(mode{DeployFargate, BrokerFargate, DatabaseExternal})
	cfg["invoicing:certificateArn"] = "arn:aws:acm:eu-west-1:123456789012:certificate/abc"
	st := mustRun(t, cfg)
	listeners := map[int]res{}
	for _, l := range st.byType("aws:lb/listener:Listener") {
		listeners[int(num(l.Inputs["port"]))] = l
	}
	https := listeners[443]
	if str(https.Inputs["protocol"]) != "HTTPS" || str(https.Inputs["certificateArn"]) != cfg["invoicing:certificateArn"] {
		t.Errorf("HTTPS listener %v", https.Inputs)
	}
	if a := obj(arr(listeners[80].Inputs["defaultActions"])[0]); str(a["type"]) != "redirect" {
		t.Errorf("HTTP does not redirect: %v", a)
	}
	if str(listeners[MgmtPort].Inputs["protocol"]) != "HTTPS" {
		t.Errorf("management UI over plain HTTP with a certificate")
	}
	if st.outputs["gatewayUrl"] != "https://gateway.elb.example.com" {
		t.Errorf("gatewayUrl %v", st.outputs["gatewayUrl"])
	}
	open := map[int]bool{}
	for _, in := range st.ingress() {
		if in.cidr == "0.0.0.0/0" {
			open[in.port] = true
		}
	}
	if !open[443] || !open[80] || len(open) != 2 {
		t.Errorf("internet-open ports %v, want 80 and 443", open)
	}
}

func TestAmazonMQCluster(t *testing.T) {
	cfg := baseConfig(mode{DeployLambda, BrokerAmazonMQ, DatabaseRDS})
	cfg["invoicing:amazonMqDeployment"] = "cluster"
	st := mustRun(t, cfg)
	b := st.one("aws:mq/broker:Broker", "broker")
	if str(b.Inputs["deploymentMode"]) != "CLUSTER_MULTI_AZ" || str(b.Inputs["hostInstanceType"]) != "mq.m5.large" ||
		len(arr(b.Inputs["subnetIds"])) != 2 {
		t.Errorf("cluster broker %v", b.Inputs)
	}
}

// Without admin CIDRs nothing outside the VPC reaches AMQP or the UI: the
// NLB is internal and no rule names an outside address.
func TestNoAdminCIDRs(t *testing.T) {
	cfg := baseConfig(mode{DeployFargate, BrokerFargate, DatabaseExternal})
	cfg["invoicing:adminCidrs"] = "[]"
	st := mustRun(t, cfg)
	if str(st.one("aws:lb/loadBalancer:LoadBalancer", "amqp").Inputs["internal"]) != "true" {
		t.Errorf("NLB is internet-facing with no admin CIDR")
	}
	for _, in := range st.ingress() {
		if in.cidr != "" && in.cidr != vpcCIDR && !(in.cidr == "0.0.0.0/0" && in.port == 80) {
			t.Errorf("sg %s port %d open to %s", in.group, in.port, in.cidr)
		}
	}
}

func TestRateLimitSharedByKongNodes(t *testing.T) {
	cfg := baseConfig(mode{DeployFargate, BrokerFargate, DatabaseExternal})
	cfg["invoicing:desiredCount"] = "3"
	st := mustRun(t, cfg)
	if !strings.Contains(env(st.containers("kong")[0])["KONG_DECLARATIVE_CONFIG_STRING"], "minute: 200") {
		t.Errorf("rate limit per node is not 600/3")
	}
	if num(st.one("aws:ecs/service:Service", "kong").Inputs["desiredCount"]) != 3 {
		t.Errorf("kong desired count")
	}
}

func TestInvalidConfiguration(t *testing.T) {
	cases := map[string]func(map[string]string){
		"unknown deploy mode":        func(c map[string]string) { c["invoicing:deployMode"] = "ec2" },
		"unknown broker mode":        func(c map[string]string) { c["invoicing:brokerMode"] = "sqs" },
		"unknown database":           func(c map[string]string) { c["invoicing:database"] = "aurora" },
		"admin cidr is the internet": func(c map[string]string) { c["invoicing:adminCidrs"] = `["0.0.0.0/0"]` },
		"admin cidr not a cidr":      func(c map[string]string) { c["invoicing:adminCidrs"] = `["10.0.0.1"]` },
		"no broker password":         func(c map[string]string) { delete(c, "invoicing:brokerPassword") },
		"no orders database url":     func(c map[string]string) { delete(c, "invoicing:ordersDatabaseUrl") },
		"no cors origin":             func(c map[string]string) { delete(c, "invoicing:allowedOrigins") },
		"max below desired":          func(c map[string]string) { c["invoicing:maxCount"] = "1" },
		"micro cluster": func(c map[string]string) {
			c["invoicing:brokerMode"], c["invoicing:amazonMqDeployment"], c["invoicing:amazonMqInstanceType"] = "amazonmq", "cluster", "mq.t3.micro"
		},
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := baseConfig(mode{DeployFargate, BrokerFargate, DatabaseExternal})
			edit(cfg)
			if _, err := run(t, cfg); err == nil {
				t.Errorf("accepted")
			}
		})
	}
	t.Run("rds needs only its password", func(t *testing.T) {
		cfg := baseConfig(mode{DeployFargate, BrokerFargate, DatabaseRDS})
		delete(cfg, "invoicing:ordersDatabaseUrl")
		delete(cfg, "invoicing:invoicesDatabaseUrl")
		if _, err := run(t, cfg); err != nil {
			t.Errorf("rejected: %v", err)
		}
	})
}

func TestSubnetCIDR(t *testing.T) {
	for i, want := range map[int]string{0: "10.40.0.0/20", 1: "10.40.16.0/20", 8: "10.40.128.0/20", 9: "10.40.144.0/20"} {
		if got := subnetCIDR("10.40.0.0/16", i); got != want {
			t.Errorf("subnetCIDR(%d) = %s, want %s", i, got, want)
		}
	}
}
