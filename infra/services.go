package main

import (
	"fmt"
	"strings"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/appautoscaling"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ecr"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ecs"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// App is one of the two services.
type App struct {
	Name string
	Port int
	// Lambda timeout in seconds: orders answers requests and sweeps, invoices
	// also drains the queue in batches.
	Timeout int
}

var apps = []App{{Name: "orders", Port: 3333, Timeout: 30}, {Name: "invoices", Port: 3334, Timeout: 60}}

// Sizes of the service tasks (Fargate's smallest) and the CPU target.
const (
	ServiceCPU       = 256
	ServiceMemory    = 512
	ScaleCPUTarget   = 60
	AppContainerPath = "/service" // the Dockerfile's binary
)

// appSecrets are the secrets one service reads, by variable name.
type appSecrets struct {
	names    []string
	arns     []pulumi.StringInput
	versions []pulumi.StringInput // version ids, not values
}

func secretsFor(app App, s *Settings, db *Database, broker *Broker, otlpHeaders *Secret) appSecrets {
	dbURL := db.OrdersURL
	if app.Name == "invoices" {
		dbURL = db.InvoicesURL
	}
	out := appSecrets{names: []string{"DATABASE_URL", "BROKER_URL"}}
	list := []*Secret{dbURL, broker.URLSecret}
	if otlpHeaders != nil {
		out.names = append(out.names, "OTEL_EXPORTER_OTLP_HEADERS")
		list = append(list, otlpHeaders)
	}
	for _, sec := range list {
		out.arns = append(out.arns, sec.Arn)
		out.versions = append(out.versions, sec.Version.VersionId)
	}
	return out
}

// plainEnv is what a service may read from its plain environment: nothing
// secret.
func plainEnv(app App, s *Settings) []KeyValue {
	env := []KeyValue{
		{Name: "LOG_LEVEL", Value: "info"},
		// Tasks and functions get at most one vCPU, and the runtime's
		// default would be two threads running Go code: one is cheaper
		// per order (README, "CPU per order").
		{Name: "GOMAXPROCS", Value: "1"},
		{Name: "OTEL_SERVICE_NAME", Value: app.Name},
		{Name: "OTEL_RESOURCE_ATTRIBUTES", Value: "deployment.environment=" + s.Project},
	}
	if s.OTLPEndpoint != "" {
		env = append(env, KeyValue{Name: "OTEL_EXPORTER_OTLP_ENDPOINT", Value: s.OTLPEndpoint}, KeyValue{Name: "OTEL_EXPORTER_OTLP_PROTOCOL", Value: "http/protobuf"})
	}
	if s.Database == DatabaseRDS {
		env = append(env, KeyValue{Name: "CREATE_DATABASE", Value: "true"})
	}
	return env
}

type serviceDeps struct {
	net      *Network
	cluster  *ecs.Cluster
	appSG    *ec2.SecurityGroup
	db       *Database
	broker   *Broker
	otlp     *Secret
	svcDisco func(name string) (pulumi.StringOutput, error)
	repos    map[string]*ecr.Repository
}

// newRepositories creates the services' ECR repositories. They exist in
// both deploy modes, so switching to lambda and back never has to delete a
// repository that still holds images.
func newRepositories(ctx *pulumi.Context, s *Settings) (map[string]*ecr.Repository, error) {
	out := map[string]*ecr.Repository{}
	for _, app := range apps {
		repo, err := ecr.NewRepository(ctx, app.Name, &ecr.RepositoryArgs{
			Name:                       pulumi.String(s.Project + "/" + app.Name),
			ImageTagMutability:         pulumi.String("IMMUTABLE"),
			ImageScanningConfiguration: &ecr.RepositoryImageScanningConfigurationArgs{ScanOnPush: pulumi.Bool(true)},
			EncryptionConfigurations:   ecr.RepositoryEncryptionConfigurationArray{&ecr.RepositoryEncryptionConfigurationArgs{EncryptionType: pulumi.String("AES256")}},
			Tags:                       tags(s, app.Name),
		})
		if err != nil {
			return nil, err
		}
		out[app.Name] = repo
		if _, err := ecr.NewLifecyclePolicy(ctx, app.Name, &ecr.LifecyclePolicyArgs{
			Repository: repo.Name,
			Policy: pulumi.String(`{"rules":[{"rulePriority":1,"description":"keep the 30 newest images",` +
				`"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":30},"action":{"type":"expire"}}]}`),
		}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// newFargateApps runs orders and invoices as Fargate services
// (deployMode=fargate), registered in Cloud Map for Kong, scaling on CPU.
func newFargateApps(ctx *pulumi.Context, s *Settings, d serviceDeps) error {
	for _, app := range apps {
		repo := d.repos[app.Name]
		logs, err := newLogGroup(ctx, s, app.Name, "/invoicing/"+ctx.Stack()+"/"+app.Name)
		if err != nil {
			return err
		}
		sec := secretsFor(app, s, d.db, d.broker, d.otlp)
		execRole, err := newRole(ctx, s, app.Name+"-execution", "ecs-tasks.amazonaws.com",
			policyJSON(func(a []string) []Statement { return []Statement{readSecrets(a)} }, sec.arns...),
			"arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy")
		if err != nil {
			return err
		}
		// The services call no AWS API: their task role grants nothing.
		taskRole, err := newRole(ctx, s, app.Name+"-task", "ecs-tasks.amazonaws.com", nil)
		if err != nil {
			return err
		}
		// ECS reads secrets when a task starts: the versions' ids in the
		// environment make a changed value (a new BROKER_URL after a
		// broker switch, a rotated password) roll out new tasks.
		versions := pulumi.All(toAny(sec.versions)...).ApplyT(func(v []any) string {
			ids := make([]string, len(v))
			for i, x := range v {
				ids[i] = x.(string)
			}
			return strings.Join(ids, ",")
		}).(pulumi.StringOutput)
		inputs := append([]pulumi.StringInput{repo.RepositoryUrl, logs.Name, versions}, sec.arns...)
		app := app
		def := containerJSON(func(v []string) Container {
			c := Container{
				Name: app.Name, Image: v[0] + ":" + s.ImageTag, Essential: true,
				Command:      []string{"serve"},
				PortMappings: []PortMapping{{ContainerPort: app.Port, Protocol: "tcp", Name: "http"}},
				Environment: append([]KeyValue{
					{Name: "PORT", Value: fmt.Sprint(app.Port)},
					{Name: "SECRETS_VERSION", Value: v[2]},
				}, plainEnv(app, s)...),
				HealthCheck: &HealthCheck{Command: []string{"CMD", AppContainerPath, "healthcheck"},
					Interval: 10, Timeout: 5, Retries: 3, StartPeriod: 30},
				// SHUTDOWN_TIMEOUT is 25 s: drain, then flush telemetry.
				StopTimeout:            35,
				ReadonlyRootFilesystem: true,
				LogConfiguration:       awsLogs(s, v[1], app.Name),
			}
			for i, name := range sec.names {
				c.Secrets = append(c.Secrets, SecretRef{Name: name, ValueFrom: v[3+i]})
			}
			return c
		}, inputs...)
		td, err := ecs.NewTaskDefinition(ctx, app.Name, &ecs.TaskDefinitionArgs{
			Family: pulumi.String(s.Name(app.Name)), NetworkMode: pulumi.String("awsvpc"),
			RequiresCompatibilities: pulumi.StringArray{pulumi.String("FARGATE")},
			Cpu:                     pulumi.String(fmt.Sprint(ServiceCPU)), Memory: pulumi.String(fmt.Sprint(ServiceMemory)),
			RuntimePlatform: &ecs.TaskDefinitionRuntimePlatformArgs{
				OperatingSystemFamily: pulumi.String("LINUX"), CpuArchitecture: pulumi.String("X86_64"),
			},
			ExecutionRoleArn: execRole.Arn, TaskRoleArn: taskRole.Arn, ContainerDefinitions: def,
			Tags: tags(s, app.Name),
		})
		if err != nil {
			return err
		}
		registry, err := d.svcDisco(app.Name)
		if err != nil {
			return err
		}
		svc, err := ecs.NewService(ctx, app.Name, &ecs.ServiceArgs{
			Name: pulumi.String(app.Name), Cluster: d.cluster.Arn, TaskDefinition: td.Arn,
			LaunchType: pulumi.String("FARGATE"), PlatformVersion: pulumi.String("LATEST"),
			DesiredCount:                    pulumi.Int(s.DesiredCount),
			DeploymentMaximumPercent:        pulumi.Int(200),
			DeploymentMinimumHealthyPercent: pulumi.Int(100),
			DeploymentCircuitBreaker:        &ecs.ServiceDeploymentCircuitBreakerArgs{Enable: pulumi.Bool(true), Rollback: pulumi.Bool(true)},
			NetworkConfiguration: &ecs.ServiceNetworkConfigurationArgs{
				Subnets: d.net.PrivateSubnets, SecurityGroups: pulumi.StringArray{d.appSG.ID()}, AssignPublicIp: pulumi.Bool(false),
			},
			ServiceRegistries: &ecs.ServiceServiceRegistriesArgs{RegistryArn: registry},
			PropagateTags:     pulumi.String("SERVICE"),
			Tags:              tags(s, app.Name),
		}, pulumi.IgnoreChanges([]string{"desiredCount"})) // Application Auto Scaling owns it
		if err != nil {
			return err
		}
		target, err := appautoscaling.NewTarget(ctx, app.Name, &appautoscaling.TargetArgs{
			ServiceNamespace: pulumi.String("ecs"), ScalableDimension: pulumi.String("ecs:service:DesiredCount"),
			ResourceId:  pulumi.Sprintf("service/%s/%s", d.cluster.Name, svc.Name),
			MinCapacity: pulumi.Int(s.DesiredCount), MaxCapacity: pulumi.Int(s.MaxCount),
		})
		if err != nil {
			return err
		}
		if _, err := appautoscaling.NewPolicy(ctx, app.Name+"-cpu", &appautoscaling.PolicyArgs{
			Name: pulumi.String(s.Name(app.Name + "-cpu")), PolicyType: pulumi.String("TargetTrackingScaling"),
			ServiceNamespace: target.ServiceNamespace, ScalableDimension: target.ScalableDimension, ResourceId: target.ResourceId,
			TargetTrackingScalingPolicyConfiguration: &appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs{
				TargetValue: pulumi.Float64(ScaleCPUTarget),
				PredefinedMetricSpecification: &appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs{
					PredefinedMetricType: pulumi.String("ECSServiceAverageCPUUtilization"),
				},
				ScaleInCooldown: pulumi.Int(300), ScaleOutCooldown: pulumi.Int(60),
			},
		}); err != nil {
			return err
		}
	}
	return nil
}

func toAny(in []pulumi.StringInput) []any {
	out := make([]any, len(in))
	for i, x := range in {
		out[i] = x
	}
	return out
}
