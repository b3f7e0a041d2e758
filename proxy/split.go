package proxy

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router/classify"
	"github.com/pgrouter/pgrouter/topology"
)

// SplitConfig turns on the statement split on the single endpoint: each
// transaction (or statement outside one) goes to a standby when PostgreSQL's
// own grammar says it only reads, to the primary otherwise.
type SplitConfig struct {
	Classifier *classify.Classifier
	// ReadYourWrites: after a session's write commits, its reads go only
	// to a standby that has replayed it, else to the primary.
	ReadYourWrites bool
	// RYWMaxWait is how long a read waits for a standby to catch up before
	// it goes to the primary. 0: no wait.
	RYWMaxWait time.Duration
	// Functions knows user functions' volatility; nil: unknown functions
	// go to the primary.
	Functions *FunctionCatalog
}

// splitState is the per-session state of the statement split; guarded by
// pooled.mu.
type splitState struct {
	force     string        // SET pgrouter.route: primary, standby or auto
	minLSN    uint64        // SET pgrouter.min_lsn: reads must see it
	lastWrite uint64        // LSN of the session's last write
	txWrite   bool          // the held server was routed as a write
	lsnDone   chan struct{} // closed when the last write's LSN is known
	retryQ    []byte        // a lone implicit transaction sent to a standby, kept to re-run on 25006
	retrying  bool
}

// retryWrites remembers statements that a standby refused as writes
// (25006) although the classifier said read: never sent to a standby again.
var retryWrites textSet

// textSet is a set of statement texts, safe for concurrent use. Unlike a
// sync.Map, looking a text up neither boxes nor keeps it, so the text may
// be a view of a read buffer.
type textSet struct {
	mu sync.RWMutex
	m  map[string]struct{}
}

func (t *textSet) has(q string) bool {
	t.mu.RLock()
	_, ok := t.m[q]
	t.mu.RUnlock()
	return ok
}

func (t *textSet) add(q string) {
	t.mu.Lock()
	if t.m == nil {
		t.m = make(map[string]struct{})
	}
	t.m[strings.Clone(q)] = struct{}{}
	t.mu.Unlock()
}

// splitRoute decides where the transaction that the messages at the head
// of msgs start must run. It reads only complete messages up to the first
// Sync or Query.
func (ps *pooled) splitRoute(msgs []byte, cfg *Config) (classify.Route, string) {
	cl := cfg.Split.Classifier
	var parsed []namedQuery // Parses earlier in msgs, not yet recorded
	route, reason := classify.Read, "read"
	write := func(r string) { route, reason = classify.Write, r }
	for len(msgs) >= 5 {
		typ := msgs[0]
		l := int(getUint32(msgs[1:5]))
		if l < 4 || len(msgs) < 1+l {
			break
		}
		body := msgs[5 : 1+l]
		msgs = msgs[1+l:]
		switch typ {
		case 'Q':
			q := cview(body)
			r := cl.Classify(q)
			ps.noteSessionSettings(q, r)
			if retryWrites.has(q) {
				write("refused_by_standby")
			}
			applyResult(r, write)
			return ps.forced(route, reason)
		case 'P':
			i := indexZero(body)
			if i < 0 {
				break
			}
			name := unsafe.String(unsafe.SliceData(body), i)
			q := cview(body[i+1:])
			r := cl.ClassifyParse(q)
			if name != "" {
				parsed = append(parsed, namedQuery{name, q})
			}
			applyResult(r, write)
		case 'B':
			i := indexZero(body)
			if i < 0 {
				break
			}
			stmt := cview(body[i+1:])
			if stmt == "" {
				break
			}
			// Classify the statement's text again (a cache hit): what is
			// known of user functions may have changed since its Parse.
			q, ok := ps.queryOf(stmt, parsed)
			if !ok {
				write("unknown_statement")
				break
			}
			applyResult(cl.ClassifyParse(q), write)
		case 'F':
			write("function_call")
		case 'S':
			return ps.forced(route, reason)
		}
	}
	return ps.forced(route, reason)
}

type namedQuery struct{ name, query string }

// queryOf returns the text of a client's named statement.
func (ps *pooled) queryOf(name string, parsed []namedQuery) (string, bool) {
	for i := len(parsed) - 1; i >= 0; i-- {
		if parsed[i].name == name {
			return parsed[i].query, true
		}
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if st, ok := ps.stmts[name]; ok {
		return st.query, true
	}
	return "", false
}

func applyResult(r classify.Result, write func(string)) {
	switch {
	case r.Hint == "primary":
		write("hint")
	case r.Hint == "standby":
	case r.Begin && !r.BeginReadOnly:
		write("read_write_transaction")
	case r.Route == classify.Write:
		write(r.Reason)
	}
}

func (ps *pooled) forced(route classify.Route, reason string) (classify.Route, string) {
	ps.mu.Lock()
	force := ps.split.force
	ps.mu.Unlock()
	switch force {
	case "primary":
		return classify.Write, "pgrouter.route"
	case "standby":
		return classify.Read, "pgrouter.route"
	}
	return route, reason
}

// noteSessionSettings follows SET pgrouter.route and SET pgrouter.min_lsn.
// The server accepts them too (custom settings have a dot), so they are
// also sent on.
func (ps *pooled) noteSessionSettings(q string, r classify.Result) {
	if r.SetRoute != "" {
		ps.mu.Lock()
		ps.split.force = r.SetRoute
		ps.mu.Unlock()
	}
	if name, value, ok := setStatement(q); ok && strings.EqualFold(name, "pgrouter.min_lsn") {
		if lsn, err := topology.ParseLSN(value); err == nil {
			ps.mu.Lock()
			ps.split.minLSN = lsn
			ps.mu.Unlock()
		}
	}
}

// setStatement reads "SET [SESSION] name {=|TO} value" (parseSet): the
// value is the first quoted literal's text, or its first word.
func setStatement(q string) (name, value string, ok bool) {
	st, ok := parseSet(q)
	if !ok || st.reset {
		return "", "", false
	}
	v := st.value
	if strings.HasPrefix(v, "'") {
		end := skipQuoted(v, 0, '\'')
		return st.name, strings.ReplaceAll(v[1:max(end-1, 1)], "''", "'"), true
	}
	j := 0
	for j < len(v) && !isSpace(v[j]) {
		j++
	}
	return st.name, v[:j], true
}

func cstring(b []byte) string { return string(cbytes(b)) }

// cview is b up to its first NUL as a string that shares b's bytes: valid
// only while b is, for lookups and for callers that copy what they keep
// (the classifier does on a miss).
func cview(b []byte) string {
	b = cbytes(b)
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// cbytes is b up to its first NUL, in place.
func cbytes(b []byte) []byte {
	if i := indexZero(b); i >= 0 {
		return b[:i]
	}
	return b
}

// splitIntent turns a route into the router's intent for this transaction.
func splitIntent(in sessionIntent, route classify.Route) sessionIntent {
	in.readOnly = route == classify.Read
	in.primaryOnly = route == classify.Write
	return in
}

// replayedAtLeast reports whether standby m is known to have replayed
// lsn: by its health check, or by what a session last read there.
func (s *Server) replayedAtLeast(m topology.MemberState, lsn uint64) bool {
	if m.Health.WALPosition >= lsn {
		return true
	}
	v, ok := s.replayed.Load(m.Name)
	return ok && v.(*atomic.Uint64).Load() >= lsn
}

// noteReplayed records that standby member has replayed lsn.
func (s *Server) noteReplayed(member string, lsn uint64) {
	v, ok := s.replayed.Load(member)
	if !ok {
		v, _ = s.replayed.LoadOrStore(member, new(atomic.Uint64))
	}
	seen := v.(*atomic.Uint64)
	for {
		old := seen.Load()
		if old >= lsn || seen.CompareAndSwap(old, lsn) {
			return
		}
	}
}

// readSees reports whether a standby server has replayed lsn: from what
// is known of it (replayedAtLeast), else by asking the server.
func (ps *pooled) readSees(sc *pool.ServerConn, member topology.MemberState, lsn uint64, maxWait time.Duration) bool {
	srv := ps.sess.srv
	if lsn == 0 || srv.replayedAtLeast(member, lsn) {
		return true
	}
	deadline := time.Now().Add(maxWait)
	for {
		v, err := queryLSN(sc, "SELECT pg_last_wal_replay_lsn()")
		if err != nil {
			return false
		}
		srv.noteReplayed(member.Name, v)
		if v >= lsn {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// queryLSN runs a one-value LSN query on a held server and parses it.
func queryLSN(sc *pool.ServerConn, q string) (uint64, error) {
	_ = sc.SetDeadline(time.Now().Add(5 * time.Second))
	defer sc.SetDeadline(time.Time{})
	if _, err := sc.Write(queryMessage(q)); err != nil {
		return 0, err
	}
	val, err := readUntilReady(sc)
	if err != nil {
		return 0, err
	}
	v, _ := topology.ParseLSN(val)
	return v, nil
}

// learnLastWrite learns the LSN of the write transaction that just ended
// on the primary server sc (still held, not yet given back) and returns
// the ParameterStatus pgrouter.last_write_lsn that reports it to the
// client. It closes done, which the session's next read waits for.
func (ps *pooled) learnLastWrite(sc *pool.ServerConn, done chan struct{}) ([]byte, error) {
	defer close(done)
	lsn, err := queryLSN(sc, "SELECT pg_current_wal_insert_lsn()")
	if err != nil {
		if l := ps.sess.debugLog(); l != nil {
			l.Debug("cannot read the write's LSN", zap.Error(err))
		}
		return nil, err
	}
	ps.mu.Lock()
	if lsn > ps.split.lastWrite {
		ps.split.lastWrite = lsn
	}
	ps.mu.Unlock()
	return appendParameterStatus(nil, "pgrouter.last_write_lsn", topology.FormatLSN(lsn)), nil
}

// waitLastWrite blocks a new transaction until the previous write's LSN is
// known, so a read right after a write can never miss it.
func (ps *pooled) waitLastWrite(ctx context.Context) uint64 {
	ps.mu.Lock()
	ch := ps.split.lsnDone
	ps.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
	return ps.readNeed()
}

var errRetryOnPrimary = errors.New("retry on the primary")

// acquireSplit classifies the transaction at the head of msgs and borrows
// a server where it may run; a read after the session's own write goes to
// a standby only once that standby has replayed the write.
func (ps *pooled) acquireSplit(ctx context.Context, cfg *Config, in sessionIntent, msgs []byte) (*pool.ServerConn, error) {
	route, reason := ps.splitRoute(msgs, cfg)
	wrote := route == classify.Write
	if l := ps.sess.debugLog(); l != nil && len(msgs) > 0 {
		l.Debug("split route", zap.String("first", string(msgs[:1])), zap.Stringer("route", route), zap.String("reason", reason))
	}
	ps.sess.srv.metrics.splitRoutes.WithLabelValues(routeName(route), reason).Inc()
	var need uint64
	if route == classify.Read && ps.splitCfg.ReadYourWrites {
		need = ps.waitLastWrite(ctx)
	}
	sc, err := ps.acquire(ctx, cfg, splitIntent(in, route))
	if err != nil {
		return nil, err
	}
	ps.mu.Lock()
	routed, state := ps.routed, ps.routedState
	ps.mu.Unlock()
	if route == classify.Read && routed == topology.RoleStandby && need > 0 &&
		!ps.readSees(sc, state, need, ps.splitCfg.RYWMaxWait) {
		ps.release(sc, true)
		ps.sess.srv.metrics.splitRoutes.WithLabelValues("primary", "read_your_writes").Inc()
		route = classify.Write
		if sc, err = ps.acquire(ctx, cfg, splitIntent(in, classify.Write)); err != nil {
			return nil, err
		}
		ps.mu.Lock()
		routed = ps.routed
		ps.mu.Unlock()
	}
	ps.splitLent(wrote, routed, msgs)
	return sc, nil
}

// splitLent records what the split must know of a lend: whether it runs a
// write on the primary (whose LSN is learnt at its end) and the messages
// of a lone read sent to a standby, to run again on the primary if the
// standby refuses it.
func (ps *pooled) splitLent(wrote bool, routed topology.Role, msgs []byte) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	// A read that fell back to the primary wrote nothing: no LSN to learn.
	ps.split.txWrite = routed == topology.RolePrimary && wrote
	ps.split.retryQ = ps.split.retryQ[:0]
	// A read sent to a standby outside a transaction, whole in this chunk
	// (a Query, or messages ending with Sync), can be run again on the
	// primary if the standby refuses it as a write (25006).
	if routed == topology.RoleStandby && ps.txStatus != 'T' && endsImplicitTransaction(msgs) {
		ps.split.retryQ = append(ps.split.retryQ, msgs...)
	}
}

// endsImplicitTransaction reports whether msgs is whole messages whose
// last, and only, Sync or Query is the last message.
func endsImplicitTransaction(msgs []byte) bool {
	syncs := 0
	var last byte
	for len(msgs) >= 5 {
		l := int(getUint32(msgs[1:5]))
		if l < 4 || len(msgs) < 1+l {
			return false
		}
		last = msgs[0]
		if last == 'S' || last == 'Q' {
			syncs++
		}
		msgs = msgs[1+l:]
	}
	return len(msgs) == 0 && syncs == 1 && (last == 'S' || last == 'Q')
}

func routeName(r classify.Route) string {
	if r == classify.Read {
		return "standby"
	}
	return "primary"
}

// pendingLSN returns the channel to close once the LSN of the write
// that just ended is known, or nil when it was not a write.
func (ps *pooled) pendingLSN() chan struct{} {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ch := ps.split.lsnDone
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil // an earlier one, already done
	default:
		return ch
	}
}

// retryOnPrimary reports whether an ErrorResponse from a standby is a
// read-only-transaction refusal (25006) of a statement that may be run
// again on the primary: a lone Query outside a transaction.
func (ps *pooled) retryOnPrimary(errBody []byte, flushed bool) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if len(ps.split.retryQ) == 0 || flushed || errorField(errBody, 'C') != "25006" {
		return false
	}
	syncs := 0
	for _, f := range ps.fifo {
		if f.kind == fifoSync {
			syncs++
		}
	}
	if syncs != 1 {
		return false
	}
	ps.split.retrying = true
	return true
}

// rerunOnPrimary sends the kept Query to a primary server and makes it the
// held server; the statement is remembered as a write. Without a primary
// server it returns none and the answer the client must get.
func (ps *pooled) rerunOnPrimary() (*pool.ServerConn, []byte, error) {
	ps.mu.Lock()
	q := ps.split.retryQ
	ps.split.retryQ, ps.split.retrying = nil, false
	ps.mu.Unlock()
	if len(q) > 5 && q[0] == 'Q' {
		retryWrites.add(cview(q[5:]))
	}
	ps.sess.srv.metrics.splitRoutes.WithLabelValues("primary", "refused_by_standby").Inc()
	sc, err := ps.acquire(context.Background(), ps.cfg, splitIntent(ps.in, classify.Write))
	if err != nil {
		ce, ok := asClientError(err)
		if !ok {
			ce = &clientError{Severity: "ERROR", Code: codeConnectionFailure, Message: err.Error()}
		}
		return nil, appendMessage(appendErrorResponse(nil, ce), 'Z', []byte{'I'}), nil
	}
	// The client's own messages go through the same rewriting as the
	// first time, now against the primary's server.
	var out []byte
	ps.mu.Lock()
	ps.server = sc
	ps.fifo = ps.fifo[:0]
	ps.dirty = false
	ps.split.txWrite = true
	for m := q; len(m) >= 5; {
		l := int(getUint32(m[1:5]))
		out = ps.rewriteLocked(out, sc, m[0], m[:1+l], m[5:1+l])
		if m[0] == 'P' {
			if i := indexZero(m[5 : 1+l]); i > 0 {
				if qi := indexZero(m[6+i : 1+l]); qi >= 0 {
					retryWrites.add(cview(m[6+i : 6+i+qi]))
				}
			}
		}
		m = m[1+l:]
	}
	ps.mu.Unlock()
	if _, err := sc.Write(out); err != nil {
		return sc, nil, err
	}
	return sc, nil, nil
}

// answerRouteSetting answers a lone SET pgrouter.route (or RESET of it)
// between transactions without a server.
func (ps *pooled) answerRouteSetting(body []byte) ([]byte, bool) {
	ps.mu.Lock()
	idle := ps.server == nil
	ps.mu.Unlock()
	if !idle {
		return nil, false
	}
	// Asked of every simple query that starts a transaction: looked at
	// in place, copied only when it is the proxy's own SET.
	q := cbytes(body)
	name, _, isSet := setStatement(transientString(q))
	if !isSet || !strings.EqualFold(name, "pgrouter.route") {
		return nil, false
	}
	r := ps.splitCfg.Classifier.Classify(string(q))
	if r.SetRoute == "" {
		return nil, false
	}
	ps.mu.Lock()
	ps.split.force = r.SetRoute
	ps.mu.Unlock()
	resp := appendMessage(nil, 'C', []byte("SET\x00"))
	return appendMessage(resp, 'Z', []byte{'I'}), true
}

// readNeed is the LSN the session's next read must see: its last write's,
// or what it asked for with pgrouter.min_lsn.
func (ps *pooled) readNeed() uint64 {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return max(ps.split.lastWrite, ps.split.minLSN)
}
