package config

import (
	"strings"
	"testing"
	"time"
)

func TestReadCommon(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }

	c := ReadCommon(NewReader(getenv), 3333, "orders")
	if c.Port != 3333 || c.DatabaseURL != "postgres://postgres@127.0.0.1:5432/orders?sslmode=disable" ||
		c.BrokerURL != LocalBrokerURL || c.BodyLimit != 1<<20 || c.ShutdownTimeout != 25*time.Second {
		t.Errorf("defaults = %+v", c)
	}

	env = map[string]string{"PORT": "8080", "DATABASE_URL": "postgres://u@db:5432/x", "SHUTDOWN_TIMEOUT": "5s", "LOG_LEVEL": "DEBUG"}
	r := NewReader(getenv)
	c = ReadCommon(r, 3333, "orders")
	if err := r.Err(); err != nil || c.Port != 8080 || c.DatabaseURL != "postgres://u@db:5432/x" || c.ShutdownTimeout != 5*time.Second || c.LogLevel != "debug" {
		t.Errorf("set = %+v, %v", c, err)
	}

	env = map[string]string{"PORT": "http", "BROKER_URL": "http://user:secret@host/", "SHUTDOWN_TIMEOUT": "soon", "AUTO_MIGRATE": "perhaps", "LOG_LEVEL": "loud"}
	r = NewReader(getenv)
	ReadCommon(r, 3333, "orders")
	err := r.Err()
	if err == nil {
		t.Fatal("invalid values accepted")
	}
	for _, name := range []string{"PORT", "BROKER_URL", "SHUTDOWN_TIMEOUT", "AUTO_MIGRATE", "LOG_LEVEL"} {
		if !strings.Contains(err.Error(), name+"=") {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("error shows a password: %v", err)
	}
}

// pprof must never listen beyond the machine: anything but a loopback
// host is an error at start, not a listener on every interface.
func TestPprofAddrIsLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:6060":   true,
		"127.1.2.3:6060":   true,
		"[::1]:6060":       true,
		"localhost:6060":   true,
		"LOCALHOST:6060":   true,
		":6060":            false,
		"0.0.0.0:6060":     false,
		"[::]:6060":        false,
		"10.0.0.5:6060":    false,
		"192.168.1.1:6060": false,
		"example.com:6060": false,
		"localhost":        false,
		"127.0.0.1":        false,
		"127.0.0.1:http":   false,
		"127.0.0.1:70000":  false,
		"[fe80::1]:6060":   false,
	} {
		r := NewReader(func(k string) string { return map[string]string{"PPROF_ADDR": addr}[k] })
		c := ReadCommon(r, 3333, "orders")
		err := r.Err()
		switch {
		case ok && (err != nil || c.PprofAddr != addr):
			t.Errorf("PPROF_ADDR=%q: %v, addr %q; want it accepted", addr, err, c.PprofAddr)
		case !ok && (err == nil || !strings.Contains(err.Error(), "PPROF_ADDR=") || c.PprofAddr != ""):
			t.Errorf("PPROF_ADDR=%q: %v, addr %q; want a config error and no listener", addr, err, c.PprofAddr)
		}
	}
	if c := ReadCommon(NewReader(func(string) string { return "" }), 3333, "orders"); c.PprofAddr != "" {
		t.Errorf("pprof is on by default at %q", c.PprofAddr)
	}
}
