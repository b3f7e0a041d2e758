// Package proxy accepts PostgreSQL clients, routes each session to a
// cluster member chosen by package router from the newest topology, and
// relays the session. It speaks just enough of the protocol to do that:
// the startup phase (TLS, GSSENC refusal, cancel requests, startup
// parameters, authentication passed through) and message framing after it.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
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

// ListenerConfig is one client-facing port.
type ListenerConfig struct {
	// Name labels the listener in logs and metrics: "any", "rw" or "ro".
	Name string
	// Addr is host:port to listen on.
	Addr string
	// Kind decides where its sessions go.
	Kind router.Listener
	// MaxClientConns caps open client connections; 0 means no cap.
	MaxClientConns int
	// PoolMode is how sessions get servers; "" means passthrough.
	PoolMode PoolMode
	// Split routes each transaction of a pooled single endpoint by what
	// its statements do (Config.Split); false routes whole sessions.
	Split bool
}

// Config is the proxy's part of the configuration.
type Config struct {
	Listeners []ListenerConfig
	// UnixSocketDir, when set, also serves each listener on a Unix socket
	// in it named .s.PGSQL.PORT, PORT the listener's TCP port, as
	// PostgreSQL and PgBouncer name theirs. Read at start only.
	UnixSocketDir string
	// ClientTLS terminates TLS from clients; nil answers SSLRequest with N.
	ClientTLS *tls.Config
	// Server says how to reach members (timeout, sslmode).
	Server pool.DialConfig
	// Policy chooses among standbys.
	Policy router.Policy
	// StartupTimeout bounds each phase of a client's startup: sending its
	// startup packet, and authenticating once routed. Default 15s.
	StartupTimeout time.Duration
	// PrimaryWait is how long a read-write session waits for a primary to
	// appear before it is refused with 57P03. Default 15s; negative: no wait.
	PrimaryWait time.Duration
	// DrainTimeout is how long shutdown lets sessions end on their own
	// before closing them with 57P01. Default 30s.
	DrainTimeout time.Duration
	// MaxStartupPacket caps the startup packet size. Default 10000 bytes,
	// PostgreSQL's own limit.
	MaxStartupPacket int
	// Pool sizes the server pools of pooled listeners.
	Pool pool.Config
	// Auth authenticates clients of pooled listeners at the proxy.
	Auth *AuthConfig
	// ServerResetQuery cleans a server before another session gets it in
	// session mode (and after a pinned session). Default "DISCARD ALL".
	ServerResetQuery string
	// Split configures the statement split of listeners with Split set.
	Split *SplitConfig
	// Peer passes cancel requests between replicas of one proxy. The peer
	// list is reloadable; the peer port is bound at start only.
	Peer PeerConfig
	// RelayThreads is how many epoll loops relay sessions once they have
	// started (package loop): passthrough sessions, session-mode sessions
	// without the split, and transaction-mode sessions, split or not.
	// Sessions with TLS on either
	// side are relayed by goroutines. 0 relays every session with
	// goroutines. Read at start only.
	RelayThreads int

	// resetMsg is ServerResetQuery's Query message, built with the
	// configuration: every session-mode client's end sends it, and writers
	// copy what they cannot send at once, so one serves all.
	resetMsg []byte
}

func (c *Config) setDefaults() {
	if c.StartupTimeout <= 0 {
		c.StartupTimeout = 15 * time.Second
	}
	if c.PrimaryWait == 0 {
		c.PrimaryWait = 15 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.MaxStartupPacket <= 0 {
		c.MaxStartupPacket = 10000
	}
	if c.ServerResetQuery == "" {
		c.ServerResetQuery = "DISCARD ALL"
	}
	c.resetMsg = queryMessage(c.ServerResetQuery)
}

// Server is a running proxy: its listeners and its sessions.
type Server struct {
	cfg     atomic.Pointer[Config]
	feed    *topology.Feed
	log     *zap.Logger
	metrics *Metrics
	cancels *cancelRegistry
	// peerSlots bounds the cancel requests being passed to peers at once.
	peerSlots chan struct{}
	pools     *pools
	loop      *loop.Loop // nil when RelayThreads is 0

	listeners []*listener
	peerLn    net.Listener
	// sessionCount is sessionsOn bound once: a method value made per
	// routing decision would be a heap allocation per transaction.
	sessionCount func(member string) int
	// replayed is, per standby, the highest replay LSN a session has
	// seen there (statement split): fresher than the health checks, and
	// shared, so that a read after a write asks a standby at most once
	// for what another read has already learnt.
	replayed sync.Map // member name -> *atomic.Uint64
	// tlsOffered holds the addresses of members that answered a loop
	// thread's SSLRequest with S (sslmode prefer): their passthrough
	// sessions start on goroutines, which speak TLS, until a goroutine's
	// link to one of them is plain again.
	tlsOffered sync.Map // member address -> struct{}
	seq        atomic.Uint64
	nextID     atomic.Uint64

	mu        sync.Mutex
	sessions  map[*session]struct{}
	perMember map[string]int
	gate      pauseGate
	drained   chan struct{} // closed when sessions becomes empty while draining
	draining  bool
	wg        sync.WaitGroup
}

type listener struct {
	cfg    ListenerConfig
	ln     net.Listener
	onLoop *loop.Listener // set when loop threads accept its clients
	open   *atomic.Int64  // shared with the listener's Unix socket twin
	conns  prometheus.Gauge
	// The listener's series of per-listener counters, looked up once:
	// a lookup by label values hashes them, per client otherwise.
	accepted           prometheus.Counter
	toServer, toClient prometheus.Counter
	relayedOnLoop      prometheus.Counter
	relayedGoroutines  prometheus.Counter
	startedOnLoop      prometheus.Counter
}

func (s *Server) newListener(lc ListenerConfig, ln net.Listener) *listener {
	m := s.metrics
	return &listener{cfg: lc, ln: ln, open: new(atomic.Int64),
		conns:             m.clientConns.WithLabelValues(lc.Name),
		accepted:          m.clientConnsTotal.WithLabelValues(lc.Name),
		toServer:          m.bytes.WithLabelValues(lc.Name, "to_server"),
		toClient:          m.bytes.WithLabelValues(lc.Name, "to_client"),
		relayedOnLoop:     m.relays.WithLabelValues(lc.Name, "loop"),
		relayedGoroutines: m.relays.WithLabelValues(lc.Name, "goroutines"),
		startedOnLoop:     m.loopStartups.WithLabelValues(lc.Name),
	}
}

// New returns a proxy serving feed's topology. Call Listen, then Serve.
func New(cfg Config, feed *topology.Feed, log *zap.Logger, m *Metrics) (*Server, error) {
	if len(cfg.Listeners) == 0 {
		return nil, errors.New("proxy: no listener configured")
	}
	if log == nil {
		log = zap.NewNop()
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	cfg.setDefaults()
	s := &Server{
		feed: feed, log: log, metrics: m, cancels: newCancelRegistry(), peerSlots: make(chan struct{}, maxPeerForwards), pools: newPools(),
		sessions: make(map[*session]struct{}), perMember: make(map[string]int),
	}
	s.sessionCount = s.sessionsOn
	s.cfg.Store(&cfg)
	return s, nil
}

// clientListenConfig turns TCP keepalive on for client connections with
// the kernel's own timings: Go's default sets all three timings on every
// accepted connection, three more syscalls per client (a tenth of the
// system time of pgbench -C through a pooled port). It also listens with
// plain TCP: since Go 1.24 a listener is Multipath TCP where the kernel has
// it, and every accept and poll of it then goes through MPTCP's code (half
// a microsecond of kernel time per pgbench -C connection here) for clients
// that never speak it.
var clientListenConfig = func() net.ListenConfig {
	lc := net.ListenConfig{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1},
	}
	lc.SetMultipathTCP(false)
	return lc
}()

// Listen binds every listener; an address in use fails here, before Serve.
func (s *Server) Listen() error {
	cfg := s.cfg.Load()
	for _, lc := range cfg.Listeners {
		ln, err := clientListenConfig.Listen(context.Background(), "tcp", lc.Addr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen %s (%s): %w", lc.Addr, lc.Name, err)
		}
		l := s.newListener(lc, ln)
		s.listeners = append(s.listeners, l)
		if cfg.UnixSocketDir == "" {
			continue
		}
		path := filepath.Join(cfg.UnixSocketDir, ".s.PGSQL."+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		uln, err := listenUnix(path)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen %s (%s): %w", path, lc.Name, err)
		}
		// One client count for both: --max-client-conns caps the port,
		// whichever way clients reach it.
		twin := s.newListener(lc, uln)
		twin.open = l.open
		s.listeners = append(s.listeners, twin)
	}
	if cfg.Peer.Listen != "" {
		ln, err := net.Listen("tcp", cfg.Peer.Listen)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen %s (peer): %w", cfg.Peer.Listen, err)
		}
		s.peerLn = ln
	}
	return nil
}

// listenUnix listens on a Unix socket at path, world-writable as
// PostgreSQL's and PgBouncer's are by default (the directory's permissions
// say who may reach it). A socket file left by a process that is gone is
// replaced; one that still answers is in use.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o777); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Addr returns the bound address of the named listener ("peer" for the
// peer port), nil if none.
func (s *Server) Addr(name string) net.Addr {
	if name == "peer" && s.peerLn != nil {
		return s.peerLn.Addr()
	}
	for _, l := range s.listeners {
		if l.cfg.Name == name {
			return l.ln.Addr()
		}
	}
	return nil
}

// Config returns the configuration in force.
func (s *Server) Config() Config { return *s.cfg.Load() }

// Reload applies a new configuration to new sessions: policy, timeouts,
// TLS and server settings. Listener addresses change only on restart;
// per-listener connection caps are taken from cfg for listeners it names.
func (s *Server) Reload(cfg Config) {
	cfg.setDefaults()
	old := s.cfg.Load()
	cfg.Listeners = old.Listeners
	s.cfg.Store(&cfg)
}

// Serve accepts clients until ctx ends, then stops accepting, lets
// sessions drain for DrainTimeout, closes the rest with 57P01 and returns.
func (s *Server) Serve(ctx context.Context) error {
	if len(s.listeners) == 0 {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	if n := s.cfg.Load().RelayThreads; n > 0 {
		lp, err := loop.New(n)
		if err != nil {
			s.closeListeners()
			return err
		}
		s.loop = lp
		defer lp.Close()
	}
	var loops sync.WaitGroup
	for _, l := range s.listeners {
		if s.acceptOnLoop(ctx, l) {
			continue
		}
		loops.Add(1)
		go func() {
			defer loops.Done()
			s.acceptLoop(ctx, l)
		}()
	}
	if s.peerLn != nil {
		loops.Add(1)
		go func() {
			defer loops.Done()
			s.servePeers(ctx, s.peerLn)
		}()
	}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{}, 2)
	go func() {
		defer func() { watchDone <- struct{}{} }()
		s.watchTopology(watchCtx)
	}()
	go func() {
		defer func() { watchDone <- struct{}{} }()
		s.reapPools(watchCtx)
	}()

	<-ctx.Done()
	s.closeListeners()
	loops.Wait()
	s.drain()
	stopWatch()
	<-watchDone
	<-watchDone
	s.wg.Wait()
	s.pools.closeAll()
	return nil
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		if l.onLoop != nil {
			l.onLoop.Close()
		}
		l.ln.Close()
	}
	if s.peerLn != nil {
		s.peerLn.Close()
	}
}

func (s *Server) acceptLoop(ctx context.Context, l *listener) {
	var backoff time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: back off instead of spinning.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			s.log.Warn("accept failed", zap.String("listener", l.cfg.Name), zap.Error(err))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.admit(l) {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
				writeClientError(nc, errTooManyClients)
				nc.Close()
			}()
			continue
		}
		go s.newSession(l, nc).serve(ctx)
	}
}

var errTooManyClients = fatalf(codeTooManyConnections, "sorry, too many clients already")

// admit counts a new client of l. It reports false when l is full: the
// caller refuses the client with errTooManyClients. Otherwise the
// session's close gives back what admit took.
func (s *Server) admit(l *listener) bool {
	l.accepted.Inc()
	max := l.cfg.MaxClientConns
	if n := l.open.Add(1); max > 0 && n > int64(max) {
		l.open.Add(-1)
		s.metrics.refused.WithLabelValues(l.cfg.Name, codeTooManyConnections).Inc()
		return false
	}
	l.conns.Inc()
	s.wg.Add(1)
	return true
}

func (s *Server) track(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.sessions[sess] = struct{}{}
	return true
}

func (s *Server) untrack(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	if sess.member != "" && sess.relaying {
		s.perMember[sess.member]--
		if s.perMember[sess.member] <= 0 {
			delete(s.perMember, sess.member)
		}
	}
	if s.draining && len(s.sessions) == 0 && s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
	s.mu.Unlock()
}

// sessionsOn is the router's view of load for least-connections.
func (s *Server) sessionsOn(member string) int {
	s.mu.Lock()
	n := s.perMember[member]
	s.mu.Unlock()
	return n
}

func (s *Server) drain() {
	cfg := s.cfg.Load()
	s.mu.Lock()
	s.draining = true
	var done chan struct{}
	if len(s.sessions) > 0 {
		done = make(chan struct{})
		s.drained = done
	}
	n := len(s.sessions)
	s.mu.Unlock()
	if done == nil {
		return
	}
	s.log.Info("draining sessions", zap.Int("sessions", n), zap.Duration("deadline", cfg.DrainTimeout))
	t := time.NewTimer(cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	s.mu.Lock()
	left := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		left = append(left, sess)
	}
	s.mu.Unlock()
	s.log.Info("closing sessions left after drain deadline", zap.Int("sessions", len(left)))
	for _, sess := range left {
		if sess.kill(&clientError{Severity: "FATAL", Code: codeAdminShutdown,
			Message: "terminating connection because pgrouter is shutting down"}) {
			s.metrics.terminated.WithLabelValues("shutdown").Inc()
		}
	}
}

// watchTopology closes sessions whose member no longer has the role they
// were routed for, so that clients reconnect to the right place.
func (s *Server) watchTopology(ctx context.Context) {
	for {
		snap, changed := s.feed.Load()
		s.enforceRoles(snap)
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

func (s *Server) enforceRoles(snap *topology.Snapshot) {
	s.mu.Lock()
	var stale []*session
	var reasons []string
	staleMembers := map[string]bool{}
	for sess := range s.sessions {
		if !sess.relaying {
			continue
		}
		if sess.pooled != nil && sess.pooled.movable() {
			// A transaction-pooled session is not tied to a member: only
			// the server it holds, if any, goes.
			member, role, ok := sess.pooled.holding()
			if !ok {
				continue
			}
			if _, ok := staleReason(member, role, snap); ok {
				sess.pooled.dropServerOn(member)
				staleMembers[member] = true
			}
			continue
		}
		if why, ok := staleReason(sess.member, sess.role, snap); ok {
			stale = append(stale, sess)
			reasons = append(reasons, why)
		}
	}
	s.mu.Unlock()
	// Pooled servers on a member whose role changed are closed, so the
	// next transaction is routed again.
	s.pools.each(func(p *pool.Pool) {
		if _, ok := staleMember(p.Key().Member, snap); ok {
			staleMembers[p.Key().Member] = true
		}
	})
	for m := range staleMembers {
		s.pools.closeMember(m)
	}
	for i, sess := range stale {
		s.terminateStale(sess, reasons[i])
	}
}

// staleMember says whether pooled servers on member must go: it is no
// longer in the topology, or it is seen in a role other than the one its
// pools were serving. Pools do not record a role, so a member that is now
// in recovery while another is primary, or that was promoted, counts.
func staleMember(member string, snap *topology.Snapshot) (string, bool) {
	m, ok := snap.Member(member)
	if !ok {
		return "removed", true
	}
	if !m.Health.Up {
		return "down", true
	}
	if p, ok := router.Primary(snap); ok && p.Name != member && m.Health.Role == topology.RolePrimary {
		return "second primary", true
	}
	return "", false
}

func (s *Server) terminateStale(sess *session, why string) {
	if sess.kill(&clientError{Severity: "FATAL", Code: codeAdminShutdown,
		Message: "terminating connection because of a role change: " + why,
		Hint:    "Reconnect: pgrouter routes new sessions to the current " + sess.role.String() + "."}) {
		s.metrics.terminated.WithLabelValues("role_change").Inc()
		sess.logger().Info("closing session after role change", zap.String("reason", why))
	}
}

// staleReason says why a session routed to member as role must end, given
// the newest topology. A member that is merely unreachable keeps its
// sessions (they fail on their own if it is really gone); a member seen in
// another role, replaced as primary, or removed loses them.
func staleReason(member string, role topology.Role, snap *topology.Snapshot) (string, bool) {
	m, ok := snap.Member(member)
	if !ok {
		return fmt.Sprintf("member %s was removed from the cluster", member), true
	}
	switch role {
	case topology.RolePrimary:
		if m.Health.Up && m.Health.Role == topology.RoleStandby {
			return fmt.Sprintf("member %s is no longer the primary (now in recovery)", member), true
		}
		if p, ok := router.Primary(snap); ok && p.Name != member {
			return fmt.Sprintf("member %s is no longer the primary (the primary is now %s)", member, p.Name), true
		}
	case topology.RoleStandby:
		if m.Health.Up && m.Health.Role == topology.RolePrimary {
			return fmt.Sprintf("member %s is no longer a standby (it was promoted)", member), true
		}
	}
	return "", false
}

// Stats is a point-in-time count of sessions for the admin API.
type Stats struct {
	Listeners map[string]int `json:"listeners"` // open client connections
	Members   map[string]int `json:"members"`   // sessions relaying to each member
}

// Stats counts open sessions.
func (s *Server) Stats() Stats {
	st := Stats{Listeners: map[string]int{}, Members: map[string]int{}}
	for _, l := range s.listeners {
		st.Listeners[l.cfg.Name] = int(l.open.Load()) // a Unix socket twin shares its count
	}
	s.mu.Lock()
	for m, n := range s.perMember {
		st.Members[m] = n
	}
	s.mu.Unlock()
	return st
}
