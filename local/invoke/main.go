// Command invoke runs a service binary as a Lambda function under the
// Runtime Interface Emulator, against the local PostgreSQL and RabbitMQ,
// sends it one event and prints the answer: `sam local invoke` without
// Docker.
//
//	go run ./local/invoke -rie bin/aws-lambda-rie -fn bin/orders -event local/events/orders/kong-create.json
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"invoicing/shared/testenv"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "invoke:", err)
		os.Exit(1)
	}
}

func run() error {
	rie := flag.String("rie", "bin/aws-lambda-rie", "the emulator binary")
	fn := flag.String("fn", "", "the service binary (bin/orders or bin/invoices)")
	event := flag.String("event", "", "the event, a JSON file")
	logs := flag.Bool("logs", false, "print the function's log lines too")
	flag.Parse()
	if *fn == "" || *event == "" {
		return fmt.Errorf("need -fn and -event")
	}
	payload, err := os.ReadFile(*event)
	if err != nil {
		return err
	}
	// The function does not migrate at start in Lambda mode; apply the
	// migrations (creating the local database) the way a deploy would.
	migrate := exec.Command(*fn, "migrate")
	migrate.Env = append(os.Environ(), "CREATE_DATABASE=true")
	if out, err := migrate.CombinedOutput(); err != nil {
		return fmt.Errorf("%s migrate: %v\n%s", *fn, err, out)
	}
	l, err := testenv.StartLambdaProcess(*rie, *fn, nil, nil)
	if l != nil {
		defer l.Kill()
	}
	if err != nil {
		return err
	}
	answer, err := l.Invoke(payload)
	if *logs {
		fmt.Fprintln(os.Stderr, strings.TrimSpace(l.Logs()))
	}
	if err != nil {
		return err
	}
	fmt.Println(render(answer))
	return nil
}

// render pretty-prints an answer, decoding an HTTP answer's body.
func render(answer []byte) string {
	var resp map[string]any
	if json.Unmarshal(answer, &resp) == nil {
		if body, ok := resp["body"].(string); ok {
			if b64, _ := resp["isBase64Encoded"].(bool); b64 {
				if raw, err := base64.StdEncoding.DecodeString(body); err == nil {
					body = string(raw)
				}
			}
			var v any
			if json.Unmarshal([]byte(body), &v) == nil {
				resp["body"] = v
			}
		}
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if resp != nil && enc.Encode(resp) == nil {
		return strings.TrimSpace(out.String())
	}
	return string(answer)
}
