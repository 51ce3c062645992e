package secrets

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	env := map[string]string{"PORT": "3333", "DATABASE_URL_SECRET_ARN": "arn:db", "BROKER_URL_SECRET_ARN": "arn:broker"}
	environ := []string{}
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	store := map[string]string{"arn:db": "postgres://u:p@db/orders", "arn:broker": "amqps://u:p@mq:5671/"}
	var asked []string
	get := func(_ context.Context, arn string) (string, error) {
		asked = append(asked, arn)
		v, ok := store[arn]
		if !ok {
			return "", errors.New("no such secret")
		}
		return v, nil
	}
	getenv, err := resolve(context.Background(), environ, func(k string) string { return env[k] }, get)
	if err != nil {
		t.Fatal(err)
	}
	if getenv("DATABASE_URL") != store["arn:db"] || getenv("BROKER_URL") != store["arn:broker"] || getenv("PORT") != "3333" {
		t.Errorf("resolved DATABASE_URL=%q BROKER_URL=%q PORT=%q", getenv("DATABASE_URL"), getenv("BROKER_URL"), getenv("PORT"))
	}
	if len(asked) != 2 {
		t.Errorf("asked for %v, want each secret once", asked)
	}

	// Nothing to resolve: nothing is asked.
	asked = nil
	plain := func(k string) string { return map[string]string{"PORT": "1"}[k] }
	if _, err := resolve(context.Background(), []string{"PORT=1"}, plain, get); err != nil || len(asked) != 0 {
		t.Errorf("without references: err %v, asked %v", err, asked)
	}

	// A value and a reference for the same setting, or a missing secret, stop the start.
	both := map[string]string{"DATABASE_URL": "x", "DATABASE_URL_SECRET_ARN": "arn:db"}
	if _, err := resolve(context.Background(), []string{"DATABASE_URL=x", "DATABASE_URL_SECRET_ARN=arn:db"}, func(k string) string { return both[k] }, get); err == nil || !strings.Contains(err.Error(), "both") {
		t.Errorf("value and reference: %v", err)
	}
	if _, err := resolve(context.Background(), []string{"X_SECRET_ARN=arn:none"}, func(string) string { return "" }, get); err == nil || !strings.Contains(err.Error(), "arn:none") {
		t.Errorf("missing secret: %v", err)
	}
}
