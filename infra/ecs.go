package main

import (
	"encoding/json"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/cloudwatch"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Container is the part of an ECS container definition this program sets.
// Secrets reference Secrets Manager ARNs: ECS resolves them when it starts
// the task, so no secret value is ever part of the task definition.
type Container struct {
	Name                   string           `json:"name"`
	Image                  string           `json:"image"`
	Essential              bool             `json:"essential"`
	Command                []string         `json:"command,omitempty"`
	PortMappings           []PortMapping    `json:"portMappings,omitempty"`
	Environment            []KeyValue       `json:"environment"`
	Secrets                []SecretRef      `json:"secrets"`
	MountPoints            []MountPoint     `json:"mountPoints,omitempty"`
	HealthCheck            *HealthCheck     `json:"healthCheck,omitempty"`
	StopTimeout            int              `json:"stopTimeout,omitempty"`
	ReadonlyRootFilesystem bool             `json:"readonlyRootFilesystem"`
	Ulimits                []Ulimit         `json:"ulimits,omitempty"`
	LogConfiguration       LogConfiguration `json:"logConfiguration"`
}

type PortMapping struct {
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	Name          string `json:"name,omitempty"`
}

type KeyValue struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type SecretRef struct {
	Name      string `json:"name"`
	ValueFrom string `json:"valueFrom"`
}

type MountPoint struct {
	SourceVolume  string `json:"sourceVolume"`
	ContainerPath string `json:"containerPath"`
	ReadOnly      bool   `json:"readOnly"`
}

type HealthCheck struct {
	Command     []string `json:"command"`
	Interval    int      `json:"interval"`
	Timeout     int      `json:"timeout"`
	Retries     int      `json:"retries"`
	StartPeriod int      `json:"startPeriod"`
}

type Ulimit struct {
	Name      string `json:"name"`
	SoftLimit int    `json:"softLimit"`
	HardLimit int    `json:"hardLimit"`
}

type LogConfiguration struct {
	LogDriver string            `json:"logDriver"`
	Options   map[string]string `json:"options"`
}

// containerJSON renders one container definition once the ARNs and names
// it references are known. build receives the resolved values in order.
func containerJSON(build func(v []string) Container, inputs ...pulumi.StringInput) pulumi.StringOutput {
	in := make([]any, len(inputs))
	for i, x := range inputs {
		in[i] = x
	}
	return pulumi.All(in...).ApplyT(func(v []any) (string, error) {
		resolved := make([]string, len(v))
		for i, x := range v {
			resolved[i] = x.(string)
		}
		b, err := json.Marshal([]Container{build(resolved)})
		return string(b), err
	}).(pulumi.StringOutput)
}

func awsLogs(s *Settings, group, prefix string) LogConfiguration {
	return LogConfiguration{LogDriver: "awslogs", Options: map[string]string{
		"awslogs-group": group, "awslogs-region": s.Region, "awslogs-stream-prefix": prefix,
	}}
}

// LogRetentionDays is how long every log group keeps its events.
const LogRetentionDays = 30

func newLogGroup(ctx *pulumi.Context, s *Settings, name, path string) (*cloudwatch.LogGroup, error) {
	return cloudwatch.NewLogGroup(ctx, name, &cloudwatch.LogGroupArgs{
		Name: pulumi.String(path), RetentionInDays: pulumi.Int(LogRetentionDays), Tags: tags(s, name),
	})
}

// executionRolePolicy lets ECS pull from ECR, write the task's log group
// and read exactly the given secrets.
func executionRolePolicy(arns []string) []Statement {
	st := []Statement{}
	if len(arns) > 0 {
		st = append(st, readSecrets(arns))
	}
	return st
}
