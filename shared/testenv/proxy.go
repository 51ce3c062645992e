package testenv

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy forwards TCP connections to a target and can take the target away
// from its clients without stopping it: Cut closes every connection, Stall
// turns the path into a black hole (nothing forwarded, nothing closed), and
// CutAfter breaks one connection right after a given request reached the
// server, so its answer never comes back.
type Proxy struct {
	target string
	ln     net.Listener

	mu      sync.Mutex
	cond    *sync.Cond
	down    bool
	stalled bool
	conns   map[net.Conn]struct{}
	trigger *cutTrigger
}

type cutTrigger struct {
	pattern []byte
	settle  time.Duration
	fired   chan struct{}
}

// NewProxy listens on a free loopback port and forwards to target. It is
// closed when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.Cut()
	})
	return p
}

// Addr is the host:port clients dial instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every open connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	p.stalled = false
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
	p.cond.Broadcast()
}

// Stall stops forwarding in both directions on every connection, open or
// new, without closing any: the server looks alive but never answers, and
// a client's writes block once the buffers fill. Restore resumes forwarding.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

// Restore accepts and forwards connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
	p.stalled = false
	p.cond.Broadcast()
}

// CutAfter arms a one-shot trap: the first chunk a client sends that
// contains pattern (compared case-insensitively) is forwarded to the server,
// the server's answer is withheld, and after settle the connection is
// closed on both sides. Other connections are untouched. The returned
// channel is closed when the trap has fired.
func (p *Proxy) CutAfter(pattern string, settle time.Duration) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	tr := &cutTrigger{pattern: bytes.ToLower([]byte(pattern)), settle: settle, fired: make(chan struct{})}
	p.trigger = tr
	return tr.fired
}

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.serve(client)
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

// waitForward blocks while the proxy is stalled; it reports false when the
// connection was closed meanwhile.
func (p *Proxy) waitForward(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.stalled {
		if _, ok := p.conns[c]; !ok {
			return false
		}
		p.cond.Wait()
	}
	_, ok := p.conns[c]
	return ok
}

// takeTrigger returns the armed trap when chunk matches it, disarming it.
func (p *Proxy) takeTrigger(chunk []byte) *cutTrigger {
	p.mu.Lock()
	defer p.mu.Unlock()
	tr := p.trigger
	if tr == nil || !bytes.Contains(bytes.ToLower(chunk), tr.pattern) {
		return nil
	}
	p.trigger = nil
	return tr
}

func (p *Proxy) drop(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
		delete(p.conns, c)
	}
	p.cond.Broadcast()
}

func (p *Proxy) serve(client net.Conn) {
	if !p.track(client) {
		_ = client.Close()
		return
	}
	server, err := net.Dial("tcp", p.target)
	if err != nil || !p.track(server) {
		_ = client.Close()
		if server != nil {
			_ = server.Close()
		}
		p.drop(client)
		return
	}
	var withhold sync.Mutex // held while a cut is pending: no answer goes back
	muted := false
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn, upstream bool) {
		defer func() {
			p.drop(dst, src)
			done <- struct{}{}
		}()
		buf := make([]byte, 32<<10)
		for {
			if !p.waitForward(src) {
				return
			}
			n, err := src.Read(buf)
			if n > 0 {
				if !p.waitForward(src) {
					return
				}
				var tr *cutTrigger
				if upstream {
					tr = p.takeTrigger(buf[:n])
				}
				if tr != nil {
					withhold.Lock()
					muted = true
					withhold.Unlock()
				}
				if !upstream {
					withhold.Lock()
					m := muted
					withhold.Unlock()
					if m {
						continue // the answer is lost on the way back
					}
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
				if tr != nil {
					go func() {
						time.Sleep(tr.settle)
						p.drop(client, server)
						close(tr.fired)
					}()
				}
			}
			if err != nil {
				return // EOF or a closed connection: close the other side too
			}
		}
	}
	go pipe(server, client, true)
	go pipe(client, server, false)
	<-done
	<-done
}
