package proxy

import (
	"errors"
	"io"
	"net"
	"time"

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

	streams sessionStreams

	// settings is the SET that makes the server's settings the client's,
	// until answered; greetAfter is the greeting held back until then (nil
	// when the client was greeted at once: the SET cannot fail and goes
	// with the client's first message), early what the client sent after
	// its startup meanwhile. reset follows the reset query run once the
	// client said Terminate with its server idle, after which the session
	// ends. ownTimer ends the session if the server takes too long to
	// answer either.
	settings          *pendingSettings
	greetAfter, early []byte
	reset             *ownQuery
	ownTimer          *time.Timer

	toClient, toServer prometheus.Counter
}

func newSessLoop(ps *pooled, cfg *Config, sc *pool.ServerConn, sock *loop.Socket) *sessLoop {
	h := &sessLoop{
		ps: ps, cfg: cfg, sc: sc, sock: sock, streams: newSessionStreams(),
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
	quit, err := h.streams.up.feed(b, h.emit)
	switch {
	case err != nil:
		h.fail(s, err)
	case quit && !h.startReset(s):
		s.End(nil)
	}
}

// startReset runs the reset query on the thread when the client said
// Terminate and left its server idle, rather than on a goroutine once the
// client is gone: a goroutine waiting for the server costs more thread
// switches than the rest of a short session. The client is no longer
// read; the session ends at the reset's ReadyForQuery (resetAnswer).
func (h *sessLoop) startReset(s *loop.Session) bool {
	q := h.cfg.ServerResetQuery
	if q == "" || h.settings.sent() || !h.streams.idle() || h.ps.sess.killed.Load() != nil {
		return false
	}
	h.settings = nil // never sent: the reset makes it moot
	h.reset = &ownQuery{scan: frameScanner{watch: serverWatchPooled}}
	s.Hold(true)
	h.send(s, h.cfg.resetMsg)
	return true
}

// settle applies the client's settings before greeting it: the client is
// held until the server has answered the SET.
func (h *sessLoop) settle(s *loop.Session, settings *pendingSettings, greeting, early []byte) {
	h.settings, h.greetAfter, h.early = settings, greeting, early
	s.Hold(true)
	h.send(s, settings.with(nil))
}

// send writes a query of the proxy's own, whose answer the session waits
// for no longer than resetTimeout.
func (h *sessLoop) send(s *loop.Session, msg []byte) {
	s.WriteServer(msg)
	h.ownTimer = time.AfterFunc(resetTimeout, func() {
		s.Post(func(alive bool) {
			if alive && (h.reset != nil || h.settings.sent()) {
				h.lost(s, errOwnQueryTimeout)
			}
		})
	})
}

// resetAnswer follows the answer to the reset query; the session ends at
// its end, and Ended gives the server back if it went well.
func (h *sessLoop) resetAnswer(s *loop.Session, b []byte) {
	q := h.reset
	n, done, err := q.feed(h.sc, b)
	if err == nil && done && n < len(b) {
		err = errors.New("the server sent more after its ReadyForQuery")
	}
	if err != nil && q.failed == nil {
		q.failed = err
	}
	if done || err != nil {
		h.ownTimer.Stop()
		q.done = done
		s.End(nil)
	}
}

// settingsAnswer takes the answer to the SET out of the server's bytes,
// greets a client that waited for it, and relays what follows (the answer
// to a client's message that went with the SET).
func (h *sessLoop) settingsAnswer(s *loop.Session, b []byte) {
	rest, done, err := h.settings.take(h.ps, h.sc, b)
	if err != nil {
		h.lost(s, err)
		return
	}
	if !done {
		return
	}
	h.ownTimer.Stop()
	h.settings = nil
	if h.greetAfter != nil {
		h.greet(s, h.greetAfter)
		if early := h.early; len(early) > 0 {
			h.early = nil
			h.FromClient(s, early)
		}
	}
	if len(rest) > 0 {
		h.FromServer(s, rest)
	}
}

// greet sends the client the end of its startup and starts the relay.
func (h *sessLoop) greet(s *loop.Session, greeting []byte) {
	s.WriteClient(greeting)
	h.greetAfter = nil
	h.ps.begun()
	s.Hold(false)
}

var errOwnQueryTimeout = errors.New("the server did not answer the proxy's query in time")

// sessionStreams follows both streams of a session-mode session, for
// either relay: the client's side only ever by the reader of the client,
// the server's only by the reader of the server, and idle once both have
// stopped.
type sessionStreams struct {
	up   clientMessages
	down frameScanner // ReadyForQuery decoded
	// answered counts the server's ReadyForQuery messages, status is the
	// transaction status of the last.
	answered int
	status   byte
}

func newSessionStreams() sessionStreams {
	return sessionStreams{down: frameScanner{watch: serverWatch}, status: 'I'}
}

// follow scans the server's bytes for ReadyForQuery messages.
func (st *sessionStreams) follow(b []byte) error {
	for off := 0; off < len(b); {
		n, done, err := st.down.next(b[off:])
		if err != nil {
			return err
		}
		off += n
		if done && st.down.typ() == 'Z' {
			if m := st.down.msg(); len(m) == 1 {
				st.status = m[0]
			}
			st.answered++
		}
	}
	return nil
}

// idle reports whether the server has answered everything the client
// sent and is outside a transaction: then a reset readies it for another
// client.
func (st *sessionStreams) idle() bool {
	switch st.up.last {
	case 0, 'Q', 'S', 'F', 'c', 'f':
	default:
		return false // an extended-protocol batch without its Sync, or a COPY
	}
	return st.up.asked == st.answered && st.status == 'I' && st.up.scan.atBoundary() && st.down.atBoundary()
}

// clientMessages follows the messages a session-mode client sends: what
// the relay must know to give the server back (sessionStreams.idle), and
// the Terminate that must not reach the server, whose header is kept back
// while it comes in pieces.
type clientMessages struct {
	scan frameScanner // headers only
	// last is the type of the client's last message, asked how many
	// Query, FunctionCall and Sync messages it sent: each gets one
	// ReadyForQuery.
	last  byte
	asked int
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
			u.asked++
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
	h.toServer.Add(float64(len(b)))
	if h.settings != nil && !h.settings.sent() {
		h.send(h.s, h.settings.with(b))
		return
	}
	h.s.WriteServer(b)
}

// FromServer forwards the server's bytes, following its ReadyForQuery
// messages.
func (h *sessLoop) FromServer(s *loop.Session, b []byte) {
	switch {
	case h.reset != nil:
		h.resetAnswer(s, b)
		return
	case h.settings.sent():
		h.settingsAnswer(s, b)
		return
	}
	if err := h.streams.follow(b); err != nil {
		h.fail(s, err)
		return
	}
	s.WriteClient(b)
	h.toClient.Add(float64(len(b)))
}

// ServerFailed ends the session: it depended on that server. The client
// has what the server sent before it went, as over a direct connection.
func (h *sessLoop) ServerFailed(s *loop.Session, _ *loop.Socket, err error) {
	h.lost(s, err)
}

func (h *sessLoop) lost(s *loop.Session, err error) {
	if h.settings.sent() {
		// Its settings failed: the client hears why its session ends,
		// in its startup or before any answer to its first query.
		s.WriteClient(appendErrorResponse(nil, &clientError{Severity: "FATAL", Code: codeConnectionFailure,
			Message: "pgrouter could not apply the session's settings on " + h.sc.Member, Detail: err.Error()}))
	}
	h.ps.forget(h.sc, err)
	s.End(err)
}

// fail ends the session after a framing error, telling the client why.
func (h *sessLoop) fail(s *loop.Session, err error) {
	if ce, ok := asClientError(err); ok && h.streams.down.atBoundary() {
		s.WriteClient(appendErrorResponse(nil, ce))
	}
	s.End(err)
}

// Farewell tells a client whose session the proxy ended why, unless the
// client is in the middle of a server message.
func (h *sessLoop) Farewell(*loop.Session) []byte {
	if e := h.ps.sess.killed.Load(); e != nil && h.streams.down.atBoundary() {
		return appendErrorResponse(nil, e)
	}
	return nil
}

// Ended gives the server back when the client left it idle, after the
// reset, which runs on a goroutine; otherwise the server is closed.
func (h *sessLoop) Ended(_ *loop.Session, err error, server *loop.Socket, clean bool) {
	ps := h.ps
	held := ps.takeServer()
	if h.reset != nil {
		// Reset on the thread (startReset), or it failed.
		if held != nil {
			reused := h.reset.ok() && server != nil && clean && err == nil && ps.sess.killed.Load() == nil
			if reused {
				forgetSessionState(held)
			}
			ps.release(held, reused)
		}
		ps.leave()
		ps.sess.finish(err)
		return
	}
	idle := held != nil && server != nil && clean && err == nil && !h.settings.sent() && h.streams.idle() && ps.sess.killed.Load() == nil
	end := func() {
		if held != nil {
			ps.release(held, idle && ps.reset(held, h.cfg))
		}
		ps.leave()
		ps.sess.finish(err)
	}
	if idle {
		go end() // the reset waits for the server
	} else {
		end()
	}
}

// relaySession is sessLoop's relay on goroutines, for a session with TLS
// on a side or without loop threads: this goroutine copies the server's
// bytes to the client, another the client's to the server. When the
// client leaves, the server is given back, reset, if it was idle, and
// closed otherwise.
func (ps *pooled) relaySession(cfg *Config) error {
	sess, sc := ps.sess, ps.heldServer()
	st := newSessionStreams()
	toServer, toClient := sess.ln.toServer, sess.ln.toClient
	clientLeft := make(chan error, 1)
	go func() {
		bp := clientBufPool.Get().(*[]byte)
		defer clientBufPool.Put(bp)
		var werr error
		emit := func(b []byte) {
			if werr == nil {
				_, werr = sc.Write(b)
				toServer.Add(float64(len(b)))
			}
		}
		for {
			n, err := sess.client.Read(*bp)
			if n > 0 {
				quit, ferr := st.up.feed((*bp)[:n], emit)
				switch {
				case ferr != nil:
					err = ferr
				case werr != nil:
					err = werr
				case quit:
					err = io.EOF
				}
			}
			if err != nil {
				// Stop the server's reader without closing the server.
				_ = sc.SetReadDeadline(time.Now())
				clientLeft <- err
				return
			}
		}
	}()
	serr := copyToClient(sess.client, sc, st.follow, toClient)
	// A timeout is the client goroutine's deadline, set just before it
	// says why it stopped: wait for that. Taking it for the server's
	// failure closed a server the client had left idle.
	var ne net.Error
	stopped := errors.As(serr, &ne) && ne.Timeout()
	var cerr error
	if stopped {
		cerr = <-clientLeft
	} else {
		select {
		case cerr = <-clientLeft:
		default:
			cerr = errServerFirst
		}
	}
	if cerr == errServerFirst {
		// The server went first (or failed): the session depended on it.
		if e := sess.killed.Load(); e != nil && st.down.atBoundary() {
			_ = sess.client.SetWriteDeadline(time.Now().Add(time.Second))
			writeClientError(sess.client, e)
		}
		sess.client.Close()
		<-clientLeft
		ps.forget(sc, serr)
		if errors.Is(serr, io.EOF) {
			return nil
		}
		return serr
	}
	if errors.Is(cerr, io.EOF) || errors.Is(cerr, net.ErrClosed) {
		cerr = nil
	}
	ps.takeServer()
	_ = sc.SetReadDeadline(time.Time{})
	ps.release(sc, stopped && cerr == nil && st.idle() && sess.killed.Load() == nil && ps.reset(sc, cfg))
	return cerr
}

// errServerFirst marks, in relaySession, a server that stopped before
// the client did.
var errServerFirst = errors.New("the server went first")

// ownQuery follows a server's answer to a query of the proxy's own sent on
// a loop thread: ParameterStatus messages update what is known of the
// server, an ErrorResponse fails the query, and its ReadyForQuery ends it.
type ownQuery struct {
	scan   frameScanner
	failed error
	done   bool
}

// feed reads the answer from b. It reports how many bytes it used and
// whether the answer ended there.
func (q *ownQuery) feed(sc *pool.ServerConn, b []byte) (n int, done bool, err error) {
	for n < len(b) {
		k, complete, err := q.scan.next(b[n:])
		if err != nil {
			return n, false, err
		}
		n += k
		if q.scan.hdrN == 5 && q.scan.typ() == 'E' && q.failed == nil {
			// Known from the header: a long error is not captured.
			q.failed = &serverError{msg: "the server refused the query"}
		}
		if !complete {
			continue
		}
		switch q.scan.typ() {
		case 'S':
			if name, v, ok := parseParameterStatus(q.scan.msg()); ok {
				sc.Params[name] = v
			}
		case 'E':
			if msg := errorField(q.scan.msg(), 'M'); msg != "" {
				q.failed = &serverError{msg: msg}
			}
		case 'Z':
			if m := q.scan.msg(); (len(m) != 1 || m[0] != 'I') && q.failed == nil {
				q.failed = errors.New("the server is in a transaction after the proxy's query")
			}
			return n, true, nil
		}
	}
	return n, false, nil
}

// ok reports whether the query ran to its ReadyForQuery without an error.
func (q *ownQuery) ok() bool { return q.done && q.failed == nil }

// pendingSettings is a SET of a client's settings that a loop thread sends
// a server ahead of the client's traffic: in one write with the client's
// first bytes, so that the server reads both when it wakes up once, its
// answer taken out of the server's stream, the settings recorded on the
// server once it is answered.
type pendingSettings struct {
	msg    []byte   // the SET, until written
	stale  []string // the settings it resets
	answer ownQuery
}

func newPendingSettings(msg []byte, stale []string) *pendingSettings {
	return &pendingSettings{msg: msg, stale: stale, answer: ownQuery{scan: frameScanner{watch: serverWatchPooled}}}
}

// with returns b after the SET the first time, b alone after that or
// when there is no SET (p nil).
func (p *pendingSettings) with(b []byte) []byte {
	if p == nil || p.msg == nil {
		return b
	}
	out := append(p.msg, b...)
	p.msg = nil
	return out
}

// sent reports whether there is a SET (p not nil) and it was written: its
// answer is awaited until the holder drops p.
func (p *pendingSettings) sent() bool { return p != nil && p.msg == nil }

// take reads the SET's answer from the head of the server's bytes b. Once
// the answer ends (done) the settings are ps's on sc, and rest is what
// follows it. An error means the SET failed or the stream broke.
func (p *pendingSettings) take(ps *pooled, sc *pool.ServerConn, b []byte) (rest []byte, done bool, err error) {
	n, done, err := p.answer.feed(sc, b)
	if err == nil && done {
		err = p.answer.failed
	}
	if err != nil || !done {
		return b[n:], false, err
	}
	ps.settingsApplied(sc, p.stale)
	return b[n:], true, nil
}
