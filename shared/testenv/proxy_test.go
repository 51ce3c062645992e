package testenv

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// echo serves lines back to the sender and reports each line it received.
func echo(t *testing.T) (addr string, got <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	lines := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					lines <- line
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), lines
}

func roundTrip(c net.Conn, r *bufio.Reader, line string, wait time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := c.Write([]byte(line)); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func TestProxyStallAndRestore(t *testing.T) {
	addr, _ := echo(t)
	p := NewProxy(t, addr)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "one\n", 2*time.Second); err != nil || got != "one\n" {
		t.Fatalf("before stall: %q %v", got, err)
	}
	p.Stall()
	if got, err := roundTrip(c, r, "two\n", 300*time.Millisecond); err == nil {
		t.Fatalf("answer %q through a stalled proxy", got)
	}
	p.Restore()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "two\n" {
		t.Fatalf("after restore: %q %v", got, err)
	}
}

func TestProxyCutAfterDeliversTheRequestButNotTheAnswer(t *testing.T) {
	addr, lines := echo(t)
	p := NewProxy(t, addr)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	fired := p.CutAfter("COMMIT", 50*time.Millisecond)
	if got, err := roundTrip(c, r, "begin\n", 2*time.Second); err != nil || got != "begin\n" {
		t.Fatalf("before the trap: %q %v", got, err)
	}
	<-lines
	if got, err := roundTrip(c, r, "commit\n", 2*time.Second); err == nil {
		t.Fatalf("the answer %q came back", got)
	}
	select {
	case <-fired:
	case <-time.After(2 * time.Second):
		t.Fatal("trap did not fire")
	}
	select {
	case l := <-lines:
		if l != "commit\n" {
			t.Fatalf("server got %q", l)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the request never reached the server")
	}
	// New connections pass again.
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got, err := roundTrip(c2, bufio.NewReader(c2), "commit\n", 2*time.Second); err != nil || got != "commit\n" {
		t.Fatalf("after the trap: %q %v", got, err)
	}
}
