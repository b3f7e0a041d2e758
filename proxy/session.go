package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/proxy/loop"
	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/topology"
)

// session is one client connection, from accept to close. A session
// without TLS on a TCP listener is served by the loop thread that
// accepted it, from its startup to its end (passLoop, txLoop, sessLoop),
// unless it needs what a thread cannot do; then a goroutine runs serve and
// owns client and server, and hands both sockets to a loop thread once
// the startup is done if neither has TLS; otherwise a second goroutine
// copies client bytes to the server. Once a loop thread has the session
// serve returns, and the thread calls finish when it ends: no goroutine
// waits for an idle client. In
// every case one writer at a time writes to the client (serve, or the
// loop thread), so an ErrorResponse the proxy injects can never
// interleave with a server message.
type session struct {
	id  uint64
	srv *Server
	ln  *listener
	// lg is the session's logger, built on first use by logger(); logMember
	// names the member once routed, for the logger's fields.
	lg        atomic.Pointer[zap.Logger]
	logMember atomic.Pointer[string]

	client net.Conn

	// Set once routed; read by the topology watcher under srv.mu.
	member   string
	role     topology.Role
	relaying bool

	// pooled is set for sessions of pooled listeners.
	pooled *pooled

	mu     sync.Mutex // guards server, onLoop and killed against kill
	server *pool.ServerConn
	onLoop interface{ Stop() } // the loop.Session while a loop thread serves the session
	killed atomic.Pointer[clientError]
	// standbySeq is the session's turn in the standbys' round-robin,
	// taken on its first read (0 before).
	standbySeq atomic.Uint64
	clientPK   []byte // the proxy's cancel key handed to the client
}

func (s *Server) newSession(l *listener, nc net.Conn) *session {
	id := s.nextID.Add(1)
	return &session{id: id, srv: s, ln: l, client: nc}
}

// debugLog returns the session's logger when debug level is on, else nil.
// Callers build their fields only when it is not nil: fields passed to a
// logger escape, so a call whose level is off would still allocate them,
// once per session for "session started". Most sessions log nothing else.
func (sess *session) debugLog() *zap.Logger {
	if !sess.srv.log.Core().Enabled(zap.DebugLevel) {
		return nil
	}
	return sess.logger()
}

// logger returns the session's logger, made on first use: zap's With
// copies an encoder with its buffer (about 1 KiB), too much to keep for
// every idle session when most never log.
func (sess *session) logger() *zap.Logger {
	if l := sess.lg.Load(); l != nil {
		return l
	}
	fields := []zap.Field{zap.Uint64("session", sess.id), zap.String("listener", sess.ln.cfg.Name)}
	if m := sess.logMember.Load(); m != nil {
		fields = append(fields, zap.String("member", *m))
	}
	l := sess.srv.log.With(fields...)
	if sess.lg.CompareAndSwap(nil, l) {
		return l
	}
	return sess.lg.Load()
}

// kill ends the session with e as the reason the client is told. It
// reports whether this call was the one that killed it.
func (sess *session) kill(e *clientError) bool {
	if !sess.killed.CompareAndSwap(nil, e) {
		return false
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.onLoop != nil {
		// The loop thread tells the client why (Farewell).
		sess.onLoop.Stop()
	} else if sess.server != nil {
		// Unblocks the serve goroutine's read; it tells the client why.
		sess.server.Close()
	} else if sess.client != nil {
		sess.client.Close()
	}
	return true
}

// errDetached is what run returns when a loop thread has taken the
// session over: the goroutine that ran the startup exits, and the thread
// calls finish when the session ends.
var errDetached = errors.New("the session goes on on a loop thread")

func (sess *session) serve(ctx context.Context) {
	if !sess.srv.track(sess) {
		sess.close()
		return
	}
	sess.runToEnd(ctx)
}

// runToEnd runs a tracked session and finishes it, unless a loop thread
// took it over.
func (sess *session) runToEnd(ctx context.Context) {
	if err := sess.run(ctx); err != errDetached {
		sess.finish(err)
	}
}

// finish ends a session that was tracked, whoever ran it last (its
// goroutine or a loop thread): err says why; nil, EOF or a closed conn
// when the client left.
func (sess *session) finish(err error) {
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		sess.ended(err)
	}
	sess.srv.untrack(sess)
	sess.close()
}

// close closes the client and gives back what accepting it took.
func (sess *session) close() {
	if sess.client != nil { // nil when a loop thread accepted it
		sess.client.Close()
	}
	sess.ln.open.Add(-1)
	sess.ln.conns.Dec()
	sess.srv.wg.Done()
}

// ended tells the client why its session ends, when the proxy ended it.
// Out of line, like everything an idle session's goroutine does once: the
// frames under a parked client loop decide whether its stack can shrink.
//
//go:noinline
func (sess *session) ended(err error) {
	if ce, ok := asClientError(err); ok {
		sess.srv.metrics.refused.WithLabelValues(sess.ln.cfg.Name, ce.Code).Inc()
		if sess.client != nil && !ce.Quiet { // else the loop thread told the client
			_ = sess.client.SetWriteDeadline(time.Now().Add(time.Second))
			writeClientError(sess.client, ce)
		}
		if l := sess.debugLog(); l != nil {
			l.Debug("session refused", zap.String("sqlstate", ce.Code), zap.String("reason", ce.Message))
		}
		return
	}
	if l := sess.debugLog(); l != nil {
		l.Debug("session ended", zap.Error(err))
	}
}

// run goes through the startup and relays until either side ends.
func (sess *session) run(ctx context.Context) error {
	cfg := sess.srv.cfg.Load()
	_ = sess.client.SetDeadline(time.Now().Add(cfg.StartupTimeout))
	p, err := sess.negotiate(cfg)
	if err != nil || p == nil {
		return err
	}
	if rc, ok := sess.client.(*replayConn); ok && len(rc.unread) == 0 {
		// What the loop thread read is consumed: the plain conn again,
		// which a loop thread can take over.
		sess.client = rc.Conn
	}
	intent, params, err := prepareStartup(p)
	if err != nil {
		return err
	}
	if sess.ln.cfg.PoolMode != "" && sess.ln.cfg.PoolMode != PoolPassthrough {
		return sess.runPooled(ctx, cfg, intent, params)
	}
	return sess.runPassthrough(ctx, cfg, p, intent, params)
}

// runPassthrough routes the session, logs in to the member as the client
// and relays. Out of line so that its frame is not under a pooled
// session's client loop (see startPooled).
//
//go:noinline
func (sess *session) runPassthrough(ctx context.Context, cfg *Config, p *startupPacket, intent sessionIntent, params []param) error {
	dec, err := sess.route(ctx, cfg, intent)
	if err != nil {
		return err
	}
	_ = sess.client.SetDeadline(time.Now().Add(cfg.StartupTimeout))
	sc, err := pool.Dial(ctx, dec.Member.Name, dec.Member.Addr, cfg.Server)
	if err != nil {
		return sess.unreachable(dec.Member, err)
	}
	if !sc.TLS {
		sess.srv.tlsOffered.Delete(dec.Member.Addr)
	}
	_ = sc.SetDeadline(time.Now().Add(cfg.StartupTimeout))
	sess.mu.Lock()
	sess.server = sc
	sess.mu.Unlock()
	if sess.killed.Load() != nil {
		sc.Close()
		return nil
	}
	serverConns := sess.srv.metrics.serverConns.WithLabelValues(sess.ln.cfg.Name, dec.Member.Name)
	serverConns.Inc()
	// end lets go of the server, unless a loop thread took the session
	// over (passLoop.Ended does the same then).
	end := func() {
		sc.Close()
		sess.serverGone(serverConns, sc.PID)
	}
	started, err := sess.startServer(ctx, cfg, sc, p.version, params)
	if started != sc {
		// A link made again without TLS: sc was closed.
		sc = started
		sess.mu.Lock()
		sess.server = sc
		sess.mu.Unlock()
	}
	if err != nil {
		end()
		return err
	}
	_ = sess.client.SetDeadline(time.Time{})
	_ = sc.SetDeadline(time.Time{})

	sess.relayStarted(dec, intent)
	err = sess.relay(serverConns)
	if err != errDetached {
		end()
	}
	return err
}

// serverGone forgets a passthrough session's closed server: its count in
// serverConns (nil: not counted) and the cancel key handed out for pid.
func (sess *session) serverGone(serverConns prometheus.Gauge, pid uint32) {
	if serverConns != nil {
		serverConns.Dec()
	}
	if sess.clientPK != nil {
		sess.srv.cancels.remove(pid, sess.clientPK)
	}
}

// unreachable is the client's error when the member it was routed to
// cannot be reached, logged once.
func (sess *session) unreachable(m topology.MemberState, err error) *clientError {
	sess.logger().Warn("cannot reach member", zap.String("member", m.Name), zap.Error(err))
	return &clientError{Severity: "FATAL", Code: codeConnectionFailure,
		Message: "pgrouter could not connect to " + m.Role.String() + " " + m.Name,
		Detail:  err.Error()}
}

// relayStarted records a passthrough session whose server is ready, on a
// goroutine or a loop thread.
func (sess *session) relayStarted(dec router.Decision, intent sessionIntent) {
	sess.srv.mu.Lock()
	sess.member, sess.role, sess.relaying = dec.Member.Name, dec.Role, true
	sess.srv.perMember[dec.Member.Name]++
	sess.srv.mu.Unlock()
	sess.srv.metrics.routes.WithLabelValues(sess.ln.cfg.Name, dec.Member.Name, dec.Role.String()).Inc()
	sess.logMember.Store(&dec.Member.Name)
	sess.lg.Store(nil)
	if l := sess.debugLog(); l != nil {
		l.Debug("session started", zap.String("user", intent.user), zap.String("database", intent.dbname),
			zap.Stringer("role", dec.Role), zap.Bool("fallback", dec.Fallback))
	}

	// The topology may have changed between routing and now; the watcher
	// only looks at relaying sessions, so check once here.
	if snap, _ := sess.srv.feed.Load(); snap != nil {
		if why, stale := staleReason(sess.member, sess.role, snap); stale {
			sess.srv.terminateStale(sess, why)
		}
	}
}

// negotiate handles encryption and cancel requests until the client sends
// its startup message. A nil packet with a nil error means the connection
// was a cancel request and is done.
func (sess *session) negotiate(cfg *Config) (*startupPacket, error) {
	encrypted := false
	for range 3 {
		p, err := readStartupPacket(sess.client, cfg.MaxStartupPacket)
		if err != nil {
			return nil, err
		}
		switch p.kind {
		case packetStartup:
			return &p, nil
		case packetCancel:
			sess.srv.forwardCancel(p.cancelPID, p.cancelKey, cfg, false)
			return nil, nil
		case packetGSSENCRequest:
			if encrypted {
				return nil, fatalf(codeProtocolViolation, "GSSENCRequest after encryption was established")
			}
			if _, err := sess.client.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case packetSSLRequest:
			if encrypted {
				return nil, fatalf(codeProtocolViolation, "SSLRequest after encryption was established")
			}
			if cfg.ClientTLS == nil {
				if _, err := sess.client.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := sess.client.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(sess.client, cfg.ClientTLS)
			if err := tc.Handshake(); err != nil {
				return nil, err
			}
			sess.client = tc
			encrypted = true
		}
	}
	return nil, fatalf(codeProtocolViolation, "too many encryption requests")
}

// route picks the member for the session, waiting up to PrimaryWait for a
// primary to appear when the session needs one and there is none.
func (sess *session) route(ctx context.Context, cfg *Config, in sessionIntent) (router.Decision, error) {
	ri := sess.intent(in)
	var timer *time.Timer
	start := time.Now()
	for {
		snap, changed := sess.srv.feed.Load()
		dec, err := router.Route(ri, snap, cfg.Policy)
		if err == nil {
			if in.standbyOnly && dec.Role != topology.RoleStandby {
				return dec, fatalf(codeCannotConnectNow, "no standby is available for target_session_attrs=standby")
			}
			if timer != nil {
				sess.srv.metrics.primaryWait.Observe(time.Since(start).Seconds())
			}
			return dec, nil
		}
		if !errors.Is(err, router.ErrNoPrimary) || cfg.PrimaryWait < 0 {
			return dec, routeError(err)
		}
		if timer == nil {
			timer = time.NewTimer(cfg.PrimaryWait)
			defer timer.Stop()
			if l := sess.debugLog(); l != nil {
				l.Debug("waiting for a primary", zap.Duration("max", cfg.PrimaryWait))
			}
		}
		select {
		case <-changed:
		case <-timer.C:
			sess.srv.metrics.primaryWait.Observe(time.Since(start).Seconds())
			return dec, &clientError{Severity: "FATAL", Code: codeCannotConnectNow,
				Message: "no primary is available",
				Detail:  "pgrouter waited " + cfg.PrimaryWait.String() + " for a primary; a failover may be under way or the cluster has no healthy primary.",
				Hint:    "Retry the connection."}
		case <-ctx.Done():
			return dec, fatalf(codeAdminShutdown, "terminating connection because pgrouter is shutting down")
		}
	}
}

func (sess *session) intent(in sessionIntent) router.Intent {
	ri := router.Intent{
		Listener: sess.ln.cfg.Kind,
		ReadOnly: in.readOnly,
		Sessions: sess.srv.sessionCount,
	}
	if in.primaryOnly && ri.Listener == router.ListenerAny {
		ri.ReadOnly = false
	}
	if ri.MayUseStandby() {
		// A session takes its turn once: its reads stay on one standby
		// while that standby is usable (a later read never sees older data
		// than an earlier one, and meets backends with warm caches), and
		// sessions spread over the standbys.
		seq := sess.standbySeq.Load()
		if seq == 0 {
			seq = sess.srv.seq.Add(1)
			sess.standbySeq.Store(seq)
		}
		ri.Seq = seq
	}
	return ri
}

// routeNow routes without waiting; any error means "take the slow way",
// where route waits for a primary and says what went wrong.
func (sess *session) routeNow(cfg *Config, in sessionIntent) (router.Decision, bool) {
	snap, _ := sess.srv.feed.Load()
	dec, err := router.Route(sess.intent(in), snap, cfg.Policy)
	if err != nil || (in.standbyOnly && dec.Role != topology.RoleStandby) {
		return dec, false
	}
	return dec, true
}

func routeError(err error) error {
	switch {
	case errors.Is(err, router.ErrNoPrimary):
		return fatalf(codeCannotConnectNow, "no primary is available")
	case errors.Is(err, router.ErrNoStandby):
		return &clientError{Severity: "FATAL", Code: codeCannotConnectNow,
			Message: "no standby is available", Detail: "Every standby is down, lagging beyond max-replica-lag, or not accepting connections, and fallback to the primary is off."}
	}
	return fatalf(codeCannotConnectNow, "cannot route session: %v", err)
}

// relay copies both directions until one side ends or the session is
// killed. The client-to-server copy runs on its own goroutine; this one
// copies server to client and is the only writer to the client. When a
// loop thread takes the session over, relay returns errDetached and the
// thread ends the session (see passLoop).
func (sess *session) relay(serverConns prometheus.Gauge) error {
	toServer, toClient := sess.ln.toServer, sess.ln.toClient
	if sess.srv.loop != nil {
		if handled, err := sess.relayOnLoop(serverConns); handled {
			return err
		}
	}
	sess.ln.relayedGoroutines.Inc()
	sc := sess.server
	errc := make(chan error, 1)
	go func() {
		err := copyToServer(sc, sess.client, toServer)
		// The client is gone or the server stopped reading: end the other
		// direction too.
		sc.Close()
		errc <- err
	}()
	scan := frameScanner{watch: serverWatch}
	err := copyToClient(sess.client, sc, scan.feed, toClient)
	if e := sess.killed.Load(); e != nil && scan.atBoundary() {
		_ = sess.client.SetWriteDeadline(time.Now().Add(time.Second))
		writeClientError(sess.client, e)
	}
	sess.client.Close()
	<-errc
	return err
}

// relayOnLoop hands the session's two sockets to a loop thread, where a
// passLoop relays them as it does a session that started there. It
// reports false, having changed nothing, when the sockets cannot leave
// Go's poller (TLS on either side), and the caller relays them itself.
func (sess *session) relayOnLoop(serverConns prometheus.Gauge) (handled bool, err error) {
	sc := sess.server
	h := &passLoop{sess: sess, phase: passRelaying, pid: sc.PID, serverConns: serverConns, scan: frameScanner{watch: serverWatch}}
	s, err := sess.srv.loop.ServeWith(sess.client, sc.Conn, h)
	if errors.Is(err, loop.ErrUnsupported) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	sess.ln.relayedOnLoop.Inc()
	sess.mu.Lock()
	sess.onLoop = s
	sess.mu.Unlock()
	if sess.killed.Load() != nil {
		s.Stop() // killed while the sockets changed hands
	}
	return true, errDetached
}

func copyToServer(dst net.Conn, src net.Conn, bytes prometheus.Counter) error {
	bp := clientBufPool.Get().(*[]byte)
	defer clientBufPool.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			bytes.Add(float64(n))
		}
		if err != nil {
			return err
		}
	}
}

// copyToClient forwards server output in whole chunks, each first given
// to follow, which tracks message boundaries (so the session knows where
// it may inject a message) and what else the relay needs.
func copyToClient(dst net.Conn, src net.Conn, follow func([]byte) error, bytes prometheus.Counter) error {
	bp := serverBufPool.Get().(*[]byte)
	defer serverBufPool.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if serr := follow(buf[:n]); serr != nil {
				return serr
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			bytes.Add(float64(n))
		}
		if err != nil {
			return err
		}
	}
}
