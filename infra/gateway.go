package main

import (
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ecs"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lb"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"invoicing/kong"
)

// Kong constants.
const (
	KongImage      = "kong:3.9"
	KongProxyPort  = 8000
	KongStatusPort = 8100
	KongCPU        = 512
	KongMemory     = 1024
	// RateLimitPerMinute is the per-client limit of the whole gateway; each
	// node enforces its share (policy "local").
	RateLimitPerMinute = 600
	// DNSNamespace is the Cloud Map private DNS namespace of the VPC.
	DNSNamespace = "invoicing.internal"
)

// KongOptions renders the gateway's options for the stack: Cloud Map names
// of the services in fargate mode, the functions in lambda mode.
func KongOptions(s *Settings) kong.Options {
	var o kong.Options
	switch s.DeployMode {
	case DeployLambda:
		o = kong.Lambda(s.Region, FunctionName(s, "orders"), FunctionName(s, "invoices"))
	default:
		o = kong.Local()
		o.Orders = kong.Backend{Host: "orders." + DNSNamespace, Port: apps[0].Port}
		o.Invoices = kong.Backend{Host: "invoices." + DNSNamespace, Port: apps[1].Port}
	}
	o.AllowedOrigins = s.AllowedOrigins
	o.RateLimitPerMinute = max(1, RateLimitPerMinute/s.DesiredCount)
	return o
}

type gatewayDeps struct {
	net       *Network
	cluster   *ecs.Cluster
	albSG     *ec2.SecurityGroup
	kongSG    *ec2.SecurityGroup
	functions *Functions // lambda mode
	broker    *Broker
}

// Gateway is the public entry point.
type Gateway struct {
	URL           pulumi.StringOutput
	ManagementURL pulumi.StringOutput // RabbitMQ UI (brokerMode=fargate)
}

func newGateway(ctx *pulumi.Context, s *Settings, d gatewayDeps) (*Gateway, error) {
	rendered, err := kong.Render(KongOptions(s))
	if err != nil {
		return nil, err
	}
	logs, err := newLogGroup(ctx, s, "kong", "/invoicing/"+ctx.Stack()+"/kong")
	if err != nil {
		return nil, err
	}
	execRole, err := newRole(ctx, s, "kong-execution", "ecs-tasks.amazonaws.com", nil,
		"arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy")
	if err != nil {
		return nil, err
	}
	// Kong's aws-lambda plugin signs its calls with the task role's
	// credentials: it may invoke exactly the two functions, nothing else.
	var invoke pulumi.StringInput
	if d.functions != nil {
		invoke = policyJSON(func(a []string) []Statement {
			return []Statement{{Effect: "Allow", Action: []string{"lambda:InvokeFunction"}, Resource: a}}
		}, d.functions.ByName["orders"].Arn, d.functions.ByName["invoices"].Arn)
	}
	taskRole, err := newRole(ctx, s, "kong-task", "ecs-tasks.amazonaws.com", invoke)
	if err != nil {
		return nil, err
	}
	def := containerJSON(func(v []string) Container {
		return Container{
			Name: "kong", Image: KongImage, Essential: true,
			PortMappings: []PortMapping{{ContainerPort: KongProxyPort, Protocol: "tcp", Name: "proxy"}, {ContainerPort: KongStatusPort, Protocol: "tcp", Name: "status"}},
			Environment: []KeyValue{
				{Name: "KONG_DATABASE", Value: "off"},
				{Name: "KONG_DECLARATIVE_CONFIG_STRING", Value: string(rendered)},
				{Name: "KONG_PROXY_LISTEN", Value: fmt.Sprintf("0.0.0.0:%d", KongProxyPort)},
				{Name: "KONG_STATUS_LISTEN", Value: fmt.Sprintf("0.0.0.0:%d", KongStatusPort)},
				// The admin API and its GUI are never served.
				{Name: "KONG_ADMIN_LISTEN", Value: "off"},
				{Name: "KONG_ADMIN_GUI_LISTEN", Value: "off"},
				// The client address (rate limiting by IP) comes from the ALB.
				{Name: "KONG_TRUSTED_IPS", Value: s.VPCCIDR},
				{Name: "KONG_REAL_IP_HEADER", Value: "X-Forwarded-For"},
				{Name: "KONG_PROXY_ACCESS_LOG", Value: "/dev/stdout"},
				{Name: "KONG_PROXY_ERROR_LOG", Value: "/dev/stderr"},
				{Name: "KONG_LUA_SSL_TRUSTED_CERTIFICATE", Value: "system"},
			},
			Secrets:          []SecretRef{},
			HealthCheck:      &HealthCheck{Command: []string{"CMD", "kong", "health"}, Interval: 10, Timeout: 5, Retries: 3, StartPeriod: 30},
			StopTimeout:      30,
			LogConfiguration: awsLogs(s, v[0], "kong"),
		}
	}, logs.Name)
	td, err := ecs.NewTaskDefinition(ctx, "kong", &ecs.TaskDefinitionArgs{
		Family: pulumi.String(s.Name("kong")), NetworkMode: pulumi.String("awsvpc"),
		RequiresCompatibilities: pulumi.StringArray{pulumi.String("FARGATE")},
		Cpu:                     pulumi.String(fmt.Sprint(KongCPU)), Memory: pulumi.String(fmt.Sprint(KongMemory)),
		ExecutionRoleArn: execRole.Arn, TaskRoleArn: taskRole.Arn, ContainerDefinitions: def,
		Tags: tags(s, "kong"),
	})
	if err != nil {
		return nil, err
	}
	alb, err := lb.NewLoadBalancer(ctx, "gateway", &lb.LoadBalancerArgs{
		Name: pulumi.String(shortName(s, "gw")), LoadBalancerType: pulumi.String("application"),
		Internal: pulumi.Bool(false), Subnets: d.net.PublicSubnets, SecurityGroups: pulumi.StringArray{d.albSG.ID()},
		DropInvalidHeaderFields: pulumi.Bool(true), IdleTimeout: pulumi.Int(60),
		Tags: tags(s, "gateway"),
	})
	if err != nil {
		return nil, err
	}
	kongTG, err := lb.NewTargetGroup(ctx, "kong", &lb.TargetGroupArgs{
		Name: pulumi.String(shortName(s, "kong")), Port: pulumi.Int(KongProxyPort), Protocol: pulumi.String("HTTP"),
		TargetType: pulumi.String("ip"), VpcId: d.net.VPC.ID(), DeregistrationDelay: pulumi.Int(30),
		HealthCheck: &lb.TargetGroupHealthCheckArgs{
			Path: pulumi.String("/status/ready"), Port: pulumi.String(fmt.Sprint(KongStatusPort)), Matcher: pulumi.String("200"),
			Interval: pulumi.Int(10), HealthyThreshold: pulumi.Int(2), UnhealthyThreshold: pulumi.Int(3),
		},
		Tags: tags(s, "kong"),
	})
	if err != nil {
		return nil, err
	}
	forward := func(tg *lb.TargetGroup) lb.ListenerDefaultActionArray {
		return lb.ListenerDefaultActionArray{&lb.ListenerDefaultActionArgs{Type: pulumi.String("forward"), TargetGroupArn: tg.Arn}}
	}
	https := s.CertificateARN != ""
	httpAction := forward(kongTG)
	if https {
		httpAction = lb.ListenerDefaultActionArray{&lb.ListenerDefaultActionArgs{
			Type:     pulumi.String("redirect"),
			Redirect: &lb.ListenerDefaultActionRedirectArgs{Protocol: pulumi.String("HTTPS"), Port: pulumi.String("443"), StatusCode: pulumi.String("HTTP_301")},
		}}
	}
	httpListener, err := lb.NewListener(ctx, "http", &lb.ListenerArgs{
		LoadBalancerArn: alb.Arn, Port: pulumi.Int(80), Protocol: pulumi.String("HTTP"), DefaultActions: httpAction,
	})
	if err != nil {
		return nil, err
	}
	kongListeners := []pulumi.Resource{httpListener}
	tlsArgs := func(port int, tg *lb.TargetGroup) *lb.ListenerArgs {
		a := &lb.ListenerArgs{LoadBalancerArn: alb.Arn, Port: pulumi.Int(port), Protocol: pulumi.String("HTTP"), DefaultActions: forward(tg)}
		if https {
			a.Protocol = pulumi.String("HTTPS")
			a.CertificateArn = pulumi.String(s.CertificateARN)
			a.SslPolicy = pulumi.String("ELBSecurityPolicy-TLS13-1-2-2021-06")
		}
		return a
	}
	if https {
		l, err := lb.NewListener(ctx, "https", tlsArgs(443, kongTG))
		if err != nil {
			return nil, err
		}
		kongListeners = append(kongListeners, l)
	}
	scheme := map[bool]string{false: "http", true: "https"}[https]
	g := &Gateway{URL: pulumi.Sprintf("%s://%s", scheme, alb.DnsName)}
	if d.broker.MgmtTargetGroup != nil {
		l, err := lb.NewListener(ctx, "rabbitmq-mgmt", tlsArgs(MgmtPort, d.broker.MgmtTargetGroup))
		if err != nil {
			return nil, err
		}
		if err := d.broker.StartService([]pulumi.Resource{l}); err != nil {
			return nil, err
		}
		g.ManagementURL = pulumi.Sprintf("%s://%s:%d/", scheme, alb.DnsName, MgmtPort)
	}
	if _, err := ecs.NewService(ctx, "kong", &ecs.ServiceArgs{
		Name: pulumi.String("kong"), Cluster: d.cluster.Arn, TaskDefinition: td.Arn,
		LaunchType: pulumi.String("FARGATE"), PlatformVersion: pulumi.String("LATEST"),
		DesiredCount:                    pulumi.Int(s.DesiredCount),
		DeploymentMaximumPercent:        pulumi.Int(200),
		DeploymentMinimumHealthyPercent: pulumi.Int(100),
		DeploymentCircuitBreaker:        &ecs.ServiceDeploymentCircuitBreakerArgs{Enable: pulumi.Bool(true), Rollback: pulumi.Bool(true)},
		HealthCheckGracePeriodSeconds:   pulumi.Int(60),
		NetworkConfiguration: &ecs.ServiceNetworkConfigurationArgs{
			Subnets: d.net.PrivateSubnets, SecurityGroups: pulumi.StringArray{d.kongSG.ID()}, AssignPublicIp: pulumi.Bool(false),
		},
		LoadBalancers: ecs.ServiceLoadBalancerArray{&ecs.ServiceLoadBalancerArgs{
			TargetGroupArn: kongTG.Arn, ContainerName: pulumi.String("kong"), ContainerPort: pulumi.Int(KongProxyPort),
		}},
		PropagateTags: pulumi.String("SERVICE"),
		Tags:          tags(s, "kong"),
	}, pulumi.DependsOn(kongListeners)); err != nil {
		return nil, err
	}
	return g, nil
}
