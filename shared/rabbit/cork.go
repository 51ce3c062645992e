package rabbit

import (
	"net"
	"sync"
)

// corkLimit is the most a corked socket holds back before it writes.
const corkLimit = 256 << 10

// corkConn is a connection's socket that can hold its writes back. amqp091
// flushes its buffer after every message, one system call each; between
// cork and the function it returns, a batch of publishes is gathered and
// leaves in one write (or one per corkLimit bytes), and the broker reads it
// in one go. Frames keep their order: a write that is not held back first
// sends what is.
type corkConn struct {
	net.Conn

	mu     sync.Mutex
	corked int
	held   []byte
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked > 0 && len(c.held)+len(p) <= corkLimit {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// cork holds writes back until the returned function is called, which
// sends them. Corks nest; each release sends what is held.
func (c *corkConn) cork() (release func() error) {
	c.mu.Lock()
	c.corked++
	c.mu.Unlock()
	var once sync.Once
	return func() (err error) {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.corked--
			err = c.flushLocked()
		})
		return err
	}
}

// flushLocked writes what is held. amqp091 took those frames as sent, so
// when they cannot be the connection is closed: its reader fails, and with
// it every confirm and call waiting on the connection.
func (c *corkConn) flushLocked() error {
	if len(c.held) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	if err != nil {
		_ = c.Conn.Close()
	}
	return err
}
