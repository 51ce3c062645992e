// Command infra is the Pulumi program of the invoicing system on AWS. One
// stack setting, deployMode, runs orders and invoices as Fargate services
// or as Lambda functions; brokerMode and database choose RabbitMQ's and
// PostgreSQL's hosting. See Pulumi.dev.yaml.example for every key.
package main

import (
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ecs"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/servicediscovery"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

func main() { pulumi.Run(program) }

// Outputs are the stack outputs; none of them carries a secret.
type Outputs map[string]pulumi.Input

func program(ctx *pulumi.Context) error {
	out, err := build(ctx)
	if err != nil {
		return err
	}
	for k, v := range out {
		ctx.Export(k, v)
	}
	return nil
}

func build(ctx *pulumi.Context) (Outputs, error) {
	s, err := LoadSettings(ctx)
	if err != nil {
		return nil, err
	}
	n, err := newNetwork(ctx, s)
	if err != nil {
		return nil, err
	}

	// Security groups, from the edge inwards; each admits only its callers.
	albRules := []Rule{{Port: 80, CIDRs: []string{"0.0.0.0/0"}, Reason: "HTTP from anywhere"}}
	if s.CertificateARN != "" {
		albRules = append(albRules, Rule{Port: 443, CIDRs: []string{"0.0.0.0/0"}, Reason: "HTTPS from anywhere"})
	}
	if s.BrokerMode == BrokerFargate && len(s.AdminCIDRs) > 0 {
		albRules = append(albRules, Rule{Port: MgmtPort, CIDRs: s.AdminCIDRs, Reason: "RabbitMQ management UI from the admin CIDRs"})
	}
	albSG, err := newSecurityGroup(ctx, s, n, "alb", "Public load balancer of the gateway", albRules)
	if err != nil {
		return nil, err
	}
	kongSG, err := newSecurityGroup(ctx, s, n, "kong", "Kong (proxy and status ports from the ALB; admin API off)", []Rule{
		{Port: KongProxyPort, From: []pulumi.StringInput{albSG.ID()}, Reason: "proxy from the ALB"},
		{Port: KongStatusPort, From: []pulumi.StringInput{albSG.ID()}, Reason: "health checks from the ALB"},
	})
	if err != nil {
		return nil, err
	}
	var appRules []Rule
	appName, appDesc := "functions", "Lambda functions (no inbound)"
	if s.DeployMode == DeployFargate {
		appName, appDesc = "services", "orders and invoices tasks"
		for _, a := range apps {
			appRules = append(appRules, Rule{Port: a.Port, From: []pulumi.StringInput{kongSG.ID()}, Reason: a.Name + " from Kong"})
		}
	}
	appSG, err := newSecurityGroup(ctx, s, n, appName, appDesc, appRules)
	if err != nil {
		return nil, err
	}

	cluster, err := ecs.NewCluster(ctx, "cluster", &ecs.ClusterArgs{
		Name:     pulumi.String(s.Project),
		Settings: ecs.ClusterSettingArray{&ecs.ClusterSettingArgs{Name: pulumi.String("containerInsights"), Value: pulumi.String("disabled")}},
		Tags:     tags(s, "cluster"),
	})
	if err != nil {
		return nil, err
	}
	ns, err := servicediscovery.NewPrivateDnsNamespace(ctx, "internal", &servicediscovery.PrivateDnsNamespaceArgs{
		Name: pulumi.String(DNSNamespace), Vpc: n.VPC.ID(), Description: pulumi.String("Cloud Map names of the tasks"),
		Tags: tags(s, "internal"),
	})
	if err != nil {
		return nil, err
	}
	svcDisco := func(name string) (pulumi.StringOutput, error) {
		svc, err := servicediscovery.NewService(ctx, name, &servicediscovery.ServiceArgs{
			Name: pulumi.String(name),
			DnsConfig: &servicediscovery.ServiceDnsConfigArgs{
				NamespaceId:   ns.ID(),
				RoutingPolicy: pulumi.String("MULTIVALUE"),
				DnsRecords:    servicediscovery.ServiceDnsConfigDnsRecordArray{&servicediscovery.ServiceDnsConfigDnsRecordArgs{Ttl: pulumi.Int(10), Type: pulumi.String("A")}},
			},
			HealthCheckCustomConfig: &servicediscovery.ServiceHealthCheckCustomConfigArgs{FailureThreshold: pulumi.Int(1)},
			ForceDestroy:            pulumi.Bool(true),
			Tags:                    tags(s, name),
		})
		if err != nil {
			return pulumi.StringOutput{}, err
		}
		return svc.Arn, nil
	}

	bd := brokerDeps{net: n, cluster: cluster, appSG: appSG, albSG: albSG, dnsNS: ns.ID(), dnsName: DNSNamespace, svcDisco: svcDisco}
	var broker *Broker
	if s.BrokerMode == BrokerAmazonMQ {
		broker, err = newAmazonMQ(ctx, s, bd)
	} else {
		broker, err = newFargateBroker(ctx, s, bd)
	}
	if err != nil {
		return nil, err
	}
	db, err := newDatabase(ctx, s, n, appSG)
	if err != nil {
		return nil, err
	}
	sd := serviceDeps{net: n, cluster: cluster, appSG: appSG, db: db, broker: broker, svcDisco: svcDisco}
	if s.HasOTLPHeaders {
		if sd.otlp, err = newSecret(ctx, s, "otlp-headers", "OTEL_EXPORTER_OTLP_HEADERS (e.g. Grafana Cloud's Authorization)", s.OTLPHeaders); err != nil {
			return nil, err
		}
	}

	if sd.repos, err = newRepositories(ctx, s); err != nil {
		return nil, err
	}
	out := Outputs{
		"deployMode": pulumi.String(s.DeployMode),
		"brokerMode": pulumi.String(s.BrokerMode),
		"database":   pulumi.String(s.Database),
		"amqpHost":   broker.AMQPHost,
	}
	gd := gatewayDeps{net: n, cluster: cluster, albSG: albSG, kongSG: kongSG, broker: broker}
	switch s.DeployMode {
	case DeployFargate:
		if err := newFargateApps(ctx, s, sd); err != nil {
			return nil, err
		}
	case DeployLambda:
		fns, err := newFunctions(ctx, s, sd)
		if err != nil {
			return nil, err
		}
		gd.functions = fns
		for name, fn := range fns.ByName {
			out[name+"Function"] = fn.Name
		}
	}
	for name, repo := range sd.repos {
		out[name+"Repository"] = repo.RepositoryUrl
	}
	gw, err := newGateway(ctx, s, gd)
	if err != nil {
		return nil, err
	}
	out["gatewayUrl"] = gw.URL
	if s.BrokerMode == BrokerAmazonMQ {
		out["rabbitmqManagementUrl"] = broker.ManagementURL
	} else {
		out["rabbitmqManagementUrl"] = gw.ManagementURL
	}
	if db.Instance != nil {
		out["databaseHost"] = db.Instance.Address
	}
	return out, nil
}
