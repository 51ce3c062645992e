package main

import (
	"path/filepath"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/cloudwatch"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lambda"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Lambda settings, the same as template.yaml's.
const (
	LambdaRuntime      = "provided.al2023"
	LambdaArchitecture = "arm64"
	LambdaHandler      = "bootstrap"
	LambdaMemory       = 256
	SweepSchedule      = "rate(1 minute)"
	// SecretARNSuffix: a function's environment names the ARN of each
	// secret (DATABASE_URL_SECRET_ARN, ...), never its value; the function
	// reads the value with its role at cold start.
	SecretARNSuffix = "_SECRET_ARN"
)

// Functions are the two Lambda functions of deployMode=lambda.
type Functions struct {
	ByName map[string]*lambda.Function
}

// FunctionName is the physical name of a service's function, known before
// it exists so Kong's configuration can name it.
func FunctionName(s *Settings, app string) string { return s.Name(app) }

func newFunctions(ctx *pulumi.Context, s *Settings, d serviceDeps) (*Functions, error) {
	out := &Functions{ByName: map[string]*lambda.Function{}}
	for _, app := range apps {
		name := FunctionName(s, app.Name)
		logs, err := newLogGroup(ctx, s, app.Name, "/aws/lambda/"+name)
		if err != nil {
			return nil, err
		}
		sec := secretsFor(app, s, d.db, d.broker, d.otlp)
		arns := append([]pulumi.StringInput{logs.Arn}, sec.arns...)
		mqBroker := d.broker.AmazonMQ != nil && app.Name == "invoices"
		if mqBroker {
			arns = append(arns, d.broker.AmazonMQ.Arn, d.broker.CredentialsSecret.Arn)
		}
		nSecrets := len(sec.arns)
		policy := policyJSON(func(a []string) []Statement {
			st := []Statement{
				{Effect: "Allow", Action: []string{"logs:CreateLogStream", "logs:PutLogEvents"}, Resource: []string{a[0] + ":*"}},
				// Lambda attaches the function to the VPC with these; they
				// take no resource-level restriction.
				{Effect: "Allow", Action: []string{
					"ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
					"ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
				}, Resource: []string{"*"}},
				readSecrets(a[1 : 1+nSecrets]),
			}
			if mqBroker {
				// The event source mapping runs with the function's role.
				st = append(st,
					Statement{Effect: "Allow", Action: []string{"mq:DescribeBroker"}, Resource: []string{a[1+nSecrets]}},
					Statement{Effect: "Allow", Action: []string{"secretsmanager:GetSecretValue"}, Resource: []string{a[2+nSecrets]}},
					Statement{Effect: "Allow", Action: []string{"ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeVpcs"}, Resource: []string{"*"}},
				)
			}
			return st
		}, arns...)
		role, err := newRole(ctx, s, app.Name+"-function", "lambda.amazonaws.com", policy)
		if err != nil {
			return nil, err
		}
		env := pulumi.StringMap{}
		for _, kv := range plainEnv(app, s) {
			env[kv.Name] = pulumi.String(kv.Value)
		}
		for i, n := range sec.names {
			env[n+SecretARNSuffix] = sec.arns[i]
		}
		fn, err := lambda.NewFunction(ctx, app.Name, &lambda.FunctionArgs{
			Name: pulumi.String(name), Role: role.Arn,
			Runtime: pulumi.String(LambdaRuntime), Architectures: pulumi.StringArray{pulumi.String(LambdaArchitecture)},
			Handler:    pulumi.String(LambdaHandler),
			Code:       pulumi.NewFileArchive(filepath.Join(s.LambdaDist, app.Name+".zip")),
			MemorySize: pulumi.Int(LambdaMemory), Timeout: pulumi.Int(app.Timeout),
			VpcConfig: &lambda.FunctionVpcConfigArgs{
				SubnetIds: d.net.PrivateSubnets, SecurityGroupIds: pulumi.StringArray{d.appSG.ID()},
			},
			Environment:   &lambda.FunctionEnvironmentArgs{Variables: env},
			LoggingConfig: &lambda.FunctionLoggingConfigArgs{LogFormat: pulumi.String("Text"), LogGroup: logs.Name},
			Tags:          tags(s, app.Name),
		}, pulumi.DependsOn([]pulumi.Resource{logs}))
		if err != nil {
			return nil, err
		}
		out.ByName[app.Name] = fn

		// A scheduled event: orders sweeps its outbox, invoices drains
		// queue "orders".
		what := map[string]string{"orders": "sweep", "invoices": "drain"}[app.Name]
		rule, err := cloudwatch.NewEventRule(ctx, app.Name+"-"+what, &cloudwatch.EventRuleArgs{
			Name: pulumi.String(s.Name(app.Name + "-" + what)), ScheduleExpression: pulumi.String(SweepSchedule),
			Description: pulumi.String(map[string]string{
				"orders":   "Publish whatever the outbox still holds",
				"invoices": `Drain queue "orders" into invoices`,
			}[app.Name]),
			Tags: tags(s, app.Name+"-"+what),
		})
		if err != nil {
			return nil, err
		}
		if _, err := cloudwatch.NewEventTarget(ctx, app.Name+"-"+what, &cloudwatch.EventTargetArgs{
			Rule: rule.Name, Arn: fn.Arn,
		}); err != nil {
			return nil, err
		}
		if _, err := lambda.NewPermission(ctx, app.Name+"-"+what, &lambda.PermissionArgs{
			Action: pulumi.String("lambda:InvokeFunction"), Function: fn.Name,
			Principal: pulumi.String("events.amazonaws.com"), SourceArn: rule.Arn,
		}); err != nil {
			return nil, err
		}
		if mqBroker {
			if _, err := lambda.NewEventSourceMapping(ctx, "invoices-amazonmq", &lambda.EventSourceMappingArgs{
				FunctionName: fn.Arn, EventSourceArn: d.broker.AmazonMQ.Arn,
				Queues: pulumi.String("orders"), BatchSize: pulumi.Int(100),
				MaximumBatchingWindowInSeconds: pulumi.Int(1),
				SourceAccessConfigurations: lambda.EventSourceMappingSourceAccessConfigurationArray{
					&lambda.EventSourceMappingSourceAccessConfigurationArgs{Type: pulumi.String("BASIC_AUTH"), Uri: d.broker.CredentialsSecret.Arn},
					&lambda.EventSourceMappingSourceAccessConfigurationArgs{Type: pulumi.String("VIRTUAL_HOST"), Uri: pulumi.String("/")},
				},
			}, pulumi.DependsOn([]pulumi.Resource{role})); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
