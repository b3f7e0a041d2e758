package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgrouter/pgrouter/proxy/loop"
	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router"
)

// passLoop serves a passthrough session on the loop thread that accepted
// it, from its startup message to its end: it connects to the member the
// router chose, sends the client's startup, passes the authentication
// exchange through (reading the server's messages only to give the client
// a cancel key of the proxy's) and, once the server is ready, relays both
// directions as they come, following the server's message boundaries so
// that a kill is told to the client between two messages. No goroutine is
// made for the session and neither socket enters Go's poller, which is
// most of what a new connection cost the proxy (pgbench -C).
//
// What a thread cannot do goes to a goroutine, as if Go had accepted the
// client: TLS on either side, a wait for a primary, a host name to look up.
type passLoop struct {
	sess  *session
	st    *loopStartup
	dec   router.Decision
	in    sessionIntent
	sock  *loop.Socket // the server, until it fails or is closed
	phase passPhase
	// While the server's answer to an SSLRequest is awaited: the startup
	// to send after an N, and everything the client sent, from which a
	// goroutine starts over after an S.
	startup, replay []byte
	msg             []byte // a login message of the server's, not yet whole
	refused         bool   // the server's ErrorResponse reached the client
	probed          bool   // the server answered the SSLRequest: the link is made
	scan            frameScanner
	pid             uint32
	serverConns     prometheus.Gauge
}

type passPhase uint8

const (
	passProbing    passPhase = iota // SSLRequest sent (sslmode prefer), answer awaited
	passConnecting                  // startup sent, nothing heard yet
	passLogin                       // the authentication exchange
	passRelaying                    // the server is ready
)

// sslRequest asks a server whether it speaks TLS.
var sslRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// startPassthrough starts a passthrough session on the thread if it can:
// see passLoop. It reports false, having changed nothing, when a
// goroutine must.
func (st *loopStartup) startPassthrough(s *loop.Session, cfg *Config, p *startupPacket, n int) bool {
	sess := st.sess
	in, params, err := prepareStartup(p)
	if err != nil {
		return false
	}
	dec, ok := sess.routeNow(cfg, in)
	if !ok {
		return false // the goroutine waits for a primary, or says why not
	}
	probe, ok := sess.srv.plainLink(cfg.Server, dec.Member.Addr)
	if !ok {
		return false
	}
	network, target := pool.DialTarget(dec.Member.Addr)
	sock, err := loop.Connect(network, target)
	if err != nil {
		return false // the goroutine dials again, and says why it cannot
	}
	if !s.Attach(sock) {
		sock.Close()
		return false
	}
	h := &passLoop{sess: sess, st: st, dec: dec, in: in, sock: sock, scan: frameScanner{watch: serverWatch}}
	h.serverConns = sess.srv.metrics.serverConns.WithLabelValues(sess.ln.cfg.Name, dec.Member.Name)
	h.serverConns.Inc()
	startup := encodeStartup(p.version, params)
	st.over, st.pass = true, h
	st.rearm(cfg.Server.ConnectTimeout())
	s.SetHandler(h)
	if probe && network == "tcp" {
		h.phase = passProbing
		h.startup, h.replay = startup, bytes.Clone(st.buf)
		s.Hold(true) // the client has nothing to say before the server's first answer
		s.WriteServer(sslRequest)
		return true
	}
	h.phase = passConnecting
	s.WriteServer(startup)
	s.WriteServer(st.buf[n:])
	return true
}

// plainLink says whether a loop thread may make the link to a member at
// addr (no TLS to it), and whether it must ask first (sslmode prefer).
func (s *Server) plainLink(dc pool.DialConfig, addr string) (probe, ok bool) {
	if dc.Dialer != nil {
		return false, false
	}
	switch dc.SSLMode {
	case pool.SSLDisable:
		return false, true
	case "", pool.SSLPrefer:
		_, offered := s.tlsOffered.Load(addr)
		return true, !offered
	}
	return false, false
}

func (h *passLoop) FromClient(s *loop.Session, b []byte) {
	s.WriteServer(b)
	h.sess.ln.toServer.Add(float64(len(b)))
}

func (h *passLoop) FromServer(s *loop.Session, b []byte) {
	switch h.phase {
	case passRelaying:
		if err := h.scan.feed(b); err != nil {
			s.End(err)
			return
		}
		s.WriteClient(b)
		h.sess.ln.toClient.Add(float64(len(b)))
	case passProbing:
		h.answered(s, b)
	default:
		h.login(s, b)
	}
}

// answered acts on the server's answer to the SSLRequest: an N makes a
// plain link; anything else is a goroutine's to deal with, from the start.
func (h *passLoop) answered(s *loop.Session, b []byte) {
	h.probed = true
	if len(b) == 1 && b[0] == 'N' {
		h.phase = passConnecting
		s.WriteServer(h.startup)
		s.WriteServer(h.replay[getUint32(h.replay):]) // what the client sent after its startup
		h.startup, h.replay = nil, nil
		s.Hold(false)
		return
	}
	if b[0] == 'S' {
		h.sess.srv.tlsOffered.Store(h.dec.Member.Addr, struct{}{})
	}
	h.closeServer(s)
	h.st.buf, h.st.borrowed = h.replay, false
	h.st.toGoroutine(s)
}

// closeServer lets go of the server and closes it.
func (h *passLoop) closeServer(s *loop.Session) {
	s.Detach()
	h.sock.Close()
	h.sock = nil
	h.serverConns.Dec()
	h.serverConns = nil
}

// login passes the server's login messages to the client, whole, with a
// cancel key of the proxy's in place of the server's; at ReadyForQuery
// the session is relayed as it comes.
func (h *passLoop) login(s *loop.Session, b []byte) {
	if h.phase == passConnecting {
		h.phase = passLogin
		h.st.rearm(h.sess.srv.cfg.Load().StartupTimeout)
	}
	if len(h.msg) > 0 {
		h.msg = append(h.msg, b...)
		b = h.msg
	}
	buf := greetings.Get().(*[]byte)
	defer greetings.Put(buf)
	out := (*buf)[:0]
	defer func() { *buf = out[:0] }()
	for len(b) >= 5 {
		l := int(getUint32(b[1:]))
		if l < 4 || l > maxStartupMessage {
			h.fail(s, lostAtStartup(h.dec.Member.Name, fmt.Errorf("invalid message length %d", l)))
			return
		}
		if len(b) < 1+l {
			break
		}
		m := b[:1+l]
		b = b[1+l:]
		switch m[0] {
		case 'K':
			if l < 4+8 {
				h.fail(s, lostAtStartup(h.dec.Member.Name, fmt.Errorf("short BackendKeyData")))
				return
			}
			var err error
			h.pid = getUint32(m[5:])
			if out, err = h.sess.proxyKeyData(out, h.dec.Member.Addr, h.pid, bytes.Clone(m[9:])); err != nil {
				h.end(s, err)
				return
			}
			continue
		case 'E':
			h.refused = true
		case 'Z':
			// Anything after ReadyForQuery (nothing, as a rule) is the
			// session's already.
			out = append(append(out, m...), b...)
			if err := h.scan.feed(b); err != nil {
				s.End(err)
				return
			}
			b = nil
			h.ready(s)
			continue
		}
		out = append(out, m...)
	}
	h.keep(b)
	s.WriteClient(out)
}

// keep holds what is left of a login message until the rest comes.
func (h *passLoop) keep(b []byte) {
	switch {
	case len(b) == 0:
		h.msg = h.msg[:0]
	case len(h.msg) > 0 && &b[0] == &h.msg[0]:
	case len(h.msg) > 0:
		h.msg = append(h.msg[:0], b...)
	default:
		h.msg = bytes.Clone(b)
	}
}

// ready starts relaying: the login is over.
func (h *passLoop) ready(s *loop.Session) {
	h.phase = passRelaying
	h.msg = nil
	h.st.disarm()
	h.sess.ln.relayedOnLoop.Inc()
	h.sess.ln.startedOnLoop.Inc()
	h.sess.relayStarted(h.dec, h.in)
}

// fail ends the session with e, told to the client.
func (h *passLoop) fail(s *loop.Session, e *clientError) {
	if !h.refused {
		s.WriteClient(appendErrorResponse(nil, e))
	}
	s.End(e)
}

// end ends the session with err, told to the client if it is a
// clientError.
func (h *passLoop) end(s *loop.Session, err error) {
	if ce, ok := asClientError(err); ok {
		h.fail(s, ce)
		return
	}
	s.End(err)
}

// expired ends a session whose server did not answer within the dial
// timeout, or whose login took longer than StartupTimeout.
func (h *passLoop) expired(s *loop.Session) {
	switch h.phase {
	case passProbing, passConnecting:
		if h.probed { // connected: the server is silent
			h.fail(s, lostAtStartup(h.dec.Member.Name, os.ErrDeadlineExceeded))
			return
		}
		h.fail(s, h.sess.unreachable(h.dec.Member, os.ErrDeadlineExceeded))
	case passLogin:
		s.End(os.ErrDeadlineExceeded)
	}
}

func (h *passLoop) ServerFailed(s *loop.Session, sock *loop.Socket, err error) {
	sock.Close()
	h.sock = nil
	switch h.phase {
	case passRelaying:
		s.End(nil)
	case passProbing, passConnecting:
		if h.probed || errors.Is(err, io.EOF) {
			// The connection was made: the server left before a word.
			h.fail(s, lostAtStartup(h.dec.Member.Name, err))
			return
		}
		h.fail(s, h.sess.unreachable(h.dec.Member, err))
	default:
		if h.refused {
			s.End(nil) // the server said why
			return
		}
		h.fail(s, lostAtStartup(h.dec.Member.Name, err))
	}
}

func (h *passLoop) Farewell(*loop.Session) []byte {
	if e := h.sess.killed.Load(); e != nil && h.scan.atBoundary() && len(h.msg) == 0 {
		return appendErrorResponse(nil, e)
	}
	return nil
}

func (h *passLoop) Ended(_ *loop.Session, err error, server *loop.Socket, _ bool) {
	if h.st != nil {
		h.st.disarm()
	}
	if server != nil {
		server.Close()
	}
	h.sess.serverGone(h.serverConns, h.pid)
	h.sess.finish(err)
}
