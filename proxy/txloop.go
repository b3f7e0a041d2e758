package proxy

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgrouter/pgrouter/proxy/loop"
	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/router/classify"
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
	ps  *pooled
	cfg *Config
	in  sessionIntent
	// ctx ends with the session and cancels a lend that waits. It is made
	// by the first lend on a goroutine (most sessions never need one),
	// on the thread, before that goroutine starts.
	parent context.Context
	ctx    context.Context
	cancel context.CancelFunc
	// Lends running on a goroutine: slowRunning counts them for the
	// thread, which starts them, without waiting.
	slow        sync.WaitGroup
	slowRunning atomic.Int32

	s   *loop.Session // set on entry to each call from the thread
	c   clientState
	buf []byte // client bytes not consumed yet: a partial message, or messages waiting for a server
	out []byte
	a   answer
	// settings is the SET that gives the held server the client's
	// application_name ahead of its transaction (attach), until answered.
	settings *pendingSettings

	// The pools of the last lends by member (one without the split, one
	// per member with it), for the next lend without the pool map.
	pools [4]memberPool
	next  int // the entry of pools to replace

	// A session waiting for a server of a full pool is queued there as a
	// Waiter instead of parking a goroutine; the pool hands it a server
	// (ready) and the thread takes it (takeHanded). waitDec is the route
	// of the lend that waits; waitTimer bounds it (query-wait-timeout).
	waiter    pool.Waiter
	waitDec   router.Decision
	waitWrite bool // the split routed the waiting transaction as a write
	waitTimer *time.Timer
	takeTask  func(alive bool)
	hmu       sync.Mutex // guards the hand-off below
	waitPool  *pool.Pool // where the session waits
	waitUntil time.Time  // a timer that fires before is from an earlier wait
	handed    *pool.ServerConn
	handedSet bool // Ready was called (handed nil: borrow with Acquire)
	timedOut  bool

	toClient, toServer prometheus.Counter
	lastRoute          routeCount // see countRoute
}

type memberPool struct {
	member string
	pool   *pool.Pool
}

// poolOf returns the cached pool of member, nil if none.
func (h *txLoop) poolOf(member string) *pool.Pool {
	for _, e := range h.pools {
		if e.pool != nil && e.member == member {
			return e.pool
		}
	}
	return nil
}

func (h *txLoop) remember(member string, p *pool.Pool) {
	if h.poolOf(member) == p {
		return
	}
	for i, e := range h.pools {
		if e.member == member {
			h.pools[i].pool = p
			return
		}
	}
	h.pools[h.next] = memberPool{member, p}
	h.next = (h.next + 1) % len(h.pools)
}

// onLoop says whether the session's servers from pool e can be relayed by
// a loop thread: the loop exists and the pool's links to servers are plain
// TCP. The client's own link is checked by Serve.
func (ps *pooled) onLoop(e *poolEntry) bool {
	return ps.sess.srv.loop != nil && e != nil && e.links.Load() == linksPlain
}

// runOnLoop hands the session to a loop thread, which relays it until it
// ends and then finishes it (Ended): no goroutine waits for an idle
// client. It reports false, having changed nothing, when the client's
// socket cannot leave Go's poller (TLS); errDetached once the thread has
// the session.
func (ps *pooled) runOnLoop(ctx context.Context, cfg *Config, in sessionIntent) (bool, error) {
	sess := ps.sess
	var h loop.Handler
	var tx *txLoop
	if ps.mode == PoolSession {
		sc := ps.heldServer()
		sock, err := socketOf(sc)
		if err != nil {
			return false, nil // TLS to the server: the goroutines relay it
		}
		h = newSessLoop(ps, cfg, sc, sock)
	} else {
		tx = newTxLoop(ctx, ps, cfg, in)
		h = tx
	}
	s, err := sess.srv.loop.Serve(sess.client, h)
	if err != nil {
		if tx != nil {
			tx.stop()
		}
		return !errors.Is(err, loop.ErrUnsupported), err
	}
	if sh, ok := h.(*sessLoop); ok {
		// Before the client's first bytes if it can, so that the server
		// is watched from the start.
		s.Post(func(alive bool) {
			if alive {
				sh.attach(s)
			}
		})
	}
	sess.ln.relayedOnLoop.Inc()
	sess.mu.Lock()
	sess.onLoop = s
	sess.mu.Unlock()
	if sess.killed.Load() != nil {
		s.Stop() // killed while the socket changed hands
	}
	return true, errDetached
}

func newTxLoop(ctx context.Context, ps *pooled, cfg *Config, in sessionIntent) *txLoop {
	h := &txLoop{ps: ps, cfg: cfg, in: in, parent: ctx}
	h.pools[0], h.next = memberPool{ps.member, ps.loopPool}, 1
	h.waiter.To = h
	h.takeTask = h.takeHanded
	h.a.scan.watch = serverWatchPooled
	h.toClient, h.toServer = ps.sess.ln.toClient, ps.sess.ln.toServer
	return h
}

// Ended finishes the session on its thread when nothing it must wait for
// is left: no lend running on a goroutine, and no reset query to run on
// the server it holds (a pinned session's). Otherwise a goroutine does.
func (h *txLoop) Ended(_ *loop.Session, err error, _ *loop.Socket, clean bool) {
	if h.slowRunning.Load() == 0 && (h.ps.pinned == "" || h.ps.heldServer() == nil) {
		h.finish(err, clean)
		return
	}
	go func() {
		h.stop()
		h.slow.Wait()
		h.finish(err, clean)
	}()
}

// stop cancels the lends still running on goroutines, if any ever ran.
func (h *txLoop) stop() {
	if h.cancel != nil {
		h.cancel()
	}
}

// finish gives back or closes the server the session held and ends the
// session.
func (h *txLoop) finish(err error, clean bool) {
	h.stop()
	if h.waitTimer != nil {
		h.waitTimer.Stop()
		h.waitPool.CancelWait(&h.waiter, false) // if it ended waiting
	}
	ps := h.ps
	ps.mu.Lock()
	idle := !ps.inFlightLocked() && h.settings == nil // no answer left unread
	ps.mu.Unlock()
	if held := ps.takeServer(); held != nil {
		ps.release(held, clean && idle && ps.reset(held, h.cfg))
	}
	ps.leave()
	ps.sess.finish(err)
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
		msgs, out, step, err = ps.consume(&h.c, msgs, out, h)
		if err != nil {
			h.fail(err)
			return nil
		}
		if step == stepTerminate {
			h.flush(out)
			s.End(nil)
			return nil
		}
		if step == stepNeedServer && h.lend(msgs) {
			continue
		}
		break
	}
	h.flush(out)
	return msgs
}

func (h *txLoop) flush(out []byte) {
	if len(out) > 0 {
		h.s.WriteServer(h.settings.with(out)) // attach's SET, if any, goes with the transaction
		h.toServer.Add(float64(len(out)))
	}
	if cap(out) > 4*clientReadBuf {
		out = nil
	}
	h.out = out[:0]
}

// fail ends the session with err, telling the client why.
func (h *txLoop) fail(err error) {
	if ce, ok := asClientError(err); ok && !ce.Quiet {
		h.s.WriteClient(appendErrorResponse(nil, ce))
	}
	h.s.End(err)
}

// lend attaches a server now when one is idle in the session's pool and
// already has the session's settings. When the pool is full it queues the
// session there and holds the client until a server is handed over
// (takeHanded); anything else (a first lend, a dial, settings to apply, a
// pause, no primary, a read that must wait for the session's last write)
// lends on a goroutine. msgs are the client's messages from the one that
// needs the server. It reports whether a server is attached.
func (h *txLoop) lend(msgs []byte) bool {
	ps := h.ps
	in, wrote := h.in, false
	var route classify.Route
	var reason string
	var need uint64 // the LSN a read must see
	if ps.splitCfg != nil {
		route, reason = ps.splitRoute(msgs, h.cfg)
		in, wrote = splitIntent(h.in, route), route == classify.Write
		if route == classify.Read && ps.splitCfg.ReadYourWrites {
			need = ps.readNeed()
		}
	}
	var sc *pool.ServerConn
	dec, ok := ps.sess.routeNow(h.cfg, in)
	if need > 0 && !(ok && dec.Role == topology.RoleStandby && ps.sess.srv.replayedAtLeast(dec.Member, need)) {
		// A read after the session's own write may go only to a standby
		// that has replayed it, which may take a query to find out: the
		// slow way.
		h.lendSlowly(nil, router.Decision{}, msgs)
		return false
	}
	var p *pool.Pool
	if ok {
		if p = h.poolOf(dec.Member.Name); p == nil {
			p = ps.entryAt(h.cfg, dec).pool
			h.remember(dec.Member.Name, p)
		}
	}
	paused := ps.sess.srv.Paused()
	if ok && !paused {
		var queued bool
		sc, queued, _ = p.Lend(&h.waiter)
		if queued || (sc != nil && sc.SettingsFP == ps.desiredFP) {
			// Counted here when the lend is decided on the thread; the
			// slow way counts its own.
			h.countRoute(route, reason)
		}
		if queued {
			h.waitDec, h.waitWrite = dec, wrote
			h.hmu.Lock()
			h.waitPool, h.waitUntil = p, time.Now().Add(h.cfg.Pool.WaitTimeout)
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
	if sc != nil && h.attach(sc, dec, wrote, msgs) {
		return true
	}
	h.lendSlowly(sc, dec, msgs)
	return false
}

func (h *txLoop) countRoute(route classify.Route, reason string) {
	if h.ps.splitCfg == nil {
		return
	}
	// A session mostly repeats its last decision: its counter is kept
	// rather than looked up by labels for every transaction.
	if c := &h.lastRoute; c.counter == nil || c.route != route || c.reason != reason {
		*c = routeCount{route, reason, h.ps.sess.srv.metrics.splitRoutes.WithLabelValues(routeName(route), reason)}
	}
	h.lastRoute.counter.Inc()
}

type routeCount struct {
	route   classify.Route
	reason  string
	counter prometheus.Counter
}

// attach makes sc, lent by the pool, the session's server when it has
// the session's settings; false leaves sc to lendSlowly.
func (h *txLoop) attach(sc *pool.ServerConn, dec router.Decision, wrote bool, msgs []byte) bool {
	var set []byte
	var stale []string
	if sc.SettingsFP != h.ps.desiredFP {
		// A SET that cannot fail (application_name: clients of one pool
		// that name themselves differently) goes ahead of the
		// transaction, as PgBouncer does, its answer taken out of the
		// server's stream; any other waits for its answer on a goroutine.
		var safe bool
		if set, stale, safe = h.ps.settingsQuery(sc); set != nil && !safe {
			return false
		}
	}
	sock, err := socketOf(sc)
	if err != nil || !h.s.Attach(sock) {
		return false
	}
	h.held(sc, dec.Role, dec.Member)
	if set != nil {
		h.settings = newPendingSettings(set, stale)
	}
	if h.ps.splitCfg != nil {
		h.ps.splitLent(wrote, dec.Role, msgs)
	}
	return true
}

// Ready is the pool handing the waiting session a server (or nil: borrow
// with Acquire), on whichever goroutine released it (pool.Readier).
func (h *txLoop) Ready(sc *pool.ServerConn) {
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
	} else if sc == nil {
		// A slot freed up, or the pool closed (a role change): route again.
		h.lendSlowly(nil, router.Decision{}, h.buf)
		return
	} else if !h.attach(sc, h.waitDec, h.waitWrite, h.buf) {
		h.lendSlowly(sc, h.waitDec, h.buf)
		return
	}
	h.resume()
}

// held makes sc the session's server.
func (h *txLoop) held(sc *pool.ServerConn, role topology.Role, m topology.MemberState) {
	ps := h.ps
	h.remember(sc.Member, sc.Pool())
	ps.mu.Lock()
	ps.server = sc
	ps.member, ps.routed, ps.routedState = sc.Member, role, m
	ps.attachLocked(sc.Pool())
	ps.mu.Unlock()
	h.a = answer{scan: frameScanner{watch: serverWatchPooled}}
	h.settings = nil
}

// lendSlowly lends on a goroutine (applying the session's settings to sc
// if it has one, borrowing otherwise) and resumes the session on its
// thread with the result. dec is where sc comes from. Without sc the slow
// way routes again: a session's route is the same each time (its standby
// turn is taken once), unless the topology changed meanwhile.
func (h *txLoop) lendSlowly(sc *pool.ServerConn, dec router.Decision, msgs []byte) {
	ps := h.ps
	if ps.splitCfg != nil {
		// The split's slow way decides again, waiting where it must.
		if sc != nil {
			ps.release(sc, true)
			sc = nil
		}
		msgs = append([]byte(nil), msgs...)
	}
	var sock *loop.Socket
	var err error
	role, m := dec.Role, dec.Member
	if h.ctx == nil {
		h.ctx, h.cancel = context.WithCancel(h.parent)
	}
	h.offThread(func() {
		if sc != nil {
			if err := ps.applySettings(sc); err != nil {
				ps.release(sc, false)
				sc = nil
			}
		}
		if sc == nil {
			if ps.splitCfg != nil {
				sc, err = ps.acquireSplit(h.ctx, h.cfg, h.in, msgs)
			} else {
				sc, err = ps.acquire(h.ctx, h.cfg, h.in)
			}
			ps.mu.Lock()
			role, m = ps.routed, ps.routedState
			ps.mu.Unlock()
		}
		if err == nil {
			if sock, err = socketOf(sc); err != nil {
				ps.release(sc, true)
				err = &clientError{Severity: "ERROR", Code: codeConnectionFailure,
					Message: "pgrouter could not relay the server connection", Detail: err.Error()}
			}
		}
	}, func(alive bool) {
		if !alive {
			if err == nil {
				ps.release(sc, true) // nothing was written to it
			}
			return
		}
		if err == nil && !h.s.Attach(sock) {
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
		h.resume()
	})
}

// offThread runs work, which may block, on a goroutine while the client
// is held, then back on the thread: back(alive), the client read again;
// alive is false when the session ended meanwhile.
func (h *txLoop) offThread(work func(), back func(alive bool)) {
	s := h.s
	s.Hold(true)
	h.slow.Add(1)
	h.slowRunning.Add(1)
	go func() {
		defer h.slow.Done()
		defer h.slowRunning.Add(-1)
		work()
		s.Post(func(alive bool) {
			if alive {
				s.Hold(false)
			}
			back(alive)
		})
	}()
}

// resume consumes what the client sent while the session waited.
func (h *txLoop) resume() { h.keep(h.feed(h.buf)) }

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
	if h.settings.sent() {
		if b = h.settled(sc, b); len(b) == 0 {
			return
		}
	}
	out, released, err := ps.take(&h.a, sc, b, h.out[:0])
	if err != nil {
		if _, ok := err.(*serverFatal); ok && len(out) > 0 {
			s.WriteClient(out)
		}
		s.Detach()
		h.lost(sc, err)
		return
	}
	// A write's LSN goes to the client before the ReadyForQuery that ends
	// it: the client may hand it to another session (pgrouter.min_lsn) as
	// soon as its commit returns.
	var done chan struct{} // a write ended: its LSN is learnt before the client hears of it
	if released && !h.a.retry && ps.splitCfg != nil {
		done = ps.pendingLSN()
	}
	var held []byte
	if done != nil {
		held = append(held, out...)
	} else if len(out) > 0 {
		s.WriteClient(out)
		h.toClient.Add(float64(len(out)))
		h.a.flushed = true
	}
	h.out = out[:0]
	if !released {
		return
	}
	switch {
	case h.a.retry:
		// A standby refused the read as a write (25006): the client saw
		// none of it; it runs again on the primary.
		ps.release(sc, s.Detach())
		h.afterRelease(ps.rerunOnPrimary)
		return
	case done != nil:
		// Learn the write's LSN on that server before the client can
		// send a read that must see it.
		s.Detach()
		h.afterRelease(func() (*pool.ServerConn, []byte, error) {
			status, err := ps.learnLastWrite(sc, done)
			ps.release(sc, err == nil)
			h.toClient.Add(float64(len(held)))
			return nil, append(status, held...), nil
		})
		return
	}
	ps.release(sc, s.Detach())
	if len(h.buf) > 0 {
		h.resume()
	}
}

// settled takes the answer to attach's SET out of the server's bytes and
// returns what follows it: the answer to the client's transaction.
func (h *txLoop) settled(sc *pool.ServerConn, b []byte) []byte {
	rest, done, err := h.settings.take(h.ps, sc, b)
	if err != nil {
		h.s.Detach()
		h.lost(sc, err)
		return nil
	}
	if done {
		h.settings = nil
	}
	return rest
}

// afterRelease runs step, which may block, on a goroutine while the client
// is held, then resumes the session on its thread: it writes what step
// returns for the client and attaches the server step made the session's
// own (a statement running again on the primary), if any.
func (h *txLoop) afterRelease(step func() (*pool.ServerConn, []byte, error)) {
	ps := h.ps
	var sc *pool.ServerConn
	var resp []byte
	var sock *loop.Socket
	var err error
	h.offThread(func() {
		sc, resp, err = step()
		if sc != nil && err == nil {
			sock, err = socketOf(sc)
		}
	}, func(alive bool) {
		if !alive {
			// The session ended: whoever takes the server out of it
			// (here or runOnLoop) gives it back, once.
			ps.mu.Lock()
			mine := sc != nil && ps.server == sc
			if mine {
				ps.server = nil
			}
			ps.mu.Unlock()
			if mine {
				ps.release(sc, false) // a statement was sent on it
			}
			return
		}
		h.s.WriteClient(resp)
		if sc != nil {
			if err != nil || !h.s.Attach(sock) {
				if err == nil {
					err = errors.New("the server connection closed")
				}
				h.lost(sc, err)
			} else {
				h.remember(sc.Member, sc.Pool())
				h.a = answer{scan: frameScanner{watch: serverWatchPooled}}
			}
		}
		h.resume()
	})
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
	h.settings = nil
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
