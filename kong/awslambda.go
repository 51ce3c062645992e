package kong

import (
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// LambdaRequest is the event Kong's aws-lambda plugin sends with
// awsgateway_compatible: true: API Gateway's REST proxy payload (version
// 1.0), as Kong's aws-serializer builds it. The JSON names are API
// Gateway's, so the Lambda side can decode it as
// events.APIGatewayProxyRequest.
type LambdaRequest struct {
	Resource                        string               `json:"resource"`
	Path                            string               `json:"path"`
	HTTPMethod                      string               `json:"httpMethod"`
	Headers                         map[string]string    `json:"headers"`
	MultiValueHeaders               map[string][]string  `json:"multiValueHeaders"`
	QueryStringParameters           map[string]string    `json:"queryStringParameters"`
	MultiValueQueryStringParameters map[string][]string  `json:"multiValueQueryStringParameters"`
	PathParameters                  map[string]string    `json:"pathParameters"`
	RequestContext                  LambdaRequestContext `json:"requestContext"`
	Body                            string               `json:"body"`
	IsBase64Encoded                 bool                 `json:"isBase64Encoded"`
}

// LambdaRequestContext is the requestContext Kong fills in.
type LambdaRequestContext struct {
	Path             string         `json:"path"`
	Protocol         string         `json:"protocol"`
	HTTPMethod       string         `json:"httpMethod"`
	DomainName       string         `json:"domainName"`
	DomainPrefix     string         `json:"domainPrefix"`
	Identity         LambdaIdentity `json:"identity"`
	RequestID        string         `json:"requestId"`
	RequestTime      string         `json:"requestTime"`
	RequestTimeEpoch int64          `json:"requestTimeEpoch"`
	ResourcePath     string         `json:"resourcePath"`
}

// LambdaIdentity is the caller as Kong saw it.
type LambdaIdentity struct {
	SourceIP  string `json:"sourceIp"`
	UserAgent string `json:"userAgent"`
}

// KongLambdaEvent builds, from r as it reached Kong, the event Kong's
// aws-lambda plugin (awsgateway_compatible: true, base64_encode_body:
// true, the defaults this package renders) hands to the function. resource
// is the path of the Kong route that matched (Kong's router_matches.uri),
// requestID Kong's request id, now the time Kong received r.
//
// Like Kong: header names are lower-case, the last value of a repeated
// header or query parameter is the single-value one, a non-empty body is
// base64-encoded with isBase64Encoded true, and an empty body is "" with
// isBase64Encoded false. One difference: Kong sends a query parameter with
// no value ("?flag") as JSON true; here it is "".
func KongLambdaEvent(r *http.Request, resource, requestID string, now time.Time) (LambdaRequest, error) {
	headers := map[string]string{}
	multiHeaders := map[string][]string{}
	for name, values := range r.Header {
		n := strings.ToLower(name)
		multiHeaders[n] = append(multiHeaders[n], values...)
		headers[n] = multiHeaders[n][len(multiHeaders[n])-1]
	}
	if r.Host != "" { // net/http moves Host out of the header map
		headers["host"], multiHeaders["host"] = r.Host, []string{r.Host}
	}
	query := map[string]string{}
	multiQuery := map[string][]string{}
	for name, values := range r.URL.Query() {
		multiQuery[name] = values
		query[name] = values[len(values)-1]
	}
	ev := LambdaRequest{
		Resource: resource, Path: r.URL.Path, HTTPMethod: r.Method,
		Headers: headers, MultiValueHeaders: multiHeaders,
		QueryStringParameters: query, MultiValueQueryStringParameters: multiQuery,
		PathParameters: map[string]string{},
	}
	if r.Body != nil {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return LambdaRequest{}, fmt.Errorf("read request body: %w", err)
		}
		if len(b) > 0 {
			ev.Body, ev.IsBase64Encoded = base64.StdEncoding.EncodeToString(b), true
		}
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	sourceIP := r.RemoteAddr
	if h, _, err := net.SplitHostPort(sourceIP); err == nil {
		sourceIP = h
	}
	prefix, _, _ := strings.Cut(host, ".")
	ev.RequestContext = LambdaRequestContext{
		Path: r.URL.Path, Protocol: r.Proto, HTTPMethod: r.Method,
		DomainName: host, DomainPrefix: prefix,
		Identity:  LambdaIdentity{SourceIP: sourceIP, UserAgent: r.UserAgent()},
		RequestID: requestID, ResourcePath: resource,
		RequestTime:      now.UTC().Format("02/Jan/2006:15:04:05 -0700"),
		RequestTimeEpoch: now.UnixMilli(),
	}
	return ev, nil
}
