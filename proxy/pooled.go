package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/proxy/auth"
	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/topology"
)

// pooled is the state of a client session in a pooled mode. Two drivers
// run the same protocol steps on it (consume, rewrite, take, forget):
// in transaction mode with plain sockets, an epoll loop thread (txLoop);
// otherwise the client loop (the session's own goroutine) reads client
// messages, acquires a server when it needs one, rewrites statement names
// and writes to the server, and the server loop (a second goroutine, while
// a server is lent) copies answers to the client and, in transaction
// mode, gives the server back at the ReadyForQuery that ends a
// transaction. mu guards what the goroutines (and cancel, role changes
// and the admin API) touch.
//
// Named prepared statements survive server changes: each client name maps
// to a server name of the proxy's own, prepared on whichever server the
// client holds, with the Parse the client sent. The server loop drops the
// ParseComplete of a Parse the proxy injected; ParseComplete, errors and
// ReadyForQuery are matched against the fifo of what was sent.
type pooled struct {
	sess  *session
	mode  PoolMode
	user  string
	db    string
	creds auth.Credentials
	pid   uint32 // the process id the client was given (0 until then)
	// desired are the settings the client wants on every server: its
	// startup parameters and the settings it changed with SET. A reported
	// setting's value is the server's text for it (ParameterStatus); any
	// other's is the SQL that sets it: a quoted literal for a startup
	// parameter, the client's own text for a SET it made (settrack.go).
	desired map[string]string
	// desiredFP fingerprints desired; see settingsFingerprint.
	desiredFP uint64
	// started is desired as the client logged in, kept from its first
	// change for a reset (answerReset); nil while nothing changed.
	started map[string]string
	// pendingSet is a SET of an unreported setting waiting for the
	// server's answer (settrack.go).
	pendingSet *settingChange

	wmu sync.Mutex // serializes writes to the client

	mu          sync.Mutex
	server      *pool.ServerConn
	fifo        []fifoEntry
	fifoBuf     [4]fifoEntry // fifo's array while it is short
	dirty       bool         // messages sent since the last Sync that need the server
	pinned      string       // why the session may not change server any more
	member      string
	attached    *pool.Pool // the pool the session is routed to, counted in its clients
	routed      topology.Role
	routedState topology.MemberState
	txStatus    byte
	stmts       map[string]*clientStmt // by the client's name; nil until the first
	stmtSeq     uint64
	// The client's unnamed statement: the body of its last Parse of it
	// after the name, and the server and lend (Returns) it was parsed in.
	// A client may Parse it, Sync, and Bind it later (pgx's
	// QueryExecModeDescribeExec): by then the session may hold another
	// server, or the same one after others used it, whose unnamed
	// statement is someone else's. The Bind then gets the Parse again.
	unnamed        []byte
	unnamedOn      *pool.ServerConn
	unnamedReturns uint32

	// A server's output is pumped to the client by a goroutine that runs
	// only while the session holds a server: an idle client costs one
	// goroutine, not two. pumping is true while it runs; queued holds a
	// server lent before the previous pump returned, which that pump takes
	// next so the client sees answers in order. Guarded by mu.
	pumping bool
	queued  []*pool.ServerConn
	pumps   sync.WaitGroup
	closing atomic.Bool // the client loop has ended

	// Statement split (nil splitCfg: off).
	splitCfg *SplitConfig
	split    splitState
	cfg      *Config
	in       sessionIntent
	loopPool *pool.Pool // set when a loop thread relays the session (txLoop): its pool at the start
}

// clientStmt is a named statement a client prepared, as the proxy keeps it
// to prepare again on every server the client is lent.
type clientStmt struct {
	server string // the proxy's name for it on servers
	parse  []byte // the Parse body after the name
	query  string
}

// remember records a client's named statement under a fresh server name
// and returns that name. Called with mu held.
func (ps *pooled) remember(name string, parse []byte, query string) string {
	if ps.stmts == nil {
		ps.stmts = make(map[string]*clientStmt)
	}
	st := &clientStmt{server: ps.newServerName(), parse: append([]byte(nil), parse...), query: query}
	ps.stmts[name] = st
	return st.server
}

// serverName returns the proxy's name for a client statement.
func (ps *pooled) serverName(name string) (string, bool) {
	st, ok := ps.stmts[name]
	if !ok {
		return "", false
	}
	return st.server, true
}

type fifoKind uint8

const (
	fifoParse     fifoKind = iota // a client Parse: its ParseComplete goes to the client
	fifoParseDrop                 // a Parse the proxy injected: its ParseComplete is dropped
	fifoSync                      // Sync, Query or FunctionCall: ends with ReadyForQuery
)

type fifoEntry struct {
	kind fifoKind
	name string
}

// settingsFromStartup returns the parameters a client asked for at startup
// that must hold on every server it is lent.
func settingsFromStartup(params []param) map[string]string {
	d := make(map[string]string)
	set := func(name, value string) {
		name = strings.ToLower(name)
		if !reportedParams[name] {
			value = string(appendQuoted(nil, value, '\'')) // see pooled.desired
		}
		d[name] = value
	}
	for _, kv := range params {
		switch kv.name {
		case "user", "database", "replication":
		case "options":
			settings, _ := splitOptions(kv.value, nil)
			for _, s := range settings {
				set(s.name, s.value)
			}
		default:
			if !strings.HasPrefix(kv.name, "_pq_.") {
				set(kv.name, kv.value)
			}
		}
	}
	return d
}

func (sess *session) runPooled(ctx context.Context, cfg *Config, in sessionIntent, params []param) error {
	ps, err := sess.startPooled(ctx, cfg, in, params)
	if err != nil {
		if ps := sess.pooled; ps != nil {
			ps.leave()
		}
		return err
	}
	if err = ps.run(ctx, cfg, in); err != errDetached {
		ps.leave()
	}
	return err
}

// leave takes the ended session out of its pool's client counts and of
// the cancel registry.
func (ps *pooled) leave() {
	ps.mu.Lock()
	ps.attachLocked(nil)
	ps.mu.Unlock()
	if ps.pid != 0 {
		ps.sess.srv.cancels.remove(ps.pid, ps.sess.clientPK)
	}
}

// startPooled authenticates the client, greets it and lends the first
// server in session mode. It is kept out of line: its frame and those of
// the calls it makes once are big, and an idle client's goroutine should
// not carry them under its client loop, or the stack that a first query
// grows can never shrink back.
//
//go:noinline
func (sess *session) startPooled(ctx context.Context, cfg *Config, in sessionIntent, params []param) (*pooled, error) {
	mode := sess.ln.cfg.PoolMode
	if err := checkPooledStartup(cfg, mode, params); err != nil {
		return nil, err
	}
	var ip net.IP
	if ta, ok := sess.client.RemoteAddr().(*net.TCPAddr); ok {
		ip = ta.IP
	}
	_, isTLS := sess.client.(*tls.Conn)
	method := cfg.Auth.HBA.Match(in.dbname, in.user, ip, isTLS)
	var secret auth.Secret
	var lookupErr error
	if method != auth.MethodTrust && method != auth.MethodReject && cfg.Auth.Lookup != nil {
		secret, lookupErr = cfg.Auth.Lookup.Secret(ctx, in.user)
		if lookupErr != nil && !errors.Is(lookupErr, auth.ErrUnknownUser) {
			sess.logger().Warn("cannot look up the user's secret", zap.String("user", in.user), zap.Error(lookupErr))
		}
	} else if cfg.Auth.Lookup == nil {
		lookupErr = auth.ErrUnknownUser
	}
	creds, err := auth.Authenticate(ctx, sess.client, in.user, method, secret, lookupErr)
	if err != nil {
		return nil, authClientError(err)
	}
	ps := sess.newPooled(cfg, mode, in, params, creds)
	_ = sess.client.SetDeadline(time.Now().Add(cfg.StartupTimeout))
	// Session mode holds a server from now on. Transaction mode greets
	// the client with what a fresh server of its pool reports, and takes
	// a server only when the first transaction starts; a pool that never
	// logged in yet lends one now to learn that (and to prove the login).
	var sc *pool.ServerConn
	var initial map[string]string
	var entry *poolEntry
	if mode == PoolTransaction {
		if entry, err = ps.poolFor(ctx, cfg, in); err != nil {
			return nil, err
		} else if m := entry.initial.Load(); m != nil {
			initial = *m
		}
	}
	if initial == nil {
		if sc, err = ps.acquire(ctx, cfg, in); err != nil {
			return nil, err
		}
		initial = sc.Initial
	}
	var held *pool.ServerConn
	if mode == PoolSession && ps.splitCfg == nil {
		held = sc
	}
	out, err := ps.greeting(nil, initial, held)
	if err != nil {
		if sc != nil {
			ps.release(sc, false)
		}
		return nil, err
	}
	if _, err := sess.client.Write(out); err != nil {
		if sc != nil {
			ps.release(sc, false)
		}
		return nil, err // runPooled's leave takes the cancel key back
	}
	_ = sess.client.SetDeadline(time.Time{})
	ps.begun()

	if sc != nil && mode == PoolTransaction {
		ps.release(sc, true)
		sc = nil
	}
	if ps.onLoop(entry) {
		ps.loopPool = entry.pool
	}
	if sc != nil {
		if ps.relaysBytes() {
			// run relays it, on a loop thread or goroutines.
			ps.mu.Lock()
			ps.server = sc
			ps.mu.Unlock()
		} else {
			ps.lend(sc)
		}
	}

	return ps, nil
}

// checkPooledStartup refuses what a pooled listener cannot serve before
// the client authenticates.
func checkPooledStartup(cfg *Config, mode PoolMode, params []param) error {
	if cfg.Auth == nil || cfg.Auth.HBA == nil {
		return fatalf(codeInvalidAuthSpec, "pooled mode needs client authentication rules")
	}
	for _, kv := range params {
		if kv.name == "replication" && kv.value != "" && !strings.EqualFold(kv.value, "false") && kv.value != "0" && !strings.EqualFold(kv.value, "off") {
			return fatalf(codeFeatureNotSupported, "replication connections are not supported in %s pooling mode", mode)
		}
	}
	return nil
}

// newPooled makes the pooled state of an authenticated client.
func (sess *session) newPooled(cfg *Config, mode PoolMode, in sessionIntent, params []param, creds auth.Credentials) *pooled {
	ps := &pooled{
		sess: sess, mode: mode, user: in.user, db: in.dbname, creds: creds,
		desired: settingsFromStartup(params),
		cfg:     cfg,
		in:      in,
	}
	// Fingerprinted now, not only when the greeting completes the
	// settings: session mode, and a pool's first login, lend a server
	// before the greeting, and a fresh server's fingerprint (0, unknown)
	// matched a desiredFP never computed, so the client's startup settings
	// were not applied there.
	ps.desiredFP = settingsFingerprint(ps.desired)
	ps.fifo = ps.fifoBuf[:0]
	if sess.ln.cfg.Split && cfg.Split != nil && cfg.Split.Classifier != nil {
		ps.splitCfg = cfg.Split
		if cfg.Split.Functions != nil {
			cfg.Split.Functions.Ensure(in.dbname)
		}
	}
	sess.pooled = ps
	return ps
}

// greeting completes the client's settings from initial, what a fresh
// server of its pool reports, gives the client a cancel key of the
// proxy's own and a process id (cancel follows whichever server the
// client holds): held's, the server a session-mode client keeps for its
// whole session, when not nil, so that pg_backend_pid() and the server's
// logs agree with it; otherwise one of the proxy's, the server changing.
// It appends to dst the messages that end the startup: AuthenticationOk
// to ReadyForQuery.
func (ps *pooled) greeting(dst []byte, initial map[string]string, held *pool.ServerConn) ([]byte, error) {
	sess := ps.sess
	ps.completeDesired(initial)
	var serverPID uint32
	if held != nil {
		serverPID = held.PID
	}
	pid, key, err := sess.srv.cancels.registerSession(sess, serverPID)
	if err != nil {
		return nil, err
	}
	ps.pid, sess.clientPK = pid, key
	size := 9 + 9 + len(key) + 6 // AuthenticationOk, BackendKeyData, ReadyForQuery
	for name, value := range initial {
		size += 7 + len(name) + max(len(value), 32) // a desired value may be longer
	}
	out := appendMessage(slices.Grow(dst, size), 'R', []byte{0, 0, 0, 0})
	for name, value := range initial {
		if v, ok := ps.desired[lowerName(name)]; ok {
			value = v
		}
		out = appendParameterStatus(out, name, value)
	}
	kd := make([]byte, 4, 4+len(key))
	putUint32(kd, pid)
	out = appendMessage(out, 'K', append(kd, key...))
	return appendMessage(out, 'Z', []byte{'I'}), nil
}

// begun counts the greeted session on its member.
func (ps *pooled) begun() {
	sess := ps.sess
	sess.srv.mu.Lock()
	sess.member, sess.role, sess.relaying = ps.member, ps.routed, true
	sess.srv.perMember[ps.member]++
	sess.srv.mu.Unlock()
	if l := sess.debugLog(); l != nil {
		l.Debug("pooled session started", zap.String("mode", string(ps.mode)), zap.String("user", ps.user), zap.String("database", ps.db))
	}
}

// takeServer takes the held server out of the session, for the caller to
// give back or close.
func (ps *pooled) takeServer() *pool.ServerConn {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	sc := ps.server
	ps.server = nil
	return sc
}

// relaysBytes says whether the session is relayed as bytes (sessLoop,
// relaySession): session mode, unless the statement split moves its
// transactions between members.
func (ps *pooled) relaysBytes() bool {
	return ps.mode == PoolSession && ps.splitCfg == nil
}

// run relays the client's transactions until it leaves, then gives back
// or closes whatever server it holds. It returns errDetached when a loop
// thread relays them: the thread finishes the session.
func (ps *pooled) run(ctx context.Context, cfg *Config, in sessionIntent) error {
	if ps.loopPool != nil || (ps.relaysBytes() && ps.sess.srv.loop != nil) {
		if handled, err := ps.runOnLoop(ctx, cfg, in); handled {
			if err != errDetached {
				if held := ps.takeServer(); held != nil {
					ps.release(held, false) // session mode's, never relayed
				}
			}
			return err
		}
	}
	ps.sess.ln.relayedGoroutines.Inc()
	if ps.relaysBytes() {
		return ps.relaySession(cfg)
	}
	err := ps.clientLoop(ctx, cfg, in)
	// Stop the server loop: give back or close whatever is held.
	ps.mu.Lock()
	held := ps.server
	idle := held != nil && !ps.inFlightLocked()
	ps.mu.Unlock()
	ps.closing.Store(true)
	if held != nil {
		if idle {
			// Unblock the server loop's read without closing the conn.
			_ = held.SetReadDeadline(time.Now())
		} else {
			held.Close()
		}
	}
	ps.pumps.Wait()
	if held = ps.takeServer(); held != nil {
		_ = held.SetReadDeadline(time.Time{})
		ps.release(held, idle && ps.reset(held, cfg))
	}
	return err
}

func authClientError(err error) error {
	var ae *auth.Error
	if errors.As(err, &ae) {
		sev := ae.Severity
		if sev == "" {
			sev = "FATAL"
		}
		return &clientError{Severity: sev, Code: ae.Code, Message: ae.Message, Detail: ae.Detail, Hint: ae.Hint}
	}
	return err
}

func appendParameterStatus(dst []byte, name, value string) []byte {
	start := len(dst)
	dst = append(dst, 'S', 0, 0, 0, 0)
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, value...)
	dst = append(dst, 0)
	putUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst
}

// completeDesired gives every setting the proxy carries a wanted value:
// the client's own, or what a fresh server reports, so a client never
// inherits what the previous borrower of a server set.
func (ps *pooled) completeDesired(initial map[string]string) {
	for name, value := range initial {
		l := lowerName(name)
		if _, ok := ps.desired[l]; !ok && settable[l] != "" {
			ps.desired[l] = value
			if ps.started != nil {
				ps.started[l] = value
			}
		}
	}
	ps.desiredFP = settingsFingerprint(ps.desired)
}

// lowerName lowers an ASCII parameter name, without allocating for one
// already in lower case nor for the mixed-case ones every server reports
// at each login and after each SET of them.
func lowerName(name string) string {
	switch name {
	case "DateStyle":
		return "datestyle"
	case "IntervalStyle":
		return "intervalstyle"
	case "TimeZone":
		return "timezone"
	}
	return strings.ToLower(name) // no allocation when already lower case
}

// fpSeed makes fingerprints comparable across sessions of one process.
var fpSeed = maphash.MakeSeed()

// settingsFingerprint hashes a set of settings independently of map
// order. It is never 0, which means "unknown" on a server.
func settingsFingerprint(m map[string]string) uint64 {
	var sum uint64
	for name, value := range m {
		var h maphash.Hash
		h.SetSeed(fpSeed)
		h.WriteString(name)
		h.WriteByte(0)
		h.WriteString(value)
		sum += h.Sum64() // order-independent; 64 bits make a collision negligible
	}
	return sum | 1
}

// poolFor routes the session and returns its pool without borrowing.
func (ps *pooled) poolFor(ctx context.Context, cfg *Config, in sessionIntent) (*poolEntry, error) {
	sess := ps.sess
	dec, err := sess.route(ctx, cfg, in)
	if err != nil {
		return nil, err
	}
	return ps.poolAt(cfg, dec), nil
}

// poolAt makes dec's member the session's and returns its pool there.
func (ps *pooled) poolAt(cfg *Config, dec router.Decision) *poolEntry {
	e := ps.entryAt(cfg, dec)
	ps.mu.Lock()
	ps.member, ps.routed = dec.Member.Name, dec.Role
	ps.attachLocked(e.pool)
	ps.mu.Unlock()
	return e
}

// acquire routes the session as it would a new one (so a transaction after
// a failover lands on the new primary, waiting up to PrimaryWait), borrows
// a server from that member's pool and applies the client's settings.
func (ps *pooled) acquire(ctx context.Context, cfg *Config, in sessionIntent) (*pool.ServerConn, error) {
	sess := ps.sess
	if err := sess.srv.waitResumed(ctx, max(cfg.PrimaryWait, cfg.Pool.WaitTimeout, time.Second)); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(max(cfg.PrimaryWait, 0))
	for {
		_, changed := sess.srv.feed.Load()
		sc, err := ps.tryAcquire(ctx, cfg, in)
		if err == nil {
			return sc, nil
		}
		// A member that cannot be reached is what a failover looks like
		// before health checks have seen it: wait for the topology to
		// change, as for a missing primary, then route again.
		var unreachable *memberUnreachable
		if !errors.As(err, &unreachable) || time.Now().After(deadline) {
			if unreachable != nil {
				return nil, unreachable.ce
			}
			return nil, err
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
		t.Stop()
	}
}

// waitTimeout is the error of a transaction that found no free server.
func (ps *pooled) waitTimeout(member string) *clientError {
	return &clientError{Severity: "ERROR", Code: codeTooManyConnections,
		Message: "no server connection became free within query-wait-timeout",
		Detail:  fmt.Sprintf("Every connection of the pool for user %q, database %q on %s is in use.", ps.user, ps.db, member)}
}

// memberUnreachable is a dial failure: worth routing again.
type memberUnreachable struct{ ce *clientError }

func (m *memberUnreachable) Error() string { return m.ce.Error() }

func (ps *pooled) tryAcquire(ctx context.Context, cfg *Config, in sessionIntent) (*pool.ServerConn, error) {
	sess := ps.sess
	dec, err := sess.route(ctx, cfg, in)
	if err != nil {
		return nil, err
	}
	e := ps.entryAt(cfg, dec)
	ps.mu.Lock()
	ps.attachLocked(e.pool)
	ps.mu.Unlock()
	sc, err := e.pool.Acquire(ctx)
	if err != nil {
		switch {
		case errors.Is(err, pool.ErrWaitTimeout):
			return nil, ps.waitTimeout(dec.Member.Name)
		case errors.Is(err, errServerRefused):
			return nil, &clientError{Severity: "FATAL", Code: "28000",
				Message: "pgrouter could not log in to " + dec.Member.Name + " as " + ps.user, Detail: err.Error()}
		case errors.Is(err, pool.ErrClosed):
			return nil, &memberUnreachable{ce: &clientError{Severity: "ERROR", Code: codeConnectionFailure,
				Message: "the pool of " + dec.Member.Name + " was closed after a role change"}}
		}
		var ae *auth.Error
		if errors.As(err, &ae) {
			return nil, &clientError{Severity: "FATAL", Code: ae.Code,
				Message: "pgrouter could not log in to " + dec.Member.Name + " as " + ps.user + ": " + ae.Message, Detail: ae.Detail}
		}
		return nil, &memberUnreachable{ce: &clientError{Severity: "ERROR", Code: codeConnectionFailure,
			Message: "pgrouter could not get a server connection to " + dec.Member.Name, Detail: err.Error()}}
	}
	if err := ps.applySettings(sc); err != nil {
		e.pool.Release(sc, false)
		return nil, &memberUnreachable{ce: &clientError{Severity: "ERROR", Code: codeConnectionFailure,
			Message: "pgrouter could not apply the session's settings on " + dec.Member.Name, Detail: err.Error()}}
	}
	ps.mu.Lock()
	ps.member, ps.routed, ps.routedState = dec.Member.Name, dec.Role, dec.Member
	ps.mu.Unlock()
	return sc, nil
}

// attachLocked counts the session among p's clients, and no longer among
// those of the pool it was routed to before. Called with mu held; p nil
// detaches.
func (ps *pooled) attachLocked(p *pool.Pool) {
	if ps.attached == p {
		return
	}
	if ps.attached != nil {
		ps.attached.Detach()
	}
	if p != nil {
		p.Attach()
	}
	ps.attached = p
}

// applySettings makes the server's settings match what the client wants,
// in one round trip, before the client's first message reaches it.
func (ps *pooled) applySettings(sc *pool.ServerConn) error {
	q, stale, _ := ps.settingsQuery(sc)
	if q == nil {
		return nil
	}
	if _, err := sc.Write(q); err != nil {
		return err
	}
	if _, err := readUntilReadyBuffered(sc); err != nil {
		return err
	}
	ps.settingsApplied(sc, stale)
	return nil
}

// settingsQuery returns the Query message that makes sc's settings the
// client's, nil when they are already, the settings it resets, which
// settingsApplied forgets once the query ran, and whether it cannot fail:
// it sets nothing but application_name, which takes any text.
func (ps *pooled) settingsQuery(sc *pool.ServerConn) (msg []byte, stale []string, safe bool) {
	if sc.SettingsFP == ps.desiredFP {
		return nil, nil, true // it matches what an earlier borrower wanted, the same as ours
	}
	safe = true
	// Built in place: the Query header first, its length set at the end.
	// The room left over takes the client's first message when the SET
	// goes in one write with it (pendingSettings.with).
	q := append(make([]byte, 0, 256), 'Q', 0, 0, 0, 0)
	for name, want := range ps.desired {
		var cur string
		var ok bool
		if reportedParams[name] {
			cur, ok = lookupFold(sc.Params, name)
		} else {
			cur, ok = sc.Applied[name]
		}
		if ok && cur == want {
			continue
		}
		q = append(q, "SET "...)
		q = appendQuoted(q, name, '"')
		q = append(q, " = "...)
		if reportedParams[name] {
			q = appendQuoted(q, want, '\'')
		} else {
			q = append(q, want...) // already SQL (see desired)
		}
		q = append(q, ';')
		safe = safe && name == "application_name"
	}
	// Settings a previous borrower asked for that this client did not.
	for name := range sc.Applied {
		if _, ok := ps.desired[name]; !ok {
			q = append(q, "RESET "...)
			q = appendQuoted(q, name, '"')
			q = append(q, ';')
			stale = append(stale, name)
		}
	}
	if len(q) == 5 {
		sc.SettingsFP = ps.desiredFP
		return nil, nil, true
	}
	q = append(q, 0)
	putUint32(q[1:], uint32(len(q)-1))
	return q, stale, safe
}

// queryMessage is a Query message of the proxy's own.
func queryMessage(q string) []byte {
	return appendMessage(make([]byte, 0, 6+len(q)), 'Q', append([]byte(q), 0))
}

// quietLocked reports whether the session is between transactions with
// nothing it sent awaiting an answer. mu held.
func (ps *pooled) quietLocked() bool {
	return len(ps.fifo) == 0 && !ps.dirty && (ps.txStatus == 'I' || ps.txStatus == 0)
}

// settingsApplied records that settingsQuery's query ran on sc.
func (ps *pooled) settingsApplied(sc *pool.ServerConn, stale []string) {
	for _, name := range stale {
		delete(sc.Applied, name)
	}
	for name, want := range ps.desired {
		if !reportedParams[name] {
			sc.Applied[name] = want
		}
	}
	sc.SettingsFP = ps.desiredFP
}

func lookupFold(m map[string]string, name string) (string, bool) {
	if v, ok := m[name]; ok {
		return v, true
	}
	for k, v := range m {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// appendQuoted appends s between two quote characters, doubling any
// inside it: an identifier with a double quote, a literal with a single one.
func appendQuoted(b []byte, s string, quote byte) []byte {
	b = append(b, quote)
	for i := 0; i < len(s); i++ {
		if s[i] == quote {
			b = append(b, quote)
		}
		b = append(b, s[i])
	}
	return append(b, quote)
}

// reset prepares a server for its next client at the end of a session:
// the configured reset query (DISCARD ALL), after which it holds no state.
func (ps *pooled) reset(sc *pool.ServerConn, cfg *Config) bool {
	if ps.mode == PoolTransaction && ps.pinned == "" {
		return true // nothing session-level was left on it
	}
	q := cfg.ServerResetQuery
	if q == "" {
		return true
	}
	_ = sc.SetDeadline(time.Now().Add(resetTimeout))
	defer sc.SetDeadline(time.Time{})
	if _, err := sc.Write(cfg.resetMsg); err != nil {
		return false
	}
	if _, err := readUntilReadyBuffered(sc); err != nil {
		return false
	}
	forgetSessionState(sc)
	return true
}

// resetTimeout bounds the wait for a server's answer to the reset query.
const resetTimeout = 5 * time.Second

// forgetSessionState records that a reset left sc with no prepared
// statement and no setting of a client's.
func forgetSessionState(sc *pool.ServerConn) {
	clear(sc.Prepared)
	clear(sc.Applied)
	sc.SettingsFP = 0
}

// release gives a server back to the pool it came from (not necessarily
// the session's current one: the statement split moves between members).
func (ps *pooled) release(sc *pool.ServerConn, reusable bool) {
	if p := sc.Pool(); p != nil {
		p.Release(sc, reusable)
		return
	}
	sc.Close()
}

// writeClient writes to the client; both loops use it.
func (ps *pooled) writeClient(b []byte) error {
	ps.wmu.Lock()
	defer ps.wmu.Unlock()
	_, err := ps.sess.client.Write(b)
	return err
}

// newServerName returns a fresh server-side name for a client statement.
func (ps *pooled) newServerName() string {
	ps.stmtSeq++
	return "pgr_" + strconv.FormatUint(ps.sess.id, 36) + "_" + strconv.FormatUint(ps.stmtSeq, 36)
}

// pin marks the session as unable to change server from now on.
func (ps *pooled) pin(reason string) {
	if ps.pinned != "" || reason == pinNone {
		return
	}
	ps.pinned = reason
	ps.sess.srv.metrics.pins.WithLabelValues(reason).Inc()
	ps.sess.logger().Info("session pinned to its server", zap.String("reason", reason))
}

// current returns the held server for cancel requests.
func (ps *pooled) current() (*pool.ServerConn, bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.server, ps.server != nil
}

// dropServerOn closes the held server if it is on member (its role
// changed): the transaction in flight fails, the client goes on.
func (ps *pooled) dropServerOn(member string) {
	ps.mu.Lock()
	sc := ps.server
	ps.mu.Unlock()
	if sc != nil && sc.Member == member {
		sc.Close()
	}
}

// movable reports whether the session may change server between
// transactions.
func (ps *pooled) movable() bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.mode == PoolTransaction && ps.pinned == ""
}

// holding returns the member of the server held now and the role it was
// routed as.
func (ps *pooled) holding() (string, topology.Role, bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.server == nil {
		return "", 0, false
	}
	return ps.server.Member, ps.routed, true
}

// entryAt returns the session's pool on dec's member, creating it.
func (ps *pooled) entryAt(cfg *Config, dec router.Decision) *poolEntry {
	srv := ps.sess.srv
	key := pool.Key{Member: dec.Member.Name, Database: ps.db, User: ps.user}
	return srv.pools.get(key, cfg.Pool, ps.creds, srv.serverConnector(dec.Member.Name, dec.Member.Addr, key))
}

// inFlightLocked reports whether the client has something outstanding on
// its server: messages sent and not yet answered, or an open
// transaction. Called with mu held.
func (ps *pooled) inFlightLocked() bool {
	return len(ps.fifo) > 0 || ps.dirty || ps.txStatus == 'T' || ps.txStatus == 'E'
}
