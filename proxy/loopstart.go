package proxy

import (
	"bytes"
	"context"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/proxy/auth"
	"github.com/pgrouter/pgrouter/proxy/loop"
	"github.com/pgrouter/pgrouter/router"
)

// acceptOnLoop has the loop threads accept l's clients when l is a TCP
// listener without TLS where a whole session can run on a thread: a
// passthrough listener (see passLoop), or a pooled one whose rules let
// some client in by trust, in transaction mode or in session mode without
// the statement split. It reports whether they do; otherwise acceptLoop
// serves l. Without a trust rule every pooled client would be handed to
// a goroutine for its password exchange, which costs more than being
// accepted by one (8 % of the connection rate with SCRAM, measured).
func (s *Server) acceptOnLoop(ctx context.Context, l *listener) bool {
	cfg := s.cfg.Load()
	if s.loop == nil || cfg.ClientTLS != nil || l.ln.Addr().Network() != "tcp" {
		return false
	}
	switch mode := l.cfg.PoolMode; {
	case mode == "" || mode == PoolPassthrough:
		// Passwords pass through to the server, on the thread too.
	case mode == PoolTransaction || mode == PoolSession && !l.cfg.Split:
		if cfg.Auth == nil || !cfg.Auth.HBA.Allows(auth.MethodTrust) {
			return false
		}
	default:
		return false
	}
	ls, err := s.loop.Listen(l.ln, func(ls *loop.Session, remote net.Addr) loop.Handler {
		return s.acceptedOnLoop(ctx, l, ls, remote)
	})
	if err != nil {
		s.log.Info("listener accepts on a goroutine", zap.String("listener", l.cfg.Name), zap.Error(err))
		return false
	}
	l.onLoop = ls
	return true
}

// acceptedOnLoop starts a session for a client a loop thread accepted.
func (s *Server) acceptedOnLoop(ctx context.Context, l *listener, ls *loop.Session, remote net.Addr) loop.Handler {
	if !s.admit(l) {
		ls.WriteClient(appendErrorResponse(nil, errTooManyClients))
		ls.End(nil)
		return hangingUp{}
	}
	sess := s.newSession(l, nil)
	sess.onLoop = ls // before track: kill may reach it from then on
	if !s.track(sess) {
		sess.close()
		ls.End(nil)
		return hangingUp{}
	}
	st := &loopStartup{sess: sess, ctx: ctx}
	if ta, ok := remote.(*net.TCPAddr); ok {
		st.remote = ta
	}
	st.timer = time.AfterFunc(s.cfg.Load().StartupTimeout, func() { ls.Post(st.expired(ls)) })
	return st
}

// loopStartup reads a client's startup on the loop thread that accepted
// it. A plain startup that a trust rule lets in, whose pool is logged in
// already, is greeted on the thread, which goes on relaying the session
// (txLoop): no goroutine is ever made for it, which halves what a new
// connection costs. Anything else (TLS, a password exchange, a pool's
// first login, a cancel request, bad input) goes to a goroutine, with the
// bytes read so far, exactly as if Go had accepted the client.
type loopStartup struct {
	sess     *session
	ctx      context.Context
	remote   *net.TCPAddr
	timer    *time.Timer
	buf      []byte // read and not consumed
	borrowed bool   // buf is the thread's read buffer, valid during FromClient only
	answered int    // encryption requests answered with 'N'
	over     bool   // handed over: to another handler or a goroutine
	pass     *passLoop
	// staleFires counts expiries that fired before a rearm or a disarm
	// stopped the timer: their posts come later and are not for now.
	staleFires int
}

func (st *loopStartup) FromClient(s *loop.Session, b []byte) {
	// Whole packets, the usual case, are read from the thread's buffer
	// where they lie; only a partial one is copied, to wait for the rest.
	if len(st.buf) == 0 {
		st.buf, st.borrowed = b, true
		defer st.keepPartial()
	} else {
		st.buf = append(st.buf, b...)
	}
	cfg := st.sess.srv.cfg.Load()
	for !st.over && len(st.buf) >= 4 {
		n := int(getUint32(st.buf))
		if n < 8 || n > cfg.MaxStartupPacket {
			st.toGoroutine(s) // which refuses it
			return
		}
		if len(st.buf) < n {
			return
		}
		p, err := parseStartupPacket(st.buf[4:n])
		switch {
		case err != nil:
			st.toGoroutine(s)
		case (p.kind == packetSSLRequest && cfg.ClientTLS == nil || p.kind == packetGSSENCRequest) && st.answered < 2:
			s.WriteClient([]byte{'N'})
			st.answered++
			st.buf = st.buf[n:]
		case p.kind == packetStartup && st.greet(s, cfg, &p, n):
		default:
			st.toGoroutine(s)
		}
	}
}

// keepPartial copies what is left of a borrowed buffer, which the thread
// reuses once FromClient returns.
func (st *loopStartup) keepPartial() {
	if st.borrowed {
		st.borrowed = false
		if st.over {
			st.buf = nil
		} else {
			st.buf = bytes.Clone(st.buf)
		}
	}
}

// greet serves a startup message of n bytes on the thread if it can: see
// loopStartup. It reports whether it did.
func (st *loopStartup) greet(s *loop.Session, cfg *Config, p *startupPacket, n int) bool {
	sess := st.sess
	mode := sess.ln.cfg.PoolMode
	if mode == "" || mode == PoolPassthrough {
		return st.startPassthrough(s, cfg, p, n)
	}
	in, params, err := prepareStartup(p)
	if err != nil || p.version != 3<<16 || checkPooledStartup(cfg, mode, params) != nil || st.remote == nil ||
		cfg.Auth.HBA.Match(in.dbname, in.user, st.remote.IP, false) != auth.MethodTrust {
		return false
	}
	dec, ok := sess.routeNow(cfg, in)
	if !ok {
		return false // the goroutine waits for a primary, or says why not
	}
	creds, err := auth.Authenticate(st.ctx, nil, in.user, auth.MethodTrust, auth.Secret{}, nil)
	if err != nil {
		return false
	}
	ps := sess.newPooled(cfg, mode, in, params, creds)
	e := ps.poolAt(cfg, dec)
	if mode == PoolSession {
		if !st.greetSession(s, cfg, ps, e, dec, n) {
			ps.leave()
			sess.pooled = nil
			return false
		}
		return true
	}
	initial := e.initial.Load()
	var out []byte
	if initial != nil && ps.onLoop(e) {
		buf := greetings.Get().(*[]byte)
		defer greetings.Put(buf)
		if out, err = ps.greeting((*buf)[:0], *initial, nil); out != nil {
			*buf = out[:0] // keep it if it grew
		}
	}
	if out == nil || err != nil {
		ps.leave()
		sess.pooled = nil
		return false
	}
	s.WriteClient(out) // which keeps no reference to it
	ps.begun()
	ps.loopPool = e.pool
	h := newTxLoop(st.ctx, ps, cfg, in)
	st.handOver(s, h)
	if rest := st.buf[n:]; len(rest) > 0 {
		h.FromClient(s, rest)
	}
	return true
}

// greetSession serves a session-mode startup on the thread when the
// client's pool has an idle server to lend it: the server is the
// session's from now on, and a sessLoop relays it. When the server's
// settings differ from those the client asked for (after a reset, its
// application_name), a SET fixes them, answered on the thread too; the
// greeting waits for it unless it cannot fail. It reports false, having given the server
// back, when the pool has none idle (a login, or a wait, is a goroutine's
// work) or the server cannot be relayed by the thread.
func (st *loopStartup) greetSession(s *loop.Session, cfg *Config, ps *pooled, e *poolEntry, dec router.Decision, n int) bool {
	if !ps.onLoop(e) || ps.sess.srv.Paused() {
		return false
	}
	sc, _, err := e.pool.Lend(nil)
	if err != nil || sc == nil {
		return false
	}
	sock, err := socketOf(sc)
	if err != nil {
		ps.release(sc, true)
		return false
	}
	set, stale, safe := ps.settingsQuery(sc) // before the greeting completes the settings
	greeting, err := ps.greeting(nil, sc.Initial, sc)
	if err != nil || !s.Attach(sock) {
		ps.release(sc, err != nil)
		return false
	}
	ps.mu.Lock()
	ps.server, ps.routedState = sc, dec.Member
	ps.mu.Unlock()
	h := newSessLoop(ps, cfg, sc, sock)
	h.attached = true
	st.handOver(s, h)
	rest := st.buf[n:]
	switch {
	case set != nil && !safe:
		h.settle(s, newPendingSettings(set, stale), greeting, bytes.Clone(rest))
		return true
	case set != nil:
		// A SET that cannot fail goes with the client's first message:
		// no round trip before the greeting, as with PgBouncer.
		h.settings = newPendingSettings(set, stale)
	}
	h.greet(s, greeting)
	if len(rest) > 0 {
		h.FromClient(s, rest)
	}
	return true
}

// handOver makes h the handler of a session greeted on the thread.
func (st *loopStartup) handOver(s *loop.Session, h loop.Handler) {
	st.timer.Stop()
	st.over = true
	s.SetHandler(h)
	st.sess.ln.relayedOnLoop.Inc()
	st.sess.ln.startedOnLoop.Inc()
}

// greetings recycles the buffers the startup's answer is built in on a
// loop thread: a new one per connection was a tenth of what pgbench -C
// allocates.
var greetings = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// toGoroutine hands the client back to Go and runs its session on a
// goroutine from what was read so far.
func (st *loopStartup) toGoroutine(s *loop.Session) {
	st.timer.Stop()
	st.over = true
	sess := st.sess
	c, err := s.Release()
	if err != nil {
		if l := sess.debugLog(); l != nil {
			l.Debug("cannot hand the client to a goroutine", zap.Error(err))
		}
		sess.mu.Lock()
		sess.onLoop = nil
		sess.mu.Unlock()
		sess.finish(nil)
		return
	}
	if len(st.buf) > 0 {
		if st.borrowed {
			st.buf, st.borrowed = bytes.Clone(st.buf), false
		}
		c = &replayConn{Conn: c, unread: st.buf}
	}
	sess.mu.Lock()
	sess.onLoop, sess.client = nil, c
	if sess.killed.Load() != nil {
		c.Close() // killed while it changed hands: the goroutine ends at once
	}
	sess.mu.Unlock()
	go sess.runToEnd(st.ctx)
}

// expired returns what ends a startup that took longer than
// StartupTimeout, as the deadline of a goroutine's startup does, or a
// passthrough login that took too long.
func (st *loopStartup) expired(s *loop.Session) func(alive bool) {
	return func(alive bool) {
		switch {
		case !alive:
		case st.staleFires > 0:
			st.staleFires--
		case !st.over:
			s.End(os.ErrDeadlineExceeded)
		case st.pass != nil:
			st.pass.expired(s)
		}
	}
}

// rearm gives the timer a new deadline, on the thread.
func (st *loopStartup) rearm(d time.Duration) {
	st.disarm()
	st.timer.Reset(d)
}

// disarm stops the timer, on the thread; an expiry already on its way is
// counted as stale.
func (st *loopStartup) disarm() {
	if !st.timer.Stop() {
		st.staleFires++
	}
}

func (st *loopStartup) FromServer(*loop.Session, []byte) {}

func (st *loopStartup) ServerFailed(_ *loop.Session, sock *loop.Socket, _ error) { sock.Close() }

func (st *loopStartup) Farewell(*loop.Session) []byte {
	if e := st.sess.killed.Load(); e != nil {
		return appendErrorResponse(nil, e)
	}
	return nil
}

// Ended finishes a session that ended during its startup.
func (st *loopStartup) Ended(_ *loop.Session, err error, _ *loop.Socket, _ bool) {
	st.timer.Stop()
	st.sess.finish(err)
}

// hangingUp serves a client that is refused and closed at once.
type hangingUp struct{}

func (hangingUp) FromClient(*loop.Session, []byte)                         {}
func (hangingUp) FromServer(*loop.Session, []byte)                         {}
func (hangingUp) ServerFailed(_ *loop.Session, sock *loop.Socket, _ error) { sock.Close() }
func (hangingUp) Farewell(*loop.Session) []byte                            { return nil }

// replayConn is a client conn whose first bytes were read by a loop
// thread: reads return those before reading the conn.
type replayConn struct {
	net.Conn
	unread []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.unread) > 0 {
		n := copy(b, c.unread)
		c.unread = c.unread[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
