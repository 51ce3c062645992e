package main

import (
	"encoding/json"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/secretsmanager"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// newSecret stores value (a secret output) in Secrets Manager. Containers
// get it through their task definition's `secrets`, functions read it at
// start through their role; the value never appears in an environment or an
// output.
// Secret is a Secrets Manager secret and its current version.
type Secret struct {
	*secretsmanager.Secret
	Version *secretsmanager.SecretVersion
}

func newSecret(ctx *pulumi.Context, s *Settings, name, description string, value pulumi.StringOutput) (*Secret, error) {
	sec, err := secretsmanager.NewSecret(ctx, name, &secretsmanager.SecretArgs{
		Name:                 pulumi.String(s.Name(name)),
		Description:          pulumi.String(description),
		RecoveryWindowInDays: pulumi.Int(7),
		Tags:                 tags(s, name),
	})
	if err != nil {
		return nil, err
	}
	v, err := secretsmanager.NewSecretVersion(ctx, name, &secretsmanager.SecretVersionArgs{
		SecretId:     sec.ID(),
		SecretString: pulumi.ToSecret(value).(pulumi.StringOutput),
	})
	if err != nil {
		return nil, err
	}
	return &Secret{Secret: sec, Version: v}, nil
}

// credentialsJSON is the {"username","password"} shape Amazon MQ event
// source mappings and RDS Proxy read.
func credentialsJSON(user string, password pulumi.StringOutput) pulumi.StringOutput {
	return pulumi.ToSecret(password.ApplyT(func(p string) (string, error) {
		b, err := json.Marshal(map[string]string{"username": user, "password": p})
		return string(b), err
	})).(pulumi.StringOutput)
}

// Statement is one IAM policy statement.
type Statement struct {
	Effect    string         `json:"Effect"`
	Action    []string       `json:"Action"`
	Resource  []string       `json:"Resource"`
	Condition map[string]any `json:"Condition,omitempty"`
}

// policyJSON renders statements whose resources are outputs (ARNs).
func policyJSON(statements func(arns []string) []Statement, arns ...pulumi.StringInput) pulumi.StringOutput {
	in := make([]any, len(arns))
	for i, a := range arns {
		in[i] = a
	}
	return pulumi.All(in...).ApplyT(func(v []any) (string, error) {
		resolved := make([]string, len(v))
		for i, x := range v {
			resolved[i] = x.(string)
		}
		b, err := json.Marshal(map[string]any{"Version": "2012-10-17", "Statement": statements(resolved)})
		return string(b), err
	}).(pulumi.StringOutput)
}

func assumeRolePolicy(service string) pulumi.String {
	b, _ := json.Marshal(map[string]any{
		"Version": "2012-10-17",
		"Statement": []map[string]any{{
			"Effect": "Allow", "Principal": map[string]string{"Service": service}, "Action": "sts:AssumeRole",
		}},
	})
	return pulumi.String(string(b))
}

// newRole creates a role for service with one inline policy (nil for none).
func newRole(ctx *pulumi.Context, s *Settings, name, service string, policy pulumi.StringInput, managed ...string) (*iam.Role, error) {
	args := &iam.RoleArgs{
		Name:             pulumi.String(s.Name(name)),
		AssumeRolePolicy: assumeRolePolicy(service),
		Tags:             tags(s, name),
	}
	if len(managed) > 0 {
		args.ManagedPolicyArns = pulumi.ToStringArray(managed)
	}
	role, err := iam.NewRole(ctx, name, args)
	if err != nil {
		return nil, err
	}
	if policy != nil {
		if _, err := iam.NewRolePolicy(ctx, name, &iam.RolePolicyArgs{Role: role.Name, Policy: policy}); err != nil {
			return nil, err
		}
	}
	return role, nil
}

// readSecrets allows reading exactly the given secrets.
func readSecrets(arns []string) Statement {
	return Statement{Effect: "Allow", Action: []string{"secretsmanager:GetSecretValue"}, Resource: arns}
}
