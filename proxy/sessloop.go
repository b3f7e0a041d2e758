package proxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgrouter/pgrouter/proxy/loop"
	"github.com/pgrouter/pgrouter/proxy/pool"
)

// sessLoop relays a session-mode session on a loop thread. The client
// keeps the server it was lent at its startup until it leaves, so nothing
// is carried between servers and the relay forwards bytes both ways as
// the passthrough relay does, reading message headers only: to keep the
// client's Terminate from the server, to know whether the server is idle
// when the client leaves (it is then reset and goes back to its pool;
// otherwise it is closed), and to find a message boundary for a farewell.
// Statements keep the client's names, since the reset drops them before
// the server's next client.
//
// Every field is the thread's.
type sessLoop struct {
	ps  *pooled
	cfg *Config
	sc  *pool.ServerConn // the session's server
	// sock is sc's socket, attached to the session by the first call on
	// the thread (attached).
	sock     *loop.Socket
	attached bool

	s    *loop.Session
	emit func([]byte) // emitServer, made once

	up   clientMessages
	down frameScanner // server to client: ReadyForQuery decoded
	// status is the transaction status of the server's last
	// ReadyForQuery.
	status byte

	toClient, toServer prometheus.Counter
}

func newSessLoop(ps *pooled, cfg *Config, sc *pool.ServerConn, sock *loop.Socket) *sessLoop {
	h := &sessLoop{
		ps: ps, cfg: cfg, sc: sc, sock: sock, status: 'I',
		down:     frameScanner{watch: serverWatch},
		toClient: ps.sess.ln.toClient, toServer: ps.sess.ln.toServer,
	}
	h.emit = h.emitServer
	return h
}

// attach makes the session's server the loop session's, once. It reports
// false, having ended the session, when the server went away meanwhile.
func (h *sessLoop) attach(s *loop.Session) bool {
	if h.attached {
		return true
	}
	h.attached = true
	if !s.Attach(h.sock) {
		h.lost(s, errors.New("the server connection closed"))
		return false
	}
	return true
}

// FromClient forwards the client's bytes, all but a Terminate.
func (h *sessLoop) FromClient(s *loop.Session, b []byte) {
	if !h.attach(s) {
		return
	}
	h.s = s
	quit, err := h.up.feed(b, h.emit)
	switch {
	case err != nil:
		h.fail(s, err)
	case quit:
		s.End(nil)
	}
}

// clientMessages follows the messages a session-mode client sends: what
// the relay must know to give the server back (see sessLoop.idle), and
// the Terminate that must not reach the server, whose header is kept back
// while it comes in pieces.
type clientMessages struct {
	scan frameScanner // headers only
	// last is the type of the client's last message, waiting how many
	// ReadyForQuery messages its Query, FunctionCall and Sync messages
	// still wait for.
	last    byte
	waiting int
}

// feed passes b on to emit, in one or two pieces, up to a Terminate,
// which it reports.
func (u *clientMessages) feed(b []byte, emit func([]byte)) (quit bool, err error) {
	carried := u.scan.hdrN // header bytes of an earlier read, not passed on
	if carried >= 5 {
		carried = 0 // in a body: those bytes went
	}
	for off := 0; off < len(b); {
		before, start := u.scan.hdrN, off
		n, _, err := u.scan.next(b[off:])
		if err != nil {
			return false, err
		}
		off += n
		if before >= 5 || (u.scan.hdrN != 0 && u.scan.hdrN != 5) {
			continue // in a body, or the header is not whole yet
		}
		typ := u.scan.typ()
		if typ == 'X' {
			if start > 0 {
				emit(b[:start])
			}
			return true, nil
		}
		if carried > 0 {
			emit(u.scan.hdr[:carried])
			carried = 0
		}
		u.last = typ
		if typ == 'Q' || typ == 'S' || typ == 'F' {
			u.waiting++
		}
	}
	end := len(b)
	if p := u.scan.hdrN; p > 0 && p < 5 {
		// A header cut by the end of the read: kept back until it is
		// whole, in case it is a Terminate.
		end -= p - carried
	}
	if end > 0 {
		emit(b[:end])
	}
	return false, nil
}

func (h *sessLoop) emitServer(b []byte) {
	h.s.WriteServer(b)
	h.toServer.Add(float64(len(b)))
}

// FromServer forwards the server's bytes, following its ReadyForQuery
// messages.
func (h *sessLoop) FromServer(s *loop.Session, b []byte) {
	if err := h.follow(b); err != nil {
		h.fail(s, err)
		return
	}
	s.WriteClient(b)
	h.toClient.Add(float64(len(b)))
}

// follow scans the server's bytes for ReadyForQuery messages.
func (h *sessLoop) follow(b []byte) error {
	for off := 0; off < len(b); {
		n, done, err := h.down.next(b[off:])
		if err != nil {
			return err
		}
		off += n
		if done && h.down.typ() == 'Z' {
			if m := h.down.msg(); len(m) == 1 {
				h.status = m[0]
			}
			if h.up.waiting > 0 {
				h.up.waiting--
			}
		}
	}
	return nil
}

// ServerFailed ends the session: it depended on that server. The client
// has what the server sent before it went, as over a direct connection.
func (h *sessLoop) ServerFailed(s *loop.Session, _ *loop.Socket, err error) {
	h.lost(s, err)
}

func (h *sessLoop) lost(s *loop.Session, err error) {
	h.ps.forget(h.sc, err)
	s.End(err)
}

// fail ends the session after a framing error, telling the client why.
func (h *sessLoop) fail(s *loop.Session, err error) {
	if ce, ok := asClientError(err); ok && h.down.atBoundary() {
		s.WriteClient(appendErrorResponse(nil, ce))
	}
	s.End(err)
}

// Farewell tells a client whose session the proxy ended why, unless the
// client is in the middle of a server message.
func (h *sessLoop) Farewell(*loop.Session) []byte {
	if e := h.ps.sess.killed.Load(); e != nil && h.down.atBoundary() {
		return appendErrorResponse(nil, e)
	}
	return nil
}

// idle reports whether the server has answered everything the client
// sent and is outside a transaction: then a reset readies it for another
// client.
func (h *sessLoop) idle() bool {
	switch h.up.last {
	case 0, 'Q', 'S', 'F', 'c', 'f':
	default:
		return false // an extended-protocol batch without its Sync, or a COPY
	}
	return h.up.waiting == 0 && h.status == 'I' && h.up.scan.atBoundary() && h.down.atBoundary()
}

// Ended gives the server back when the client left it idle, after the
// reset, which runs on a goroutine; otherwise the server is closed.
func (h *sessLoop) Ended(_ *loop.Session, err error, server *loop.Socket, clean bool) {
	ps := h.ps
	ps.mu.Lock()
	held := ps.server
	ps.server = nil
	ps.mu.Unlock()
	reusable := held != nil && server != nil && clean && err == nil && h.idle() && ps.sess.killed.Load() == nil
	if !reusable {
		if held != nil {
			ps.release(held, false)
		}
		ps.leave()
		ps.sess.finish(err)
		return
	}
	go func() {
		ps.release(held, ps.reset(held, h.cfg))
		ps.leave()
		ps.sess.finish(err)
	}()
}
