package testenv

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"
)

// Proxy forwards TCP connections to a target and can take the target away
// from its clients without stopping it: Cut closes every connection, Stall
// turns the path into a black hole (nothing forwarded, nothing closed), and
// CutAfter breaks one connection right after a given request reached the
// server, so its answer never comes back; HoldAfter keeps a request from
// the server until the test releases it. FakeBackendPIDs makes it a
// PostgreSQL pooler as its clients see it.
type Proxy struct {
	target string
	ln     net.Listener

	mu      sync.Mutex
	cond    *sync.Cond
	down    bool
	stalled bool
	conns   map[net.Conn]struct{}
	trigger *cutTrigger
	hold    *Hold
	fakePID func(real uint32) uint32
	realPID map[uint32]uint32 // fake pid → server's, for cancel requests
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

// Open returns how many connections the proxy holds, counting each
// client's and its server-side connection apart.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

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

// FakeBackendPIDs makes the proxy hand its PostgreSQL clients a process id
// of its choosing, fake(the server's), in place of the server's, as RDS
// Proxy and PgBouncer do: a client then knows no backend's pid, or, when
// fake returns one, an unrelated backend's. Cancel requests are mapped
// back. It applies to connections opened afterwards.
func (p *Proxy) FakeBackendPIDs(fake func(real uint32) uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fakePID = fake
	p.realPID = map[uint32]uint32{}
}

// Hold is a request HoldAfter kept from the server.
type Hold struct {
	pattern []byte
	settle  time.Duration
	fired   chan struct{}
	p       *Proxy

	mu     sync.Mutex
	server net.Conn
	chunk  []byte
}

// Fired is closed once the client's side of the held connection is closed.
func (h *Hold) Fired() <-chan struct{} { return h.fired }

// Release sends the held request to the server at last, if the server's
// side of its connection is still open, as a request stuck in a buffer on
// the way may arrive late. It reports whether the write succeeded.
func (h *Hold) Release() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.server == nil || h.chunk == nil {
		return false
	}
	_, err := h.server.Write(h.chunk)
	h.chunk = nil
	return err == nil
}

// HoldAfter arms a one-shot trap: the first chunk a client sends that
// contains pattern (compared case-insensitively) is kept, not forwarded,
// nothing more goes back to that client, and after settle the client's
// side is closed while the server's stays open, as when a request is lost
// between a client and a pooler that keeps its server connection: the
// server still waits for it. Release sends it on.
func (p *Proxy) HoldAfter(pattern string, settle time.Duration) *Hold {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := &Hold{pattern: bytes.ToLower([]byte(pattern)), settle: settle, fired: make(chan struct{}), p: p}
	p.hold = h
	return h
}

// takeHold returns the armed hold when chunk matches it, disarming it.
func (p *Proxy) takeHold(chunk []byte) *Hold {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.hold
	if h == nil || !bytes.Contains(bytes.ToLower(chunk), h.pattern) {
		return nil
	}
	p.hold = nil
	return h
}

// pidRewriter replaces the process id in the BackendKeyData message of a
// PostgreSQL server's startup answer. It parses whole messages until it has
// done so (or the server is ready without one), then passes bytes through.
type pidRewriter struct {
	p       *Proxy
	fake    func(uint32) uint32
	pending []byte
	done    bool
}

// rewrite takes the next bytes from the server and returns those to send on.
func (r *pidRewriter) rewrite(chunk []byte) []byte {
	if r.done {
		return chunk
	}
	r.pending = append(r.pending, chunk...)
	n := 0 // bytes of whole messages parsed
	for !r.done && len(r.pending)-n >= 5 {
		typ := r.pending[n]
		size := int(binary.BigEndian.Uint32(r.pending[n+1:]))
		if len(r.pending)-n < 1+size {
			break
		}
		msg := r.pending[n : n+1+size]
		switch {
		case typ == 'K' && size >= 12:
			real := binary.BigEndian.Uint32(msg[5:])
			fake := r.fake(real)
			binary.BigEndian.PutUint32(msg[5:], fake)
			r.p.mu.Lock()
			r.p.realPID[fake] = real
			r.p.mu.Unlock()
			r.done = true
		case typ == 'Z' || typ == 'E':
			r.done = true
		}
		n += 1 + size
	}
	if r.done {
		out := r.pending
		r.pending = nil
		return out
	}
	out := append([]byte(nil), r.pending[:n]...)
	r.pending = r.pending[n:]
	return out
}

// cancelCode is the request code of a PostgreSQL CancelRequest.
const cancelCode = 80877102

// mapCancel rewrites a CancelRequest for a fake pid to the server's pid.
func (p *Proxy) mapCancel(chunk []byte) {
	if len(chunk) != 16 || binary.BigEndian.Uint32(chunk) != 16 || binary.BigEndian.Uint32(chunk[4:]) != cancelCode {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if real, ok := p.realPID[binary.BigEndian.Uint32(chunk[8:])]; ok {
		binary.BigEndian.PutUint32(chunk[8:], real)
	}
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
	held := false // the client's side is gone, the server's kept open
	p.mu.Lock()
	var rw *pidRewriter
	if p.fakePID != nil {
		rw = &pidRewriter{p: p, fake: p.fakePID}
	}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn, upstream bool) {
		defer func() {
			withhold.Lock()
			h := held
			withhold.Unlock()
			if h && upstream {
				p.drop(client) // the server's side stays for Release
			} else {
				p.drop(dst, src)
			}
			done <- struct{}{}
		}()
		buf := make([]byte, 32<<10)
		first := true
		for {
			if !p.waitForward(src) {
				return
			}
			n, err := src.Read(buf)
			if n > 0 {
				if !p.waitForward(src) {
					return
				}
				chunk := buf[:n]
				var tr *cutTrigger
				var hold *Hold
				if upstream {
					if first && rw != nil {
						p.mapCancel(chunk)
					}
					first = false
					tr = p.takeTrigger(chunk)
					if tr == nil {
						hold = p.takeHold(chunk)
					}
				} else if rw != nil {
					chunk = rw.rewrite(chunk)
				}
				if tr != nil || hold != nil {
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
				if hold != nil {
					hold.mu.Lock()
					hold.server, hold.chunk = server, append([]byte(nil), chunk...)
					hold.mu.Unlock()
					go func() {
						time.Sleep(hold.settle)
						withhold.Lock()
						held = true
						withhold.Unlock()
						p.drop(client)
						close(hold.fired)
					}()
					continue
				}
				if _, werr := dst.Write(chunk); werr != nil {
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

// ProxyURL puts a Proxy in front of the server that rawURL (a database or
// broker URL) points at, and returns it with the URL through it.
func ProxyURL(t testing.TB, rawURL string) (*Proxy, string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parse %q: %v", rawURL, err)
	}
	p := NewProxy(t, u.Host)
	u.Host = p.Addr()
	return p, u.String()
}
