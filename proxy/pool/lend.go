package pool

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Key identifies a pool: server connections are shared only among clients
// of the same member, database and user.
type Key struct {
	Member, Database, User string
}

// Config sizes a pool and ages its connections. Zero fields take the
// defaults given.
type Config struct {
	// Size caps the server connections of one pool. Default 20.
	Size int
	// MinSize is kept open even when idle. Default 0.
	MinSize int
	// IdleTimeout closes a connection idle this long. Default 10m.
	IdleTimeout time.Duration
	// Lifetime closes a connection this old at its next release. Default 1h.
	Lifetime time.Duration
	// WaitTimeout bounds how long Acquire waits for a free connection.
	// Default 30s.
	WaitTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.Size <= 0 {
		c.Size = 20
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 10 * time.Minute
	}
	if c.Lifetime <= 0 {
		c.Lifetime = time.Hour
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = 30 * time.Second
	}
	return c
}

// Errors from Acquire.
var (
	// ErrWaitTimeout means no connection became free within WaitTimeout.
	ErrWaitTimeout = errors.New("timed out waiting for a server connection")
	// ErrClosed means the pool was closed (its member changed role or left).
	ErrClosed = errors.New("pool closed")
)

// Connector opens a server connection that is logged in and ready for
// queries (after ReadyForQuery).
type Connector func(ctx context.Context) (*ServerConn, error)

// Pool lends server connections of one Key. Safe for concurrent use. A
// lent connection belongs to the borrower until it calls Release, and no
// one else touches it meanwhile.
type Pool struct {
	key     Key
	cfg     Config
	connect Connector

	mu      sync.Mutex
	idle    []*ServerConn // most recently used last
	open    int           // idle + lent + being dialed
	waiters []waiter      // first come, first served
	closed  bool

	stats Stats

	// clients counts the client sessions routed to this pool, holding a
	// server or not (Attach/Detach).
	clients atomic.Int64
}

// Stats describes a pool for the admin API.
type Stats struct {
	Key          Key           `json:"key"`
	Open         int           `json:"servers_open"`
	Idle         int           `json:"servers_idle"`
	Active       int           `json:"servers_active"`
	Clients      int           `json:"clients_active"` // routed here and not waiting
	Waiting      int           `json:"clients_waiting"`
	Lent         uint64        `json:"lent_total"`
	MaxWait      time.Duration `json:"max_wait_ns"`
	WaitTimeouts uint64        `json:"wait_timeouts_total"`
}

// NewPool returns an empty pool; connections are opened on demand.
func NewPool(key Key, cfg Config, connect Connector) *Pool {
	return &Pool{key: key, cfg: cfg.withDefaults(), connect: connect}
}

// Key returns the pool's key.
func (p *Pool) Key() Key { return p.key }

// Acquire lends a connection, opening one when the pool is below its size
// and waiting (up to WaitTimeout) otherwise.
func (p *Pool) Acquire(ctx context.Context) (*ServerConn, error) {
	start := time.Now()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if sc := p.popIdleLocked(); sc != nil {
			p.lent(start)
			p.mu.Unlock()
			if p.usable(sc) {
				return sc, nil
			}
			p.discard(sc)
			continue
		}
		if p.open < p.cfg.Size {
			p.open++
			p.lent(start)
			p.mu.Unlock()
			sc, err := p.connect(ctx)
			if err != nil {
				p.mu.Lock()
				p.open--
				p.wakeOne()
				p.mu.Unlock()
				return nil, err
			}
			sc.created = time.Now()
			sc.owner = p
			return sc, nil
		}
		ch := make(chan *ServerConn, 1)
		p.waiters = append(p.waiters, waiter{ch: ch})
		p.mu.Unlock()
		sc, err := p.wait(ctx, ch, start)
		if err != nil {
			return nil, err
		}
		if sc != nil {
			p.mu.Lock()
			p.lent(start)
			p.mu.Unlock()
			if p.usable(sc) {
				return sc, nil
			}
			p.discard(sc)
		}
		// nil: a slot was freed; loop to take it.
	}
}

// waiter is a borrower queued for a connection: Acquire's goroutine,
// parked on ch, or a Waiter of Lend.
type waiter struct {
	ch chan *ServerConn
	w  *Waiter
}

// hand gives the waiter sc, or nil: take a freed slot, or see the pool
// closed. A waiter is handed something once (its channel has room for it).
func (w waiter) hand(sc *ServerConn) {
	if w.ch != nil {
		w.ch <- sc
		return
	}
	w.w.To.Ready(sc)
}

// Waiter is a borrower that waits without a goroutine of its own: an
// event loop's session. The pool calls To.Ready, from whichever goroutine
// releases a connection, with the connection now lent to it, or with nil
// when it should call Acquire instead (a slot freed up for a new
// connection, or the pool closed). Ready must not block or call the pool.
type Waiter struct {
	To    Readier
	start time.Time
}

// Readier is told when a queued Waiter's turn comes. An interface rather
// than a func field: a session that is its own Readier costs no closure.
type Readier interface {
	Ready(*ServerConn)
}

// Lend lends an idle connection without waiting or dialing. When none is
// idle and the pool is full, it queues w (if not nil) and reports queued:
// w.To.Ready will be called once, unless CancelWait takes w back first. When
// none is idle and the pool could open one, it returns nothing: the
// caller opens one with Acquire, which may block. ErrClosed once closed.
func (p *Pool) Lend(w *Waiter) (sc *ServerConn, queued bool, err error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, false, ErrClosed
		}
		sc := p.popIdleLocked()
		if sc == nil {
			if w == nil || p.open < p.cfg.Size {
				p.mu.Unlock()
				return nil, false, nil
			}
			w.start = time.Now()
			p.waiters = append(p.waiters, waiter{w: w})
			p.mu.Unlock()
			return nil, true, nil
		}
		p.stats.Lent++
		p.mu.Unlock()
		if p.usable(sc) {
			return sc, false, nil
		}
		p.discard(sc)
	}
}

// CancelWait takes back a Waiter that Lend queued, counting a wait
// timeout if timedOut. It reports false when Ready has been or is being
// called.
func (p *Pool) CancelWait(w *Waiter, timedOut bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, q := range p.waiters {
		if q.w == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			if timedOut {
				p.stats.WaitTimeouts++
			}
			return true
		}
	}
	return false
}

func (p *Pool) wait(ctx context.Context, ch chan *ServerConn, start time.Time) (*ServerConn, error) {
	t := time.NewTimer(p.cfg.WaitTimeout - time.Since(start))
	defer t.Stop()
	select {
	case sc := <-ch:
		return sc, nil
	case <-t.C:
	case <-ctx.Done():
	}
	p.mu.Lock()
	for i, w := range p.waiters {
		if w.ch == ch {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			break
		}
	}
	p.stats.WaitTimeouts++
	p.mu.Unlock()
	// A hand-off may have raced with the timeout: give it back.
	select {
	case sc := <-ch:
		if sc != nil {
			p.Release(sc, true)
		} else {
			p.mu.Lock()
			p.wakeOne()
			p.mu.Unlock()
		}
	default:
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, ErrWaitTimeout
}

// lent records a successful or pending lend; p.mu held.
func (p *Pool) lent(start time.Time) {
	p.stats.Lent++
	if w := time.Since(start); w > p.stats.MaxWait {
		p.stats.MaxWait = w
	}
}

// usable checks an idle connection before it is lent.
func (p *Pool) usable(sc *ServerConn) bool { return alive(sc.Conn) }

// Release returns a lent connection. reusable is false when the borrower
// saw it fail or left it in a state another client must not inherit; such
// connections are closed.
func (p *Pool) Release(sc *ServerConn, reusable bool) {
	now := time.Now()
	if !reusable || now.Sub(sc.created) > p.cfg.Lifetime {
		p.discard(sc)
		return
	}
	sc.released = now
	sc.returns++
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.discard(sc)
		return
	}
	if w, ok := p.popWaiterLocked(); ok {
		if w.w != nil {
			p.lent(w.w.start) // Acquire's waiters count their own lend
		}
		p.mu.Unlock()
		w.hand(sc)
		return
	}
	p.idle = append(p.idle, sc)
	p.mu.Unlock()
}

func (p *Pool) discard(sc *ServerConn) {
	sc.Conn.Close()
	p.mu.Lock()
	p.open--
	p.wakeOne()
	p.mu.Unlock()
}

// wakeOne lets the first waiter open a connection in a freed slot; p.mu held.
func (p *Pool) wakeOne() {
	if p.closed {
		return
	}
	if w, ok := p.popWaiterLocked(); ok {
		w.hand(nil)
	}
}

// popIdleLocked takes the most recently used idle connection, nil if
// none; p.mu held.
func (p *Pool) popIdleLocked() *ServerConn {
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	sc := p.idle[n-1]
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	return sc
}

// popWaiterLocked takes the first waiter; p.mu held.
func (p *Pool) popWaiterLocked() (waiter, bool) {
	if len(p.waiters) == 0 {
		return waiter{}, false
	}
	w := p.waiters[0]
	p.waiters[0] = waiter{}
	p.waiters = p.waiters[1:]
	return w, true
}

// Close closes idle connections now and lent ones as they come back;
// waiters get ErrClosed.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	waiters := p.waiters
	p.waiters = nil
	p.mu.Unlock()
	for _, sc := range idle {
		sc.Conn.Close()
	}
	for _, w := range waiters {
		w.hand(nil) // nil: go and Acquire, which says ErrClosed
	}
}

// Reap closes connections idle longer than IdleTimeout, keeping MinSize.
func (p *Pool) Reap(now time.Time) {
	p.mu.Lock()
	var drop []*ServerConn
	keep := p.idle[:0]
	for _, sc := range p.idle {
		if p.open-len(drop) > p.cfg.MinSize && now.Sub(sc.released) > p.cfg.IdleTimeout {
			drop = append(drop, sc)
			continue
		}
		keep = append(keep, sc)
	}
	for i := len(keep); i < len(p.idle); i++ {
		p.idle[i] = nil
	}
	p.idle = keep
	p.open -= len(drop)
	p.mu.Unlock()
	for _, sc := range drop {
		sc.Conn.Close()
	}
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Key = p.key
	s.Open = p.open
	s.Idle = len(p.idle)
	s.Active = p.open - len(p.idle)
	s.Waiting = len(p.waiters)
	s.Clients = max(0, int(p.clients.Load())-s.Waiting)
	return s
}

// Attach counts a client session as routed to this pool; Detach undoes it.
func (p *Pool) Attach() { p.clients.Add(1) }

// Detach undoes Attach.
func (p *Pool) Detach() { p.clients.Add(-1) }
