package main

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ecs"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/efs"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lb"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/mq"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Broker constants.
const (
	RabbitMQImage   = "rabbitmq:4.1-management"
	RabbitMQDataDir = "/var/lib/rabbitmq"
	// RabbitMQNodeName is fixed: RabbitMQ keeps its data under
	// mnesia/<node name>, and a Fargate task's hostname changes with every
	// task, so the default rabbit@<hostname> would start every replacement
	// on an empty database beside the old one.
	RabbitMQNodeName = "rabbit@localhost"
	// RabbitMQUID is the rabbitmq user of the official image.
	RabbitMQUID = 999
	AMQPPort    = 5672
	AMQPSPort   = 5671
	MgmtPort    = 15672
	RabbitCPU   = 512
	RabbitMem   = 1024
)

// Broker is what the services and the outputs need of either broker.
type Broker struct {
	URL           pulumi.StringOutput // secret: amqp(s)://user:password@host:port/
	URLSecret     *Secret
	AMQPHost      pulumi.StringOutput
	ManagementURL pulumi.StringOutput
	// Amazon MQ only: for the invoices event source mapping.
	AmazonMQ          *mq.Broker
	CredentialsSecret *Secret
	// Fargate only: the management target group, for the ALB listener,
	// and the ECS service, started once the listeners of both its target
	// groups exist (ECS refuses a target group no load balancer uses).
	MgmtTargetGroup *lb.TargetGroup
	StartService    func(listeners []pulumi.Resource) error
}

func brokerURL(scheme, user string, password pulumi.StringOutput, host pulumi.StringOutput, port int) pulumi.StringOutput {
	return pulumi.ToSecret(pulumi.All(password, host).ApplyT(func(v []any) string {
		u := url.URL{Scheme: scheme, User: url.UserPassword(user, v[0].(string)), Host: fmt.Sprintf("%s:%d", v[1].(string), port), Path: "/"}
		return u.String()
	})).(pulumi.StringOutput)
}

type brokerDeps struct {
	net      *Network
	cluster  *ecs.Cluster
	appSG    *ec2.SecurityGroup
	albSG    *ec2.SecurityGroup
	dnsNS    pulumi.StringInput
	dnsName  string
	svcDisco func(name string) (pulumi.StringOutput, error)
}

// newFargateBroker runs RabbitMQ as ONE Fargate task whose data directory
// is on encrypted EFS: task storage is ephemeral, and a replaced task would
// otherwise lose every message still queued. Deployment settings stop the
// old task before the new one starts (desired 1, maximumPercent 100,
// minimumHealthyPercent 0) so two brokers never write the same files.
func newFargateBroker(ctx *pulumi.Context, s *Settings, d brokerDeps) (*Broker, error) {
	n := d.net
	nlbSG, err := newSecurityGroup(ctx, s, n, "nlb", "AMQP into RabbitMQ from the VPC and the admin CIDRs", []Rule{
		{Port: AMQPPort, CIDRs: append([]string{n.CIDR}, s.AdminCIDRs...), Reason: "AMQP from the VPC and the admin CIDRs"},
	})
	if err != nil {
		return nil, err
	}
	rabbitSG, err := newSecurityGroup(ctx, s, n, "rabbitmq", "RabbitMQ task", []Rule{
		{Port: AMQPPort, From: []pulumi.StringInput{d.appSG.ID(), nlbSG.ID()}, Reason: "AMQP from the services and the NLB"},
		{Port: MgmtPort, From: []pulumi.StringInput{d.albSG.ID()}, Reason: "management UI from the ALB"},
	})
	if err != nil {
		return nil, err
	}
	efsSG, err := newSecurityGroup(ctx, s, n, "efs", "NFS from the RabbitMQ task only", []Rule{
		{Port: 2049, From: []pulumi.StringInput{rabbitSG.ID()}, Reason: "NFS from RabbitMQ"},
	})
	if err != nil {
		return nil, err
	}
	fs, err := efs.NewFileSystem(ctx, "rabbitmq", &efs.FileSystemArgs{
		Encrypted:       pulumi.Bool(true),
		PerformanceMode: pulumi.String("generalPurpose"),
		ThroughputMode:  pulumi.String("elastic"),
		Tags:            tags(s, "rabbitmq"),
	})
	if err != nil {
		return nil, err
	}
	var mounts []pulumi.Resource
	for i, sub := range n.PrivateSubnets {
		mt, err := efs.NewMountTarget(ctx, fmt.Sprintf("rabbitmq-%d", i), &efs.MountTargetArgs{
			FileSystemId: fs.ID(), SubnetId: sub, SecurityGroups: pulumi.StringArray{efsSG.ID()},
		})
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, mt)
	}
	ap, err := efs.NewAccessPoint(ctx, "rabbitmq", &efs.AccessPointArgs{
		FileSystemId: fs.ID(),
		PosixUser:    &efs.AccessPointPosixUserArgs{Uid: pulumi.Int(RabbitMQUID), Gid: pulumi.Int(RabbitMQUID)},
		RootDirectory: &efs.AccessPointRootDirectoryArgs{
			Path: pulumi.String("/rabbitmq"),
			CreationInfo: &efs.AccessPointRootDirectoryCreationInfoArgs{
				OwnerUid: pulumi.Int(RabbitMQUID), OwnerGid: pulumi.Int(RabbitMQUID), Permissions: pulumi.String("0750"),
			},
		},
		Tags: tags(s, "rabbitmq"),
	})
	if err != nil {
		return nil, err
	}

	password, err := newSecret(ctx, s, "broker-password", "RabbitMQ password of the broker user (RABBITMQ_DEFAULT_PASS)", s.BrokerPassword)
	if err != nil {
		return nil, err
	}
	host := pulumi.Sprintf("%s.%s", "rabbitmq", d.dnsName)
	b := &Broker{URL: brokerURL("amqp", s.BrokerUsername, s.BrokerPassword, host, AMQPPort)}
	if b.URLSecret, err = newSecret(ctx, s, "broker-url", "BROKER_URL of the services", b.URL); err != nil {
		return nil, err
	}

	logs, err := newLogGroup(ctx, s, "rabbitmq", "/invoicing/"+ctx.Stack()+"/rabbitmq")
	if err != nil {
		return nil, err
	}
	execRole, err := newRole(ctx, s, "rabbitmq-execution", "ecs-tasks.amazonaws.com",
		policyJSON(func(a []string) []Statement { return []Statement{readSecrets(a)} }, password.Arn),
		"arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy")
	if err != nil {
		return nil, err
	}
	taskRole, err := newRole(ctx, s, "rabbitmq-task", "ecs-tasks.amazonaws.com",
		policyJSON(func(a []string) []Statement {
			return []Statement{{
				Effect: "Allow", Action: []string{"elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"},
				Resource:  []string{a[0]},
				Condition: map[string]any{"StringEquals": map[string]string{"elasticfilesystem:AccessPointArn": a[1]}},
			}}
		}, fs.Arn, ap.Arn))
	if err != nil {
		return nil, err
	}
	def := containerJSON(func(v []string) Container {
		return Container{
			Name: "rabbitmq", Image: RabbitMQImage, Essential: true,
			PortMappings: []PortMapping{{ContainerPort: AMQPPort, Protocol: "tcp", Name: "amqp"}, {ContainerPort: MgmtPort, Protocol: "tcp", Name: "management"}},
			Environment: []KeyValue{
				// The default user is created on the first boot of an
				// empty data directory; with it set, guest is never
				// created (and guest may only log in from loopback).
				{Name: "RABBITMQ_DEFAULT_USER", Value: s.BrokerUsername},
				{Name: "RABBITMQ_NODENAME", Value: RabbitMQNodeName},
			},
			Secrets:     []SecretRef{{Name: "RABBITMQ_DEFAULT_PASS", ValueFrom: v[0]}},
			MountPoints: []MountPoint{{SourceVolume: "rabbitmq-data", ContainerPath: RabbitMQDataDir}},
			HealthCheck: &HealthCheck{Command: []string{"CMD-SHELL", "rabbitmq-diagnostics -q ping"}, Interval: 30, Timeout: 10, Retries: 3, StartPeriod: 120},
			// Fargate's maximum: time to close connections and flush.
			StopTimeout:      120,
			Ulimits:          []Ulimit{{Name: "nofile", SoftLimit: 65536, HardLimit: 65536}},
			LogConfiguration: awsLogs(s, v[1], "rabbitmq"),
		}
	}, password.Arn, logs.Name)
	td, err := ecs.NewTaskDefinition(ctx, "rabbitmq", &ecs.TaskDefinitionArgs{
		Family: pulumi.String(s.Name("rabbitmq")), NetworkMode: pulumi.String("awsvpc"),
		RequiresCompatibilities: pulumi.StringArray{pulumi.String("FARGATE")},
		Cpu:                     pulumi.String(fmt.Sprint(RabbitCPU)), Memory: pulumi.String(fmt.Sprint(RabbitMem)),
		ExecutionRoleArn: execRole.Arn, TaskRoleArn: taskRole.Arn,
		ContainerDefinitions: def,
		Volumes: ecs.TaskDefinitionVolumeArray{&ecs.TaskDefinitionVolumeArgs{
			Name: pulumi.String("rabbitmq-data"),
			EfsVolumeConfiguration: &ecs.TaskDefinitionVolumeEfsVolumeConfigurationArgs{
				FileSystemId: fs.ID(), TransitEncryption: pulumi.String("ENABLED"),
				AuthorizationConfig: &ecs.TaskDefinitionVolumeEfsVolumeConfigurationAuthorizationConfigArgs{
					AccessPointId: ap.ID(), Iam: pulumi.String("ENABLED"),
				},
			},
		}},
		Tags: tags(s, "rabbitmq"),
	})
	if err != nil {
		return nil, err
	}

	// The NLB is internet-facing only when someone outside the VPC may use it.
	internal := len(s.AdminCIDRs) == 0
	subnets := n.PublicSubnets
	if internal {
		subnets = n.PrivateSubnets
	}
	nlb, err := lb.NewLoadBalancer(ctx, "amqp", &lb.LoadBalancerArgs{
		Name: pulumi.String(shortName(s, "amqp")), LoadBalancerType: pulumi.String("network"),
		Internal: pulumi.Bool(internal), Subnets: subnets, SecurityGroups: pulumi.StringArray{nlbSG.ID()},
		Tags: tags(s, "amqp"),
	})
	if err != nil {
		return nil, err
	}
	amqpTG, err := lb.NewTargetGroup(ctx, "amqp", &lb.TargetGroupArgs{
		Name: pulumi.String(shortName(s, "amqp")), Port: pulumi.Int(AMQPPort), Protocol: pulumi.String("TCP"),
		TargetType: pulumi.String("ip"), VpcId: n.VPC.ID(), DeregistrationDelay: pulumi.Int(30),
		HealthCheck: &lb.TargetGroupHealthCheckArgs{Protocol: pulumi.String("TCP"), Interval: pulumi.Int(10)},
		Tags:        tags(s, "amqp"),
	})
	if err != nil {
		return nil, err
	}
	amqpListener, err := lb.NewListener(ctx, "amqp", &lb.ListenerArgs{
		LoadBalancerArn: nlb.Arn, Port: pulumi.Int(AMQPPort), Protocol: pulumi.String("TCP"),
		DefaultActions: lb.ListenerDefaultActionArray{&lb.ListenerDefaultActionArgs{Type: pulumi.String("forward"), TargetGroupArn: amqpTG.Arn}},
	})
	if err != nil {
		return nil, err
	}
	b.MgmtTargetGroup, err = lb.NewTargetGroup(ctx, "rabbitmq-mgmt", &lb.TargetGroupArgs{
		Name: pulumi.String(shortName(s, "rmq-ui")), Port: pulumi.Int(MgmtPort), Protocol: pulumi.String("HTTP"),
		TargetType: pulumi.String("ip"), VpcId: n.VPC.ID(), DeregistrationDelay: pulumi.Int(10),
		HealthCheck: &lb.TargetGroupHealthCheckArgs{Path: pulumi.String("/"), Matcher: pulumi.String("200")},
		Tags:        tags(s, "rabbitmq-mgmt"),
	})
	if err != nil {
		return nil, err
	}
	registry, err := d.svcDisco("rabbitmq")
	if err != nil {
		return nil, err
	}
	b.StartService = func(listeners []pulumi.Resource) error {
		_, err := ecs.NewService(ctx, "rabbitmq", &ecs.ServiceArgs{
			Name: pulumi.String("rabbitmq"), Cluster: d.cluster.Arn, TaskDefinition: td.Arn,
			LaunchType: pulumi.String("FARGATE"), PlatformVersion: pulumi.String("LATEST"),
			DesiredCount:                    pulumi.Int(1),
			DeploymentMaximumPercent:        pulumi.Int(100),
			DeploymentMinimumHealthyPercent: pulumi.Int(0),
			HealthCheckGracePeriodSeconds:   pulumi.Int(180),
			NetworkConfiguration: &ecs.ServiceNetworkConfigurationArgs{
				Subnets: n.PrivateSubnets, SecurityGroups: pulumi.StringArray{rabbitSG.ID()}, AssignPublicIp: pulumi.Bool(false),
			},
			LoadBalancers: ecs.ServiceLoadBalancerArray{
				&ecs.ServiceLoadBalancerArgs{TargetGroupArn: amqpTG.Arn, ContainerName: pulumi.String("rabbitmq"), ContainerPort: pulumi.Int(AMQPPort)},
				&ecs.ServiceLoadBalancerArgs{TargetGroupArn: b.MgmtTargetGroup.Arn, ContainerName: pulumi.String("rabbitmq"), ContainerPort: pulumi.Int(MgmtPort)},
			},
			ServiceRegistries: &ecs.ServiceServiceRegistriesArgs{RegistryArn: registry},
			PropagateTags:     pulumi.String("SERVICE"),
			Tags:              tags(s, "rabbitmq"),
		}, pulumi.DependsOn(append(append(mounts, amqpListener), listeners...)))
		return err
	}
	b.AMQPHost = nlb.DnsName
	return b, nil
}

// newAmazonMQ creates an Amazon MQ for RabbitMQ broker in the private
// subnets: one node (mq.t3.micro) or a three-node cluster.
func newAmazonMQ(ctx *pulumi.Context, s *Settings, d brokerDeps) (*Broker, error) {
	n := d.net
	sg, err := newSecurityGroup(ctx, s, n, "amazonmq", "Amazon MQ for RabbitMQ", []Rule{
		// Self: the invoices event source mapping polls from ENIs in the
		// broker's subnets that carry the broker's security group.
		{Port: AMQPSPort, From: []pulumi.StringInput{d.appSG.ID()}, Self: true, Reason: "AMQPS from the services"},
		{Port: 443, CIDRs: []string{n.CIDR}, Reason: "management console from inside the VPC"},
	})
	if err != nil {
		return nil, err
	}
	mode, subnets := "SINGLE_INSTANCE", pulumi.StringArray{n.PrivateSubnets[0]}
	if s.AmazonMQDeployment == AmazonMQCluster {
		mode, subnets = "CLUSTER_MULTI_AZ", n.PrivateSubnets
	}
	broker, err := mq.NewBroker(ctx, "broker", &mq.BrokerArgs{
		BrokerName: pulumi.String(s.Name("broker")), EngineType: pulumi.String("RabbitMQ"), EngineVersion: pulumi.String("3.13"),
		AutoMinorVersionUpgrade: pulumi.Bool(true),
		HostInstanceType:        pulumi.String(s.AmazonMQInstanceType), DeploymentMode: pulumi.String(mode),
		PubliclyAccessible: pulumi.Bool(false), SubnetIds: subnets, SecurityGroups: pulumi.StringArray{sg.ID()},
		Users: mq.BrokerUserArray{&mq.BrokerUserArgs{Username: pulumi.String(s.BrokerUsername), Password: s.BrokerPassword}},
		Logs:  &mq.BrokerLogsArgs{General: pulumi.Bool(true)},
		Tags:  tags(s, "broker"),
	})
	if err != nil {
		return nil, err
	}
	endpoint := broker.Instances.ApplyT(func(in []mq.BrokerInstance) string {
		if len(in) == 0 || len(in[0].Endpoints) == 0 {
			return ""
		}
		u, err := url.Parse(in[0].Endpoints[0])
		if err != nil {
			return ""
		}
		return u.Hostname()
	}).(pulumi.StringOutput)
	b := &Broker{AmazonMQ: broker, AMQPHost: endpoint}
	b.URL = brokerURL("amqps", s.BrokerUsername, s.BrokerPassword, endpoint, AMQPSPort)
	b.ManagementURL = broker.Instances.ApplyT(func(in []mq.BrokerInstance) string {
		if len(in) == 0 || in[0].ConsoleUrl == nil {
			return ""
		}
		return *in[0].ConsoleUrl
	}).(pulumi.StringOutput)
	if b.URLSecret, err = newSecret(ctx, s, "broker-url", "BROKER_URL of the services", b.URL); err != nil {
		return nil, err
	}
	if b.CredentialsSecret, err = newSecret(ctx, s, "broker-credentials",
		"Amazon MQ user for the invoices event source mapping", credentialsJSON(s.BrokerUsername, s.BrokerPassword)); err != nil {
		return nil, err
	}
	return b, nil
}

// shortName fits load balancer and target group names (32 characters).
func shortName(s *Settings, suffix string) string {
	name := s.Name(suffix)
	if len(name) <= 32 {
		return name
	}
	return strings.TrimRight(name[:32-len(suffix)-1], "-") + "-" + suffix
}
