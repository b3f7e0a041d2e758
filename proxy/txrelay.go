package proxy

import (
	"context"
	"io"
	"strings"
	"time"

	"github.com/pgrouter/pgrouter/proxy/pool"
)

// maxClientMessage caps one client message in pooled modes, where the
// proxy must hold a whole Parse, Bind or Query to rewrite it. CopyData is
// streamed and has no such cap.
const maxClientMessage = 64 << 20

// idleReadBuf is what a pooled client holds while it waits for its next
// message; bigger reads borrow a clientReadBuf.
const idleReadBuf = 512

// clientLoop reads client messages until the client leaves, writing each
// chunk's messages to the server the session holds, acquired on demand.
func (ps *pooled) clientLoop(ctx context.Context, cfg *Config, in sessionIntent) error {
	// An idle pooled client must cost little: it waits on a small buffer
	// of its own, and borrows a full one only while a read fills it.
	small := make([]byte, 0, idleReadBuf)
	buf := small
	var borrowed *[]byte
	defer func() {
		if borrowed != nil {
			clientBufPool.Put(borrowed)
		}
	}()
	var out []byte
	var c clientState
	for {
		if len(buf) == cap(buf) {
			if borrowed == nil && cap(buf) < clientReadBuf {
				borrowed = clientBufPool.Get().(*[]byte)
				grown := (*borrowed)[:len(buf)]
				copy(grown, buf)
				buf = grown
			} else {
				grown := make([]byte, len(buf), 2*cap(buf))
				copy(grown, buf)
				buf = grown
			}
		}
		n, rerr := ps.sess.client.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		out = out[:0]
		msgs := buf
		for {
			var step clientStep
			var err error
			msgs, out, step, err = ps.consume(&c, msgs, out, ps)
			if err != nil {
				return err
			}
			if step == stepTerminate {
				ps.flushToServer(ps.heldServer(), out)
				return io.EOF
			}
			if step != stepNeedServer {
				break
			}
			if _, err := ps.ensureServerFor(ctx, cfg, in, msgs); err != nil {
				if err := c.fail(err); err != nil {
					return err
				}
			}
		}
		ps.flushToServer(ps.heldServer(), out)
		rest := copy(buf, msgs)
		buf = buf[:rest]
		if rest <= idleReadBuf/2 && cap(buf) > idleReadBuf {
			// Drained: go back to the small buffer and return the big one.
			small = small[:rest]
			copy(small, buf)
			buf = small
			if borrowed != nil {
				clientBufPool.Put(borrowed)
				borrowed = nil
			}
		}
		if cap(out) > 4*clientReadBuf {
			out = nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// clientState is what the pooled relay remembers of the client's stream
// between chunks.
type clientState struct {
	streamLeft int          // bytes of a CopyData being streamed through
	failErr    *clientError // the server could not be had: messages are skipped up to the next Sync or Query, which gets this error
}

// fail handles a failure to get a server: a FATAL one ends the session,
// any other is the answer to the messages up to the next Sync.
func (c *clientState) fail(err error) error {
	ce, ok := asClientError(err)
	if !ok || ce.Severity == "FATAL" {
		return err
	}
	c.failErr = ce
	return nil
}

type clientStep uint8

const (
	stepMore       clientStep = iota // msgs holds no whole message: read more
	stepNeedServer                   // the next message needs a server the session does not hold
	stepTerminate                    // the client said goodbye
)

// clientWriter writes the proxy's own answers to the client: the loop's
// session or the client connection. An interface, not a func, so that
// passing a session's writer allocates nothing.
type clientWriter interface {
	writeClient([]byte) error
}

// consume handles the client messages at the start of msgs, appending what
// goes to the held server to out and writing the proxy's own answers with
// reply. It stops where it needs a server, at a Terminate, or where no
// whole message is left, and returns the bytes it did not consume. The
// server it writes for is the one held when it needs one: it is never
// given back while out holds messages for it (they are outstanding).
func (ps *pooled) consume(c *clientState, msgs, out []byte, reply clientWriter) ([]byte, []byte, clientStep, error) {
	for len(msgs) > 0 {
		if c.streamLeft > 0 {
			k := min(c.streamLeft, len(msgs))
			out = append(out, msgs[:k]...)
			c.streamLeft -= k
			msgs = msgs[k:]
			continue
		}
		if len(msgs) < 5 {
			break
		}
		typ := msgs[0]
		l := int(getUint32(msgs[1:5]))
		if l < 4 || l > maxClientMessage {
			return msgs, out, stepMore, fatalf(codeProtocolViolation, "invalid message length %d", l)
		}
		if typ == 'X' {
			return msgs, out, stepTerminate, nil
		}
		sc := ps.heldServer()
		if sc == nil && c.failErr == nil {
			if typ == 'Q' && ps.splitCfg != nil && len(msgs) >= 1+l {
				if resp, ok := ps.answerRouteSetting(msgs[5 : 1+l]); ok {
					// SET pgrouter.route is the proxy's own: answered here,
					// and `primary` needs no quotes although the server's
					// grammar reserves it.
					if err := reply.writeClient(resp); err != nil {
						return msgs, out, stepMore, err
					}
					msgs = msgs[1+l:]
					continue
				}
			}
			if resp, n := ps.answerReset(msgs); n > 0 {
				if err := reply.writeClient(resp); err != nil {
					return msgs, out, stepMore, err
				}
				msgs = msgs[n:]
				continue
			}
			if resp, n := ps.deferPrepare(msgs); n > 0 {
				if err := reply.writeClient(resp); err != nil {
					return msgs, out, stepMore, err
				}
				msgs = msgs[n:]
				continue
			}
			return msgs, out, stepNeedServer, nil
		}
		if typ == 'd' && len(msgs) < 1+l {
			// Stream a long CopyData instead of holding it whole.
			if c.failErr == nil {
				out = append(out, msgs...)
			}
			c.streamLeft = 1 + l - len(msgs)
			msgs = msgs[len(msgs):]
			continue
		}
		if len(msgs) < 1+l {
			break
		}
		body := msgs[5 : 1+l]
		if c.failErr != nil {
			// Nothing reaches a server; answer at the next Sync or Query.
			if typ == 'S' || typ == 'Q' {
				resp := appendErrorResponse(nil, c.failErr)
				resp = appendMessage(resp, 'Z', []byte{'I'})
				if err := reply.writeClient(resp); err != nil {
					return msgs, out, stepMore, err
				}
				c.failErr = nil
			}
		} else {
			var held bool
			out, held = ps.rewrite(out, sc, typ, msgs[:1+l], body)
			if !held {
				// The server went back to its pool just before this
				// message (only possible for a chunk's first): get another.
				continue
			}
		}
		msgs = msgs[1+l:]
	}
	return msgs, out, stepMore, nil
}

// heldServer returns the server the session holds, nil between
// transactions.
func (ps *pooled) heldServer() *pool.ServerConn {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.server
}

// ensureServerFor returns the held server, acquiring one when the session
// holds none (transaction mode, between transactions). With the statement
// split, the transaction that msgs starts is classified first.
func (ps *pooled) ensureServerFor(ctx context.Context, cfg *Config, in sessionIntent, msgs []byte) (*pool.ServerConn, error) {
	ps.mu.Lock()
	sc := ps.server
	ps.mu.Unlock()
	if sc != nil {
		return sc, nil
	}
	var err error
	if ps.splitCfg != nil {
		sc, err = ps.acquireSplit(ctx, cfg, in, msgs)
	} else {
		sc, err = ps.acquire(ctx, cfg, in)
	}
	if err != nil {
		return nil, err
	}
	ps.lend(sc)
	return sc, nil
}

func (ps *pooled) flushToServer(sc *pool.ServerConn, out []byte) {
	if len(out) == 0 || sc == nil {
		return
	}
	if _, err := sc.Write(out); err != nil {
		// The server loop sees the same failure and tells the client.
		sc.Close()
	}
}

// rewrite appends one client message to out, renaming statements and
// preparing them on the held server where needed, and records what the
// server will answer.
func (ps *pooled) rewrite(out []byte, sc *pool.ServerConn, typ byte, raw, body []byte) ([]byte, bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.server != sc {
		return out, false
	}
	return ps.rewriteLocked(out, sc, typ, raw, body), true
}

func (ps *pooled) rewriteLocked(out []byte, sc *pool.ServerConn, typ byte, raw, body []byte) []byte {
	switch typ {
	case 'P':
		i := indexZero(body)
		if i < 0 {
			break
		}
		rest := body[i+1:]
		var query string
		if q := indexZero(rest); q >= 0 {
			query = transientString(rest[:q])
			ps.pin(pinReason(query))
		}
		if i == 0 {
			ps.unnamed = append(ps.unnamed[:0], rest...)
			ps.unnamedOn, ps.unnamedReturns = sc, sc.Returns()
			ps.fifo = append(ps.fifo, fifoEntry{kind: fifoParse})
			ps.dirty = true
			return append(out, raw...)
		}
		if st, dup := ps.stmts[transientString(body[:i])]; dup {
			// PostgreSQL refuses a second statement of one name (42P05,
			// "already exists"). pgrouter's names differ per Parse, so it
			// has the server refuse it: the same Parse under the first
			// statement's name, on a server that has that one. The
			// fifo entry names nothing, so the error forgets nothing.
			out = ps.ensurePrepared(out, sc, string(body[:i]), st.server)
			ps.fifo = append(ps.fifo, fifoEntry{kind: fifoParse})
			ps.dirty = true
			return appendParse(out, st.server, rest)
		}
		sn := ps.remember(string(body[:i]), rest, strings.Clone(query))
		sc.Prepared[sn] = struct{}{}
		ps.fifo = append(ps.fifo, fifoEntry{kind: fifoParse, name: sn})
		ps.dirty = true
		return appendParse(out, sn, rest)
	case 'B':
		i := indexZero(body)
		if i < 0 {
			break
		}
		portal := body[:i+1]
		rest := body[i+1:]
		j := indexZero(rest)
		if j < 0 {
			break
		}
		if j == 0 {
			out = ps.ensureUnnamed(out, sc)
			break
		}
		sn, ok := ps.serverName(string(rest[:j]))
		if !ok {
			break
		}
		out = ps.ensurePrepared(out, sc, string(rest[:j]), sn)
		ps.dirty = true
		start := len(out)
		out = append(out, 'B', 0, 0, 0, 0)
		out = append(out, portal...)
		out = append(out, sn...)
		out = append(out, rest[j:]...)
		putUint32(out[start+1:], uint32(len(out)-start-1))
		return out
	case 'D', 'C':
		if len(body) < 2 || body[0] != 'S' {
			break
		}
		if len(body) == 2 { // the unnamed statement
			if typ == 'D' {
				out = ps.ensureUnnamed(out, sc)
			} else {
				ps.unnamedOn = nil
			}
			break
		}
		name := string(body[1 : len(body)-1])
		sn, ok := ps.serverName(name)
		if !ok {
			break
		}
		if typ == 'D' {
			out = ps.ensurePrepared(out, sc, name, sn)
		} else {
			delete(ps.stmts, name)
			delete(sc.Prepared, sn)
		}
		ps.dirty = true
		start := len(out)
		out = append(out, typ, 0, 0, 0, 0, 'S')
		out = append(out, sn...)
		out = append(out, 0)
		putUint32(out[start+1:], uint32(len(out)-start-1))
		return out
	case 'Q':
		if len(body) > 0 {
			q := transientString(body[:len(body)-1])
			if reason := pinReason(q); reason != pinUntrackedSet || !ps.trackSet(q) {
				ps.pin(reason)
			}
		}
		ps.unnamedOn = nil // a simple query replaces the unnamed statement
		ps.fifo = append(ps.fifo, fifoEntry{kind: fifoSync})
		ps.dirty = false
		return append(out, raw...)
	case 'S', 'F':
		ps.fifo = append(ps.fifo, fifoEntry{kind: fifoSync})
		ps.dirty = false
		return append(out, raw...)
	}
	ps.dirty = true
	return append(out, raw...)
}

// deferPrepare answers, between transactions, a prepare that needs no
// server yet: named Parse messages and a Sync, which is what libpq's
// PQprepare sends. The statements are recorded and prepared on whichever
// server runs their first Bind or Describe (ensurePrepared). A client that
// prepares synchronously while holding servers for its other connections
// (pgbench -M prepared with fewer threads than clients) cannot then wait
// on a pool its own open transactions exhaust. The cost: an invalid
// statement is reported at its first use, not here. It returns the answer
// and how many bytes of msgs it consumed; 0 when msgs is anything else.
func (ps *pooled) deferPrepare(msgs []byte) ([]byte, int) {
	if ps.mode != PoolTransaction {
		return nil, 0
	}
	type parse struct {
		name, query string
		rest        []byte
	}
	var parses [4]parse
	list := parses[:0]
	end := 0
	for m := msgs; ; {
		if len(m) < 5 {
			return nil, 0
		}
		l := int(getUint32(m[1:5]))
		if l < 4 || len(m) < 1+l {
			return nil, 0
		}
		body := m[5 : 1+l]
		end += 1 + l
		if m[0] == 'S' {
			break
		}
		if m[0] != 'P' || len(list) == cap(parses) {
			return nil, 0
		}
		i := indexZero(body)
		if i <= 0 {
			return nil, 0 // the unnamed statement lives only until the next Parse
		}
		rest := body[i+1:]
		q := indexZero(rest)
		if q < 0 {
			return nil, 0
		}
		query := string(rest[:q])
		if pinReason(query) != pinNone {
			return nil, 0
		}
		list = append(list, parse{name: string(body[:i]), query: query, rest: rest})
		m = m[1+l:]
	}
	if len(list) == 0 {
		return nil, 0
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.server != nil || ps.pinned != "" || !ps.quietLocked() {
		return nil, 0
	}
	var resp []byte
	for _, p := range list {
		if _, taken := ps.stmts[p.name]; taken {
			return nil, 0 // PostgreSQL's error for a duplicate name comes from a server
		}
	}
	for _, p := range list {
		ps.remember(p.name, p.rest, p.query)
		resp = appendMessage(resp, '1', nil)
	}
	ps.sess.srv.metrics.deferredPrepares.Add(float64(len(list)))
	return appendMessage(resp, 'Z', []byte{'I'}), end
}

// ensurePrepared injects the client's Parse under the server name when
// the held server has not seen it; its ParseComplete will be dropped.
func (ps *pooled) ensurePrepared(out []byte, sc *pool.ServerConn, name, sn string) []byte {
	if _, ok := sc.Prepared[sn]; ok {
		return out
	}
	sc.Prepared[sn] = struct{}{}
	ps.fifo = append(ps.fifo, fifoEntry{kind: fifoParseDrop, name: sn})
	return appendParse(out, sn, ps.stmts[name].parse)
}

// ensureUnnamed injects the client's last Parse of the unnamed statement
// when it was parsed in an earlier lend; its ParseComplete will be dropped.
// A client that never parsed one (or replaced it with a simple query)
// gets the server's own answer, as it would without the proxy.
func (ps *pooled) ensureUnnamed(out []byte, sc *pool.ServerConn) []byte {
	if ps.unnamedOn == nil || ps.unnamedOn == sc && ps.unnamedReturns == sc.Returns() {
		return out
	}
	ps.unnamedOn, ps.unnamedReturns = sc, sc.Returns()
	ps.fifo = append(ps.fifo, fifoEntry{kind: fifoParseDrop})
	return appendParse(out, "", ps.unnamed)
}

func appendParse(out []byte, name string, rest []byte) []byte {
	start := len(out)
	out = append(out, 'P', 0, 0, 0, 0)
	out = append(out, name...)
	out = append(out, 0)
	out = append(out, rest...)
	putUint32(out[start+1:], uint32(len(out)-start-1))
	return out
}

// serverWatchPooled lists the server messages the pooled relay acts on.
var serverWatchPooled = func() *[256]bool {
	var w [256]bool
	w['Z'] = true // ReadyForQuery: end of a transaction or sync
	w['1'] = true // ParseComplete: maybe of an injected Parse
	w['E'] = true // ErrorResponse: the server skips to the next Sync
	w['S'] = true // ParameterStatus: a reported setting changed
	return &w
}()

// lend makes sc the session's server and has its output pumped to the
// client: by a new pump goroutine, or by the running one once it is done
// with the server before.
func (ps *pooled) lend(sc *pool.ServerConn) {
	ps.mu.Lock()
	ps.server = sc
	if ps.pumping {
		ps.queued = append(ps.queued, sc)
		ps.mu.Unlock()
		return
	}
	ps.pumping = true
	ps.mu.Unlock()
	ps.pumps.Add(1)
	go ps.serverLoop(sc)
}

// serverLoop pumps sc, then each server queued meanwhile, and returns
// when none is left or the client has gone.
func (ps *pooled) serverLoop(sc *pool.ServerConn) {
	defer ps.pumps.Done()
	for sc != nil {
		if !ps.pumpOne(sc) {
			ps.mu.Lock()
			ps.pumping = false
			ps.queued = ps.queued[:0]
			ps.mu.Unlock()
			return
		}
		ps.mu.Lock()
		sc = nil
		if len(ps.queued) > 0 {
			sc = ps.queued[0]
			ps.queued = append(ps.queued[:0], ps.queued[1:]...)
		} else {
			ps.pumping = false
		}
		ps.mu.Unlock()
	}
}

// pumpOne pumps one lent server until it is given back or fails. It
// reports false when the client has left, whose server runPooled gives
// back.
func (ps *pooled) pumpOne(sc *pool.ServerConn) bool {
	// Buffers are borrowed per lend: a client between transactions holds
	// none.
	bp := serverBufPool.Get().(*[]byte)
	op := serverBufPool.Get().(*[]byte)
	defer serverBufPool.Put(bp)
	defer serverBufPool.Put(op)
	err := ps.pump(sc, *bp, (*op)[:0])
	for err == errRetryOnPrimary {
		next, resp, rerr := ps.rerunOnPrimary()
		if resp != nil {
			_ = ps.writeClient(resp)
		}
		if next == nil {
			return true // no primary server: the client was told
		}
		sc, err = next, rerr
		if err == nil {
			err = ps.pump(sc, *bp, (*op)[:0])
		}
	}
	if err == nil {
		return true
	}
	if ps.closing.Load() {
		// The client has left (its loop stopped this read, or closed a
		// server it left busy): nobody to tell; run gives the server
		// back or closes it.
		return false
	}
	ps.serverLost(sc, err)
	return true
}

// pump copies one lent server's output to the client until the server
// is given back (nil) or fails.
func (ps *pooled) pump(sc *pool.ServerConn, buf, out []byte) error {
	a := answer{scan: frameScanner{watch: serverWatchPooled}}
	toClient := ps.sess.ln.toClient
	for {
		n, rerr := sc.Read(buf)
		var released bool
		var err error
		out, released, err = ps.take(&a, sc, buf[:n], out[:0])
		if err != nil {
			if _, ok := err.(*serverFatal); ok && len(out) > 0 {
				_ = ps.writeClient(out)
			}
			return err
		}
		// A write's LSN goes to the client before the ReadyForQuery that
		// ends it (see txLoop.FromServer).
		if released && !a.retry && ps.splitCfg != nil {
			if done := ps.pendingLSN(); done != nil {
				status, err := ps.learnLastWrite(sc, done)
				toClient.Add(float64(len(out)))
				werr := ps.writeClient(append(status, out...))
				ps.release(sc, err == nil)
				return werr
			}
		}
		if len(out) > 0 && !a.retry {
			if err := ps.writeClient(out); err != nil {
				return err
			}
			a.flushed = true
			toClient.Add(float64(len(out)))
		}
		if released {
			if a.retry {
				ps.release(sc, true)
				return errRetryOnPrimary
			}
			ps.release(sc, true)
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// answer follows a lent server's output, one chunk at a time: it finds
// the messages the pooled relay acts on, drops the ParseComplete of
// Parses the proxy injected and says when the server goes back.
type answer struct {
	scan     frameScanner
	drop     bool // the current message is not for the client
	msgStart int  // where the current message starts in out
	retry    bool // a standby refused the statement; it runs again on the primary
	flushed  bool // some of this lend's answer already reached the client
}

// take appends to out what the client must see of chunk, read from sc,
// and reports whether sc is to be given back now.
func (ps *pooled) take(a *answer, sc *pool.ServerConn, chunk, out []byte) ([]byte, bool, error) {
	released := false
	for b := chunk; len(b) > 0; {
		inHeader := a.scan.hdrN < 5
		k, done, err := a.scan.next(b)
		if err != nil {
			return out, false, err
		}
		if inHeader {
			if a.scan.hdrN == 5 || a.scan.hdrN == 0 {
				a.drop = a.scan.typ() == '1' && ps.headIs(fifoParseDrop)
				a.msgStart = len(out)
				if !a.drop {
					out = append(out, a.scan.hdr[:]...)
				}
			}
		} else if !a.drop {
			out = append(out, b[:k]...)
		}
		b = b[k:]
		if done {
			if a.scan.typ() == 'E' && isFatal(a.scan.msg()) {
				// The server ends the connection. A client that goes on
				// with other servers gets the server's error as an
				// ERROR, not a FATAL that would tell its driver the
				// session is over; one that depended on this server
				// gets it as it is, and its session ends.
				sf := &serverFatal{message: errorField(a.scan.msg(), 'M')}
				if msg := out[min(a.msgStart, len(out)):]; ps.movable() && len(msg) == 5+len(a.scan.msg()) {
					sf.asError = downgradeFatal(msg[5:])
				}
				return out, false, sf
			}
			if a.scan.typ() == 'E' && ps.retryOnPrimary(a.scan.msg(), a.flushed) {
				// A standby refused a statement the classifier let
				// through: the client sees none of this answer; it
				// runs again on the primary.
				out = out[:0]
				a.retry = true
			} else if a.retry && a.scan.typ() == 'Z' {
				out = out[:a.msgStart]
			}
			if ps.onServerMessage(sc, a.scan.typ(), a.scan.msg(), len(b) == 0) {
				released = true
			}
		}
	}
	return out, released, nil
}

// serverFatal is a lent server's FATAL (or PANIC) ErrorResponse, after
// which it closes the connection. take returns it with the answer up to
// and including that message, which the client must still get: as an
// ERROR (asError) when the session goes on without that server.
type serverFatal struct {
	message string
	asError bool
}

// downgradeFatal rewrites, in place, the severity fields of an
// ErrorResponse body from FATAL or PANIC to ERROR (the same length) and
// reports whether it found them.
func downgradeFatal(body []byte) bool {
	found := false
	for len(body) > 1 {
		t := body[0]
		end := indexZero(body[1:])
		if end < 0 {
			return false
		}
		v := body[1 : 1+end]
		if (t == 'S' || t == 'V') && (string(v) == "FATAL" || string(v) == "PANIC") {
			copy(v, "ERROR")
			found = true
		}
		body = body[2+end:]
	}
	return found
}

func (e *serverFatal) Error() string { return "the server ended the connection: " + e.message }

// isFatal reports whether an ErrorResponse body ends the connection.
func isFatal(body []byte) bool {
	sev := errorField(body, 'V') // not localized, since PostgreSQL 9.6
	if sev == "" {
		sev = errorField(body, 'S')
	}
	return sev == "FATAL" || sev == "PANIC"
}

func (ps *pooled) headIs(k fifoKind) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return len(ps.fifo) > 0 && ps.fifo[0].kind == k
}

// onServerMessage matches a watched server message against the fifo. It
// reports whether the server must be given back now: the end of a
// transaction in transaction mode, with nothing more outstanding.
func (ps *pooled) onServerMessage(sc *pool.ServerConn, typ byte, body []byte, lastInChunk bool) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	switch typ {
	case '1':
		if len(ps.fifo) > 0 && ps.fifo[0].kind != fifoSync {
			ps.fifo = ps.fifo[1:]
		}
	case 'E':
		// In the extended protocol the server skips to the next Sync: the
		// Parses before it will never complete.
		ps.skipToSync(sc)
		if ps.pendingSet != nil {
			ps.settleSet(sc, false) // the server refused the SET
		}
	case 'S':
		if name, value, ok := parseParameterStatus(body); ok {
			sc.Params[name] = value
			lname := lowerName(name)
			if settable[lname] != "" && ps.desired[lname] != value {
				ps.settingChanging()
				ps.desired[lname] = value
				ps.desiredFP = settingsFingerprint(ps.desired)
				// The server now has what the client wants.
				sc.SettingsFP = ps.desiredFP
			}
		}
	case 'Z':
		if ps.pendingSet != nil {
			ps.settleSet(sc, len(body) > 0 && body[0] == 'I')
		}
		// Parses still ahead of the Sync this answers never completed:
		// after an error the server skips to the Sync, and a client may
		// send those Parses after the error came (pgx pipelining a
		// prepare whose Describe hit statement_timeout).
		ps.skipToSync(sc)
		if len(ps.fifo) > 0 && ps.fifo[0].kind == fifoSync {
			ps.fifo = ps.fifo[1:]
		}
		if len(body) > 0 {
			ps.txStatus = body[0]
		}
		if len(ps.fifo) == 0 {
			// Back to the inline buffer: a long pipeline's array goes,
			// and the next transaction appends without allocating.
			ps.fifo = ps.fifoBuf[:0]
		}
		if ps.mode == PoolTransaction && ps.pinned == "" && ps.txStatus == 'I' &&
			len(ps.fifo) == 0 && !ps.dirty && lastInChunk {
			ps.server = nil
			if ps.splitCfg != nil && ps.splitCfg.ReadYourWrites && ps.split.txWrite && !ps.split.retrying {
				// Before the client can see this ReadyForQuery and send
				// its next read, make that read wait for the write's LSN.
				ps.split.txWrite = false
				ps.split.lsnDone = make(chan struct{})
			}
			return true
		}
	}
	return false
}

// skipToSync drops the fifo's entries ahead of its first Sync: Parses
// that failed, or that the server skipped after an error, and so created
// nothing. A client's own named statement among them does not exist for
// it either, as on a server; one pgrouter sent again to prepare an
// existing statement stays the client's and is sent again at its next
// use, as is an unnamed statement. mu held.
func (ps *pooled) skipToSync(sc *pool.ServerConn) {
	for len(ps.fifo) > 0 && ps.fifo[0].kind != fifoSync {
		e := ps.fifo[0]
		ps.fifo = ps.fifo[1:]
		if e.name == "" {
			if ps.unnamedOn == sc {
				ps.unnamedReturns = sc.Returns() - 1 // no longer this lend's
			}
			continue
		}
		delete(sc.Prepared, e.name)
		if e.kind == fifoParse {
			for name, st := range ps.stmts { // an error path: a scan is fine
				if st.server == e.name {
					delete(ps.stmts, name)
					break
				}
			}
		}
	}
}

// settable are the reported settings a client changes with SET, which
// the proxy carries to the next server: by lower-case name, each with the
// name as the server spells it in ParameterStatus.
var settable = map[string]string{
	"application_name": "application_name", "client_encoding": "client_encoding",
	"datestyle": "DateStyle", "intervalstyle": "IntervalStyle", "timezone": "TimeZone",
	"standard_conforming_strings":   "standard_conforming_strings",
	"default_transaction_read_only": "default_transaction_read_only",
}

// serverLost handles a lent server failing. A transaction in flight gets
// an error with a lost-connection SQLSTATE and the client goes on with
// its next transaction on another server; a session that depended on the
// server's state (session mode, pinned) is closed.
func (ps *pooled) serverLost(sc *pool.ServerConn, err error) {
	resp, fatal := ps.forget(sc, err)
	if fatal != nil {
		ps.sess.kill(fatal)
		ps.sess.client.Close()
		return
	}
	if len(resp) == 0 {
		return
	}
	_ = ps.sess.client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = ps.writeClient(resp)
	_ = ps.sess.client.SetWriteDeadline(time.Time{})
}

// forget gives up a lent server that failed and says what the client
// must be told: an error and a ReadyForQuery per outstanding Sync, or,
// when the session depended on that server, the FATAL that ends it.
func (ps *pooled) forget(sc *pool.ServerConn, err error) (resp []byte, fatal *clientError) {
	ps.mu.Lock()
	if ps.server == sc {
		ps.server = nil
	}
	syncs := 0
	for _, f := range ps.fifo {
		if f.kind == fifoSync {
			syncs++
		}
	}
	inFlight := ps.inFlightLocked()
	ps.fifo = ps.fifo[:0]
	ps.dirty = false
	ps.txStatus = 'I'
	keep := ps.mode == PoolTransaction && ps.pinned == ""
	ps.mu.Unlock()
	ps.release(sc, false)
	if !keep {
		_, told := err.(*serverFatal) // the client has the server's own FATAL
		return nil, &clientError{Severity: "FATAL", Code: codeConnectionFailure,
			Message: "the server connection of this session was lost", Detail: err.Error(), Quiet: told}
	}
	if !inFlight {
		return nil, nil
	}
	if syncs == 0 {
		syncs = 1
	}
	sf, _ := err.(*serverFatal)
	if sf == nil || !sf.asError {
		resp = appendErrorResponse(nil, &clientError{Severity: "ERROR", Code: codeConnectionFailure,
			Message: "the server connection was lost during the transaction; it did not commit",
			Hint:    "Retry the transaction: the session is still usable."})
	} // else the client has the server's own error
	for range syncs {
		resp = appendMessage(resp, 'Z', []byte{'I'})
	}
	return resp, nil
}
