package proxy

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgrouter/pgrouter/proxy/loop"
	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/topology"
)

// txLoop relays a transaction-mode session on a loop thread (package loop)
// instead of a client goroutine and a pump goroutine per lend: the thread
// reads the client's messages, lends the session an idle server, writes
// the transaction to it and gives it back at the ReadyForQuery that ends
// it, all without a goroutine hand-off. It runs the same protocol logic as
// the goroutine relay (consume, take, forget): only the driver differs.
// What may wait (a pool with no idle server, settings to apply, a pause,
// a failover) runs on a goroutine while the client is held, and hands the
// server back to the thread with Post.
//
// Every field is the thread's, except where noted.
type txLoop struct {
	ps   *pooled
	cfg  *Config
	in   sessionIntent
	ctx  context.Context // ends with the session: cancels a lend that waits
	slow sync.WaitGroup  // lends running on a goroutine

	s     *loop.Session // set on entry to each call from the thread
	reply func([]byte) error
	c     clientState
	buf   []byte // client bytes not consumed yet: a partial message, or messages waiting for a server
	out   []byte
	a     answer

	// The pool of the last lend, for the next one without a map lookup.
	pool       *pool.Pool
	poolMember string

	// A session waiting for a server of a full pool is queued there as a
	// Waiter instead of parking a goroutine; the pool hands it a server
	// (ready) and the thread takes it (takeHanded). waitDec is the route
	// of the lend that waits; waitTimer bounds it (query-wait-timeout).
	waiter    pool.Waiter
	waitDec   router.Decision
	waitTimer *time.Timer
	takeTask  func(alive bool)
	hmu       sync.Mutex // guards the hand-off below
	waitPool  *pool.Pool // where the session waits
	waitUntil time.Time  // a timer that fires before is from an earlier wait
	handed    *pool.ServerConn
	handedSet bool // Ready was called (handed nil: borrow with Acquire)
	timedOut  bool

	toClient, toServer prometheus.Counter
}

// onLoop says whether the session can be relayed by a loop thread: the
// loop exists, the session is in transaction mode without the statement
// split (whose retries and waits need goroutines), and its pool's links to
// servers are plain TCP. The client's own link is checked by Serve.
func (ps *pooled) onLoop(e *poolEntry) bool {
	return ps.sess.srv.loop != nil && ps.mode == PoolTransaction && ps.splitCfg == nil &&
		e != nil && e.links.Load() == linksPlain
}

// runOnLoop relays the session on a loop thread until it ends, then gives
// back or closes the server it holds. It reports false, having changed
// nothing, when the client's socket cannot leave Go's poller (TLS).
func (ps *pooled) runOnLoop(ctx context.Context, cfg *Config, in sessionIntent) (bool, error) {
	sess := ps.sess
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h := &txLoop{ps: ps, cfg: cfg, in: in, ctx: ctx, pool: ps.loopPool, poolMember: ps.member}
	h.reply = h.writeClient
	h.waiter.Ready = h.ready
	h.takeTask = h.takeHanded
	h.a.scan.watch = serverWatchPooled
	name := sess.ln.cfg.Name
	h.toClient = sess.srv.metrics.bytes.WithLabelValues(name, "to_client")
	h.toServer = sess.srv.metrics.bytes.WithLabelValues(name, "to_server")
	s, err := sess.srv.loop.Serve(sess.client, h)
	if errors.Is(err, loop.ErrUnsupported) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	sess.srv.metrics.relays.WithLabelValues(name, "loop").Inc()
	sess.mu.Lock()
	sess.onLoop = s
	sess.mu.Unlock()
	if sess.killed.Load() != nil {
		s.Stop() // killed while the socket changed hands
	}
	err, _, clean := s.Wait()
	cancel()
	h.slow.Wait()
	if h.waitTimer != nil {
		h.waitTimer.Stop()
		h.waitPool.CancelWait(&h.waiter, false) // if it ended waiting
	}
	ps.mu.Lock()
	held := ps.server
	ps.server = nil
	idle := held != nil && len(ps.fifo) == 0 && !ps.dirty && ps.txStatus != 'T' && ps.txStatus != 'E'
	ps.mu.Unlock()
	if held != nil {
		ps.release(held, clean && idle && ps.reset(held, cfg))
	}
	return true, err
}

// enter records the session on the thread's first call: the thread
// writes h.s once, so the goroutines that hand it a server may read it.
func (h *txLoop) enter(s *loop.Session) {
	if h.s == nil {
		h.s = s
	}
}

func (h *txLoop) writeClient(b []byte) error {
	h.s.WriteClient(b)
	return nil
}

// FromClient consumes the client's messages, lending a server when a
// transaction starts.
func (h *txLoop) FromClient(s *loop.Session, b []byte) {
	h.enter(s)
	data := b
	if len(h.buf) > 0 {
		h.buf = append(h.buf, b...)
		data = h.buf
	}
	h.keep(h.feed(data))
}

// keep saves what feed left for later.
func (h *txLoop) keep(rest []byte) {
	if len(rest) == 0 {
		if cap(h.buf) > clientReadBuf {
			h.buf = nil // an idle client keeps no big buffer
		} else {
			h.buf = h.buf[:0]
		}
		return
	}
	h.buf = append(h.buf[:0], rest...)
}

// feed consumes what it can of data and returns the rest.
func (h *txLoop) feed(data []byte) []byte {
	s, ps := h.s, h.ps
	msgs, out := data, h.out[:0]
	for {
		var step clientStep
		var err error
		msgs, out, step, err = ps.consume(&h.c, msgs, out, h.reply)
		if err != nil {
			h.fail(err)
			return nil
		}
		if step == stepTerminate {
			h.flush(out)
			s.End(nil)
			return nil
		}
		if step == stepNeedServer && h.lend() {
			continue
		}
		break
	}
	h.flush(out)
	return msgs
}

func (h *txLoop) flush(out []byte) {
	if len(out) > 0 {
		h.s.WriteServer(out)
		h.toServer.Add(float64(len(out)))
	}
	if cap(out) > 4*clientReadBuf {
		out = nil
	}
	h.out = out[:0]
}

// fail ends the session with err, telling the client why.
func (h *txLoop) fail(err error) {
	if ce, ok := asClientError(err); ok {
		h.s.WriteClient(appendErrorResponse(nil, ce))
	}
	h.s.End(err)
}

// lend attaches a server now when one is idle in the session's pool and
// already has the session's settings. When the pool is full it queues the
// session there and holds the client until a server is handed over
// (takeHanded); anything else (a first lend, a dial, settings to apply, a
// pause, no primary) lends on a goroutine. It reports whether a server is
// attached.
func (h *txLoop) lend() bool {
	ps := h.ps
	var sc *pool.ServerConn
	dec, ok := ps.sess.routeNow(h.cfg, h.in)
	if ok && h.pool != nil && h.poolMember == dec.Member.Name && !ps.sess.srv.Paused() {
		var queued bool
		sc, queued, _ = h.pool.Lend(&h.waiter)
		if queued {
			h.waitDec = dec
			h.hmu.Lock()
			h.waitPool, h.waitUntil = h.pool, time.Now().Add(h.cfg.Pool.WaitTimeout)
			h.hmu.Unlock()
			h.s.Hold(true)
			if h.waitTimer == nil {
				h.waitTimer = time.AfterFunc(h.cfg.Pool.WaitTimeout, h.waitExpired)
			} else {
				h.waitTimer.Reset(h.cfg.Pool.WaitTimeout)
			}
			return false
		}
	}
	if sc != nil && h.attach(sc, dec) {
		return true
	}
	h.lendSlowly(sc, dec)
	return false
}

// attach makes sc, lent by the pool, the session's server when it has
// the session's settings; false leaves sc to lendSlowly.
func (h *txLoop) attach(sc *pool.ServerConn, dec router.Decision) bool {
	if sc.SettingsFP != h.ps.desiredFP {
		return false
	}
	sock, err := socketOf(sc)
	if err != nil || !h.s.Attach(sock) {
		return false
	}
	h.held(sc, dec.Role, dec.Member)
	return true
}

// ready is the pool handing the waiting session a server (or nil: borrow
// with Acquire), on whichever goroutine released it.
func (h *txLoop) ready(sc *pool.ServerConn) {
	h.hmu.Lock()
	h.handed, h.handedSet = sc, true
	h.hmu.Unlock()
	h.s.Post(h.takeTask)
}

// waitExpired ends a wait that lasted query-wait-timeout.
func (h *txLoop) waitExpired() {
	h.hmu.Lock()
	p, until := h.waitPool, h.waitUntil
	h.hmu.Unlock()
	if time.Now().Before(until) || !p.CancelWait(&h.waiter, true) {
		return // an earlier wait's timer, or a server is being handed over
	}
	h.hmu.Lock()
	h.timedOut = true
	h.hmu.Unlock()
	h.s.Post(h.takeTask)
}

// takeHanded resumes a session that waited for a server, on its thread.
func (h *txLoop) takeHanded(alive bool) {
	h.hmu.Lock()
	sc, handed, timedOut := h.handed, h.handedSet, h.timedOut
	h.handed, h.handedSet, h.timedOut = nil, false, false
	h.hmu.Unlock()
	if !alive {
		if sc != nil {
			h.ps.release(sc, true) // nothing was written to it
		}
		return
	}
	if !handed && !timedOut {
		return
	}
	h.waitTimer.Stop()
	h.s.Hold(false)
	if timedOut {
		if err := h.c.fail(h.ps.waitTimeout(h.waitDec.Member.Name)); err != nil {
			h.fail(err)
			return
		}
	} else if sc == nil || !h.attach(sc, h.waitDec) {
		h.lendSlowly(sc, h.waitDec)
		return
	}
	h.keep(h.feed(h.buf))
}

// held makes sc the session's server.
func (h *txLoop) held(sc *pool.ServerConn, role topology.Role, m topology.MemberState) {
	ps := h.ps
	h.pool, h.poolMember = sc.Pool(), sc.Member
	ps.mu.Lock()
	ps.server = sc
	ps.member, ps.routed, ps.routedState = sc.Member, role, m
	ps.attachLocked(sc.Pool())
	ps.mu.Unlock()
	h.a = answer{scan: frameScanner{watch: serverWatchPooled}}
}

// lendSlowly lends on a goroutine (applying the session's settings to sc
// if it has one, borrowing otherwise) and resumes the session on its
// thread with the result.
func (h *txLoop) lendSlowly(sc *pool.ServerConn, dec router.Decision) {
	s, ps := h.s, h.ps
	s.Hold(true)
	h.slow.Add(1)
	go func() {
		defer h.slow.Done()
		if sc != nil {
			if err := ps.applySettings(sc); err != nil {
				ps.release(sc, false)
				sc = nil
			}
		}
		var err error
		role, m := dec.Role, dec.Member
		if sc == nil {
			sc, err = ps.acquire(h.ctx, h.cfg, h.in)
			ps.mu.Lock()
			role, m = ps.routed, ps.routedState
			ps.mu.Unlock()
		}
		var sock *loop.Socket
		if err == nil {
			if sock, err = socketOf(sc); err != nil {
				ps.release(sc, true)
				err = &clientError{Severity: "ERROR", Code: codeConnectionFailure,
					Message: "pgrouter could not relay the server connection", Detail: err.Error()}
			}
		}
		s.Post(func(alive bool) {
			if !alive {
				if err == nil {
					ps.release(sc, true) // nothing was written to it
				}
				return
			}
			s.Hold(false)
			if err == nil && !s.Attach(sock) {
				ps.release(sc, false)
				err = &clientError{Severity: "ERROR", Code: codeConnectionFailure,
					Message: "the server connection closed before the transaction could start"}
			}
			if err != nil {
				if err := h.c.fail(err); err != nil {
					h.fail(err)
					return
				}
			} else {
				h.held(sc, role, m)
			}
			h.keep(h.feed(h.buf))
		})
	}()
}

// socketOf moves a server connection out of Go's poller for the loop,
// the first time a loop session borrows it.
func socketOf(sc *pool.ServerConn) (*loop.Socket, error) {
	if s, ok := sc.Conn.(*loop.Socket); ok {
		return s, nil
	}
	s, err := loop.Detach(sc.Conn)
	if err != nil {
		return nil, err
	}
	sc.Conn = s
	return s, nil
}

// FromServer forwards the held server's answer and gives the server back
// at the end of the transaction.
func (h *txLoop) FromServer(s *loop.Session, b []byte) {
	h.enter(s)
	ps := h.ps
	sc := ps.heldServer()
	if sc == nil {
		return
	}
	out, released, err := ps.take(&h.a, sc, b, h.out[:0])
	if err != nil {
		s.Detach()
		h.lost(sc, err)
		return
	}
	if len(out) > 0 {
		s.WriteClient(out)
		h.toClient.Add(float64(len(out)))
		h.a.flushed = true
	}
	h.out = out[:0]
	if released {
		ps.release(sc, s.Detach())
		if len(h.buf) > 0 {
			h.keep(h.feed(h.buf))
		}
	}
}

// ServerFailed tells the client its transaction was lost (or, if the
// session depended on that server, ends the session).
func (h *txLoop) ServerFailed(s *loop.Session, _ *loop.Socket, err error) {
	h.enter(s)
	if sc := h.ps.heldServer(); sc != nil {
		h.lost(sc, err)
	}
}

func (h *txLoop) lost(sc *pool.ServerConn, err error) {
	resp, fatal := h.ps.forget(sc, err)
	h.a = answer{scan: frameScanner{watch: serverWatchPooled}}
	if fatal != nil {
		h.fail(fatal)
		return
	}
	h.s.WriteClient(resp)
}

// Farewell tells a client whose session the proxy ended why, unless the
// client is in the middle of a server message.
func (h *txLoop) Farewell(*loop.Session) []byte {
	if e := h.ps.sess.killed.Load(); e != nil && h.a.scan.atBoundary() {
		return appendErrorResponse(nil, e)
	}
	return nil
}
