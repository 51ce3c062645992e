// Package secrets resolves settings that a deployment passes by reference:
// for each NAME_SECRET_ARN in the environment, the value of that AWS Secrets
// Manager secret becomes NAME, read once at start with the process's own
// role (a Lambda function's execution role may read exactly its secrets).
// So no secret value sits in a function's configuration.
package secrets

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
)

// Suffix marks a variable that names a secret instead of holding a value.
const Suffix = "_SECRET_ARN"

// fetch returns the string value of the secret arn.
type fetch func(ctx context.Context, arn string) (string, error)

// Getenv returns getenv with every NAME_SECRET_ARN of environ (KEY=VALUE
// lines, as os.Environ gives them) resolved into NAME. Without such a
// variable it returns getenv itself and contacts nothing.
func Getenv(ctx context.Context, environ []string, getenv func(string) string) (func(string) string, error) {
	return resolve(ctx, environ, getenv, awsFetch)
}

func resolve(ctx context.Context, environ []string, getenv func(string) string, get fetch) (func(string) string, error) {
	resolved := map[string]string{}
	for _, kv := range environ {
		key, arn, _ := strings.Cut(kv, "=")
		name, ok := strings.CutSuffix(key, Suffix)
		if !ok || name == "" || arn == "" {
			continue
		}
		if getenv(name) != "" {
			return nil, fmt.Errorf("secrets: both %s and %s are set; set one", name, key)
		}
		v, err := get(ctx, arn)
		if err != nil {
			return nil, fmt.Errorf("secrets: read %s for %s: %w", arn, name, err)
		}
		resolved[name] = v
	}
	if len(resolved) == 0 {
		return getenv, nil
	}
	return func(name string) string {
		if v, ok := resolved[name]; ok {
			return v
		}
		return getenv(name)
	}, nil
}

var client *secretsmanager.Client

// awsFetch reads a secret with the default credential chain (the Lambda
// execution role, the ECS task role), bounded in time.
func awsFetch(ctx context.Context, arn string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if client == nil {
		cfg, err := awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			return "", fmt.Errorf("load AWS configuration: %w", err)
		}
		client = secretsmanager.NewFromConfig(cfg)
	}
	out, err := client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(arn)})
	if err != nil {
		return "", err
	}
	if out.SecretString == nil {
		return "", fmt.Errorf("secret %s holds no string", arn)
	}
	return *out.SecretString, nil
}
