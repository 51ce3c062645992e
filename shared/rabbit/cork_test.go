package rabbit

import (
	"bytes"
	"errors"
	"net"
	"testing"
)

// recordingConn records each write that reaches the socket.
type recordingConn struct {
	net.Conn
	writes [][]byte
	fail   error
	closed bool
}

func (r *recordingConn) Write(p []byte) (int, error) {
	if r.fail != nil {
		return 0, r.fail
	}
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func (r *recordingConn) Close() error { r.closed = true; return nil }

func TestCorkSendsHeldWritesInOneWriteInOrder(t *testing.T) {
	rec := &recordingConn{}
	c := &corkConn{Conn: rec}
	mustWrite := func(s string) {
		t.Helper()
		if n, err := c.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	mustWrite("a")
	if len(rec.writes) != 1 {
		t.Fatalf("uncorked write was held: %q", rec.writes)
	}
	release := c.cork()
	mustWrite("b")
	mustWrite("c")
	inner := c.cork()
	mustWrite("d")
	if err := inner(); err != nil {
		t.Fatal(err)
	}
	mustWrite("e")
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil { // a second call does nothing
		t.Fatal(err)
	}
	mustWrite("f")
	want := []string{"a", "bcd", "e", "f"}
	if len(rec.writes) != len(want) {
		t.Fatalf("socket writes %q, want %q", rec.writes, want)
	}
	for i, w := range want {
		if string(rec.writes[i]) != w {
			t.Fatalf("socket writes %q, want %q", rec.writes, want)
		}
	}
}

func TestCorkWritesThroughPastItsLimit(t *testing.T) {
	rec := &recordingConn{}
	c := &corkConn{Conn: rec}
	release := c.cork()
	defer release()
	small, big := []byte("head"), bytes.Repeat([]byte{'x'}, corkLimit)
	if _, err := c.Write(small); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	// What was held goes first, then the write that did not fit.
	if len(rec.writes) != 2 || string(rec.writes[0]) != "head" || len(rec.writes[1]) != corkLimit {
		t.Fatalf("socket writes: %d, first %q", len(rec.writes), rec.writes[0])
	}
}

func TestCorkClosesTheConnectionWhenHeldWritesFail(t *testing.T) {
	rec := &recordingConn{}
	c := &corkConn{Conn: rec}
	release := c.cork()
	if _, err := c.Write([]byte("frame")); err != nil {
		t.Fatal(err)
	}
	rec.fail = errors.New("broken pipe")
	if err := release(); err == nil {
		t.Fatal("release reported no error for a failed write")
	}
	if !rec.closed {
		t.Fatal("the connection stayed open after frames amqp091 took as sent were lost")
	}
}
