package testenv

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Emulator builds the AWS Lambda Runtime Interface Emulator pinned in
// local/rie once per test process and returns its path.
func Emulator(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	const key = "aws-lambda-rie"
	if p, ok := built[key]; ok {
		return p
	}
	if binDir == "" {
		t.Fatal("testenv.Emulator needs TestMain to call testenv.Main")
	}
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("find the main module: %v", err)
	}
	out := filepath.Join(binDir, key)
	cmd := exec.Command("go", "build", "-o", out, "github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie")
	cmd.Dir = filepath.Join(strings.TrimSpace(string(root)), "local", "rie")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the Lambda emulator: %v\n%s", err, b)
	}
	built[key] = out
	return out
}

// Lambda is a service binary running as a Lambda function under the
// emulator, which sets AWS_LAMBDA_RUNTIME_API for it.
type Lambda struct {
	*Process
	invokeURL string
}

// StartLambda runs bin under the emulator with env added to this process's
// environment (the emulator hands its environment to the function). The
// function initialises on the first invocation. It is stopped when the
// test ends.
func StartLambda(t testing.TB, bin string, env map[string]string) *Lambda {
	t.Helper()
	l, err := StartLambdaProcess(Emulator(t), bin, env, nil)
	var p *Process
	if l != nil {
		p = l.Process
	}
	stopAtEnd(t, p, filepath.Base(bin)+" under the emulator", err)
	return l
}

// StartLambdaProcess runs bin under the emulator rie on two free loopback
// ports and waits until the emulator accepts invocations. Output goes to
// logs, or is kept for Logs when logs is nil.
func StartLambdaProcess(rie, bin string, env map[string]string, logs *os.File) (*Lambda, error) {
	apiPort, err := PickPort()
	if err != nil {
		return nil, err
	}
	runtimePort, err := PickPort()
	if err != nil {
		return nil, err
	}
	api := "127.0.0.1:" + strconv.Itoa(apiPort)
	cmd := exec.Command(rie,
		"--runtime-interface-emulator-address", api,
		"--runtime-api-address", "127.0.0.1:"+strconv.Itoa(runtimePort),
		bin)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p, err := launch(cmd, "http://"+api, apiPort, logs)
	if err != nil {
		return nil, err
	}
	l := &Lambda{Process: p, invokeURL: "http://" + api + "/2015-03-31/functions/function/invocations"}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.done:
			return l, fmt.Errorf("emulator exited at start: %v\n%s", p.err, p.Logs())
		default:
		}
		if c, err := net.DialTimeout("tcp", api, time.Second); err == nil {
			c.Close()
			return l, nil
		}
		if time.Now().After(deadline) {
			return l, fmt.Errorf("emulator not listening on %s after 30s\n%s", api, p.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Invoke sends one event and returns the function's answer. A function
// error comes back as the emulator's error document, with status 200.
func (l *Lambda) Invoke(payload []byte) ([]byte, error) {
	resp, err := http.Post(l.invokeURL, "application/json", bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("invoke: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("invoke: status %d: %s", resp.StatusCode, body)
	}
	return body, nil
}

// FunctionError is the emulator's document for an invocation that failed.
type FunctionError struct {
	Message string `json:"errorMessage"`
	Type    string `json:"errorType"`
}

func (e *FunctionError) Error() string { return e.Type + ": " + e.Message }

// InvokeOK sends one event and returns the function's answer; an invocation
// that failed (the emulator's error document) is a *FunctionError.
func (l *Lambda) InvokeOK(payload []byte) ([]byte, error) {
	answer, err := l.Invoke(payload)
	if err != nil {
		return answer, err
	}
	var fe FunctionError
	if json.Unmarshal(answer, &fe) == nil && fe.Message != "" {
		return answer, &fe
	}
	return answer, nil
}

// HTTPAnswer is the answer to an HTTP event: the union of API Gateway REST
// (1.0), HTTP API (2.0) and ALB response shapes.
type HTTPAnswer struct {
	StatusCode        int                 `json:"statusCode"`
	StatusDescription string              `json:"statusDescription"`
	Headers           map[string]string   `json:"headers"`
	MultiValueHeaders map[string][]string `json:"multiValueHeaders"`
	Cookies           []string            `json:"cookies"`
	Body              string              `json:"body"`
	IsBase64Encoded   bool                `json:"isBase64Encoded"`
}

// Header returns the answer's value of a header, single- or multi-valued,
// matching the name without regard to case.
func (a HTTPAnswer) Header(name string) string {
	for k, v := range a.Headers {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	for k, v := range a.MultiValueHeaders {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return strings.Join(v, ",")
		}
	}
	return ""
}

// RawBody is the answer's body, decoded when it came base64-encoded.
func (a HTTPAnswer) RawBody() ([]byte, error) {
	if a.IsBase64Encoded {
		return base64.StdEncoding.DecodeString(a.Body)
	}
	return []byte(a.Body), nil
}

// InvokeHTTP sends an HTTP event and decodes the answer.
func (l *Lambda) InvokeHTTP(payload []byte) (HTTPAnswer, error) {
	var a HTTPAnswer
	answer, err := l.InvokeOK(payload)
	if err != nil {
		return a, err
	}
	if err := json.Unmarshal(answer, &a); err != nil {
		return a, fmt.Errorf("decode HTTP answer %s: %w", answer, err)
	}
	if a.StatusCode == 0 {
		return a, fmt.Errorf("answer without a status code: %s", answer)
	}
	return a, nil
}

var (
	initReport   = regexp.MustCompile(`INIT REPORT\(durationMs: ([0-9.]+)\)`)
	initDuration = regexp.MustCompile(`Init Duration: ([0-9.]+) ms`)
)

// InitDuration is how long the function's cold start took, once the first
// invocation ended: the emulator's INIT REPORT (from starting the bootstrap
// to its first request for an invocation). The emulator's REPORT line also
// has an "Init Duration", which it does not measure (it shows a few
// hundredths of a millisecond); that one is used only without INIT REPORT.
func (l *Lambda) InitDuration() (time.Duration, bool) {
	m := initReport.FindStringSubmatch(l.Logs())
	if m == nil {
		m = initDuration.FindStringSubmatch(l.Logs())
	}
	if m == nil {
		return 0, false
	}
	ms, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(ms * float64(time.Millisecond)), true
}
