package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Validator is implemented by request bodies; Validate may also fill defaults.
type Validator interface {
	Validate() []FieldError
}

// Decode reads one JSON request body into T, enforcing in one place: the
// content type, a size limit, valid UTF-8, no unknown fields, exactly one
// JSON value, and T's own validation rules.
func Decode[T any, PT interface {
	*T
	Validator
}](w http.ResponseWriter, r *http.Request, limit int64) (T, error) {
	var v T
	if err := checkContentType(r.Header.Get("Content-Type")); err != nil {
		return v, err
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return v, Errorf(http.StatusRequestEntityTooLarge, "the body is larger than %d bytes", limit)
		}
		return v, Errorf(http.StatusBadRequest, "the body could not be read")
	}
	if err := DecodeBytes(body, PT(&v)); err != nil {
		return v, err
	}
	return v, nil
}

// DecodeBytes decodes and validates a JSON document already in memory.
func DecodeBytes(body []byte, v Validator) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return Errorf(http.StatusBadRequest, "the body is empty; a JSON object is expected")
	}
	if !utf8.Valid(body) {
		return Errorf(http.StatusBadRequest, "the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errorf(http.StatusBadRequest, "the body must hold a single JSON value")
	}
	if fields := v.Validate(); len(fields) > 0 {
		return ValidationError(fields)
	}
	return nil
}

func checkContentType(ct string) error {
	if ct == "" {
		return Errorf(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return Errorf(http.StatusUnsupportedMediaType, "Content-Type must be application/json, not %q", ct)
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return Errorf(http.StatusUnsupportedMediaType, "charset must be utf-8, not %q", cs)
	}
	return nil
}

func decodeError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return Errorf(http.StatusBadRequest, "malformed JSON at byte %d: %v", syn.Offset, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(http.StatusBadRequest, "malformed JSON: the body ends too early")
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return Errorf(http.StatusBadRequest, "the body must be a JSON object, not %s", typ.Value)
		}
		return ValidationError([]FieldError{{Field: field, Detail: fmt.Sprintf("must be %s, not %s", jsonKind(typ.Type.Kind().String()), typ.Value)}})
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		return &Error{Status: http.StatusBadRequest, Title: "Unknown field", Type: "about:blank",
			Detail: "the body has a field this API does not know: " + name,
			Errors: []FieldError{{Field: strings.Trim(name, `"`), Detail: "unknown field"}}}
	default:
		return Errorf(http.StatusBadRequest, "malformed JSON: %v", err)
	}
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice", "array":
		return "an array"
	default:
		return "an object"
	}
}
