package election

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/dcs"
)

// Options are the agent's parts.
type Options struct {
	Config   Config
	Store    dcs.Store
	Postgres Postgres
	// ConnAddr is host:port where the local PostgreSQL listens, as the
	// other members and the proxy reach it.
	ConnAddr string
	// APIAddr is the agent's HTTP API, published for tools.
	APIAddr string
	// Warm is true when the server runs with hot_standby=off.
	Warm    bool
	Log     *zap.Logger
	Metrics *Metrics
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Agent runs the election for one member. Run drives it; the HTTP API
// reads its view concurrently.
//
// States, per member:
//
//	follower  no lease: publish state, follow the leader (start, re-point,
//	          rewind, re-clone), or take part in an election when no one
//	          leads (Choose), or bootstrap an empty cluster
//	leader    holds the lease: a leader loop runs under its own context
//	          (promote or bootstrap first, then publish, sync standby,
//	          switchover) while Run renews; losing the lease fences
//	          PostgreSQL (immediate stop) before anyone else can take it
type Agent struct {
	cfg     Config
	store   dcs.Store
	pg      Postgres
	log     *zap.Logger
	metrics *Metrics
	self    dcs.Member
	now     func() time.Time

	wake     chan struct{} // cap 1: a store change or a timer wakes the loop
	isLeader atomic.Bool
	view     atomic.Pointer[View]

	mu         sync.Mutex
	state      string     // what the agent is doing; guarded by mu
	reason     string     // why the last action was taken; guarded by mu
	role       string     // last role logged; guarded by mu
	lastSelf   dcs.Member // last record published; guarded by mu
	lastLogged map[string]time.Time

	// Owned by the follower loop.
	noLeaderSince     time.Time
	notStreamingSince time.Time
	startFailedSince  time.Time
	waitingFor        string
	lastChoice        string
}

// NewAgent checks the configuration and returns an agent.
func NewAgent(o Options) (*Agent, error) {
	cfg := o.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if o.Store == nil || o.Postgres == nil {
		return nil, errors.New("election: store and postgres are required")
	}
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	a := &Agent{
		cfg:        cfg,
		store:      o.Store,
		pg:         o.Postgres,
		log:        log.With(zap.String("member", cfg.Name)),
		metrics:    o.Metrics,
		self:       dcs.Member{Name: cfg.Name, ConnAddr: o.ConnAddr, APIAddr: o.APIAddr, Warm: o.Warm},
		now:        now,
		wake:       make(chan struct{}, 1),
		state:      "starting",
		lastLogged: map[string]time.Time{},
	}
	a.view.Store(&View{Name: cfg.Name, Scope: cfg.Scope, Role: dcs.RoleUnknown, State: "starting"})
	return a, nil
}

// acquisition is how this member came to hold the leader key.
type acquisition struct {
	kind   string // bootstrap, failover, switchover, resume
	at     time.Time
	reason string
}

func (a *Agent) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Run takes part in the election until ctx ends; then it stops
// PostgreSQL (a leader first stops it, so its standbys receive everything,
// then releases the lease) and removes its member record.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wctx, stopWatch := context.WithCancel(ctx)
	wg.Go(func() { _ = a.store.Watch(wctx, false, a.poke) })
	defer func() {
		stopWatch()
		wg.Wait()
	}()
	a.log.Info("agent started", zap.String("scope", a.cfg.Scope), zap.String("postgres", a.self.ConnAddr),
		zap.Duration("ttl", a.cfg.TTL), zap.Duration("renew_deadline", a.cfg.RenewDeadline),
		zap.Duration("retry_period", a.cfg.RetryPeriod), zap.Bool("synchronous", a.cfg.Synchronous))
	for ctx.Err() == nil {
		acq, ok := a.follow(ctx)
		if !ok {
			break
		}
		a.hold(ctx, acq)
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a.setReason("agent shutting down")
	if err := a.pg.Stop(sctx, "fast"); err != nil {
		a.log.Error("stop postgres", zap.Error(err))
	}
	a.noteRole(dcs.RoleStopped)
	dctx, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	_ = a.store.DeleteMember(dctx)
	a.log.Info("agent stopped")
	return nil
}

// follow runs the follower loop until this member acquires the leader
// key (true) or ctx ends (false).
func (a *Agent) follow(ctx context.Context) (acquisition, bool) {
	a.setState("following")
	t := time.NewTicker(a.cfg.RetryPeriod)
	defer t.Stop()
	for {
		if acq, ok := a.followTick(ctx); ok {
			return acq, true
		}
		select {
		case <-ctx.Done():
			return acquisition{}, false
		case <-t.C:
		case <-a.wake:
		}
	}
}

// followTick observes, publishes and takes at most one step.
func (a *Agent) followTick(ctx context.Context) (acquisition, bool) {
	st := a.pg.Observe(ctx)
	if ctx.Err() != nil {
		return acquisition{}, false
	}
	lctx, cancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
	cl, err := a.store.Load(lctx)
	cancel()
	if err != nil {
		a.every("load", 10*time.Second, func() { a.log.Warn("cannot read the consensus store", zap.Error(err)) })
		a.setView(st, nil, err)
		a.noLeaderSince = time.Time{}
		return acquisition{}, false
	}
	firstNoLeader := cl.Leader == "" && a.noLeaderSince.IsZero()
	a.publish(ctx, st, cl, firstNoLeader)
	a.setView(st, cl, nil)

	switch {
	case !st.Initialized:
		return a.emptyDataDir(ctx, st, cl)
	case cl.Leader == "":
		return a.noLeader(ctx, st, cl)
	case cl.Leader == a.cfg.Name:
		return a.ownStaleKey(ctx, st)
	default:
		a.noLeaderSince = time.Time{}
		a.followLeader(ctx, st, cl)
		return acquisition{}, false
	}
}

// emptyDataDir bootstraps the cluster or clones the leader.
func (a *Agent) emptyDataDir(ctx context.Context, st PGState, cl *dcs.Cluster) (acquisition, bool) {
	if st.Running {
		// The data directory went away under a running follower.
		a.act("data directory is gone: stopping postgres", func() error {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return a.pg.Stop(sctx, "immediate")
		})
		return acquisition{}, false
	}
	if cl.Leader == "" || cl.Leader == a.cfg.Name {
		if cl.Initialized == "" && cl.Bootstrapping == "" && cl.Leader == "" {
			at := a.now()
			err := a.store.Acquire(ctx, true)
			if err == nil {
				return acquisition{kind: "bootstrap", at: at, reason: "no cluster yet: this member won the bootstrap race"}, true
			}
			if !errors.Is(err, dcs.ErrInitialized) && !errors.Is(err, dcs.ErrNotLeader) {
				a.every("bootstrap", 10*time.Second, func() { a.log.Warn("bootstrap race", zap.Error(err)) })
			}
		}
		if cl.Leader == a.cfg.Name {
			a.releaseStaleKey(ctx, "empty data directory")
		}
		a.waiting("empty data directory: waiting for a leader to clone from")
		return acquisition{}, false
	}
	leader, ok := cl.Members[cl.Leader]
	if !ok || leader.Role != dcs.RolePrimary {
		a.waiting("empty data directory: waiting for leader " + cl.Leader + " to run as primary")
		return acquisition{}, false
	}
	a.setReason("empty data directory: cloning leader " + leader.Name)
	a.log.Info("cloning the leader", zap.String("leader", leader.Name), zap.String("reason", "empty data directory"))
	a.setState("cloning")
	began := a.now()
	if err := a.pg.Clone(ctx, leader); err != nil {
		a.log.Error("clone failed", zap.String("leader", leader.Name), zap.Error(err))
		a.setState("clone failed")
		return acquisition{}, false
	}
	a.metrics.rejoined("clone")
	a.log.Info("cloned the leader", zap.String("leader", leader.Name), zap.Duration("took", a.now().Sub(began)))
	a.startStandby(ctx, &leader)
	return acquisition{}, false
}

// settle is how long a member that would win an election with several
// eligible members waits for the others to publish fresh positions.
func (a *Agent) settle() time.Duration { return a.cfg.RetryPeriod / 2 }

func (a *Agent) policy() Policy {
	return Policy{MaxLagOnFailover: a.cfg.MaxLagOnFailover, Synchronous: a.cfg.Synchronous, SwitchoverWindow: 2 * a.cfg.TTL}
}

// noLeader takes part in an election.
func (a *Agent) noLeader(ctx context.Context, st PGState, cl *dcs.Cluster) (acquisition, bool) {
	if cl.Bootstrapping != "" {
		a.waiting("member " + cl.Bootstrapping + " is bootstrapping the cluster")
		return acquisition{}, false
	}
	now := a.now()
	if a.noLeaderSince.IsZero() {
		a.noLeaderSince = now
		a.log.Info("no leader: election", zap.Int64("revision", cl.Rev))
		time.AfterFunc(a.settle(), a.poke)
	}
	members := maps.Clone(cl.Members)
	members[a.cfg.Name] = a.lastPublished()
	view := *cl
	view.Members = members
	if !st.Running {
		if !st.StandbySignal {
			// A stopped former primary waits to be rewound by whoever
			// takes over; it starts only when no one else can.
			delete(view.Members, a.cfg.Name)
			if other := Choose(&view, a.policy(), now); other.Name != "" {
				a.waiting("former primary stays stopped: " + other.Name + " should take over")
				return acquisition{}, false
			}
		}
		a.setReason("no leader: starting postgres as a standby to take part in the election")
		a.startStandby(ctx, nil)
		return acquisition{}, false
	}
	choice := Choose(&view, a.policy(), now)
	if choice.Name != a.cfg.Name {
		if key := choice.Name + "|" + choice.Reason; key != a.lastChoice {
			a.lastChoice = key
			a.log.Info("election: not this member", zap.String("winner", choice.Name), zap.String("reason", choice.Reason),
				zap.String("why_not_me", choice.Rejected[a.cfg.Name]))
		}
		return acquisition{}, false
	}
	switchover := choice.Reason == "switchover target"
	if choice.Eligible > 1 && !switchover && now.Sub(a.noLeaderSince) < a.settle() {
		return acquisition{}, false // let the others publish fresh positions first
	}
	at := a.now()
	if err := a.store.Acquire(ctx, false); err != nil {
		if !errors.Is(err, dcs.ErrNotLeader) {
			a.log.Warn("acquire the leader key", zap.Error(err))
		}
		return acquisition{}, false
	}
	kind := "failover"
	switch {
	case switchover:
		kind = "switchover"
	case st.Answering && !st.InRecovery:
		kind = "resume"
	}
	return acquisition{kind: kind, at: at, reason: choice.Reason}, true
}

// ownStaleKey handles a leader key that names this member while it is not
// leading: an agent that restarted. It adopts the key when PostgreSQL
// still runs as primary, else gives it up for an election.
func (a *Agent) ownStaleKey(ctx context.Context, st PGState) (acquisition, bool) {
	if st.Running && st.Answering && !st.InRecovery {
		at := a.now()
		if err := a.store.Acquire(ctx, false); err == nil {
			return acquisition{kind: "resume", at: at, reason: "the leader key names this member and postgres runs as primary"}, true
		}
		return acquisition{}, false
	}
	a.releaseStaleKey(ctx, "postgres is not running as primary")
	return acquisition{}, false
}

func (a *Agent) releaseStaleKey(ctx context.Context, why string) {
	if err := a.store.Acquire(ctx, false); err != nil {
		return
	}
	if err := a.store.Release(ctx); err != nil {
		a.log.Warn("release a stale leader key", zap.Error(err))
		return
	}
	a.log.Info("released a stale leader key naming this member", zap.String("reason", why))
	a.metrics.released("stale")
}

// followLeader keeps the local server a streaming standby of the leader.
func (a *Agent) followLeader(ctx context.Context, st PGState, cl *dcs.Cluster) {
	leader, ok := cl.Members[cl.Leader]
	if !ok || leader.ConnAddr == "" {
		a.waiting("leader " + cl.Leader + " has not published its address")
		return
	}
	now := a.now()
	switch {
	case !st.Running:
		if !st.StandbySignal {
			a.rejoin(ctx, st, leader, "former primary rejoins as a standby of "+leader.Name)
			return
		}
		if !a.startFailedSince.IsZero() && now.Sub(a.startFailedSince) > a.cfg.RejoinTimeout {
			a.rejoin(ctx, st, leader, fmt.Sprintf("postgres has failed to start for %v", now.Sub(a.startFailedSince).Round(time.Millisecond)))
			return
		}
		a.setReason("following leader " + leader.Name)
		a.startStandby(ctx, &leader)
		a.notStreamingSince = now
	case st.Answering && !st.InRecovery:
		a.log.Warn("demoting: postgres runs as primary but another member holds the leader key",
			zap.String("leader", leader.Name))
		a.metrics.demoted()
		a.rejoin(ctx, st, leader, "demoted: "+leader.Name+" holds the leader key")
	case st.Upstream != leader.Name:
		a.setReason("following new leader " + leader.Name)
		a.log.Info("following a new leader", zap.String("leader", leader.Name), zap.String("previous", st.Upstream))
		if err := a.pg.Reconfigure(ctx, ServerOptions{Standby: true, Upstream: &leader}); err != nil {
			a.log.Error("re-point primary_conninfo", zap.Error(err))
			return
		}
		a.metrics.rejoined("follow")
		a.notStreamingSince = now
	default:
		if a.streamingFrom(st, cl, leader) {
			a.notStreamingSince = time.Time{}
			a.waitingFor = ""
			return
		}
		if a.notStreamingSince.IsZero() {
			a.notStreamingSince = now
			return
		}
		if since := now.Sub(a.notStreamingSince); since > a.cfg.RejoinTimeout && leader.Role == dcs.RolePrimary {
			a.rejoin(ctx, st, leader, fmt.Sprintf("not streaming from %s for %v", leader.Name, since.Round(time.Millisecond)))
		}
	}
}

// streamingFrom reports whether the standby streams from leader: its WAL
// receiver says so, or, for a warm standby that takes no queries, the
// leader's fresh report does.
func (a *Agent) streamingFrom(st PGState, cl *dcs.Cluster, leader dcs.Member) bool {
	if st.Warm {
		r, ok := cl.Status.Replication[a.cfg.Name]
		return ok && r.State == "streaming" && cl.Status.Leader == leader.Name &&
			a.now().Sub(cl.Status.UpdatedAt) < 2*a.cfg.TTL
	}
	return st.Streaming && st.SenderAddr == leader.ConnAddr
}

// rejoin makes the local server a standby of leader: pg_rewind, or a
// fresh pg_basebackup when rewinding fails.
func (a *Agent) rejoin(ctx context.Context, st PGState, leader dcs.Member, why string) {
	if leader.Role != dcs.RolePrimary {
		a.waiting("to rejoin, waiting for leader " + leader.Name + " to run as primary")
		return
	}
	a.setReason(why)
	a.log.Info("rejoining", zap.String("leader", leader.Name), zap.String("reason", why))
	if st.Running {
		a.setState("stopping")
		if err := a.pg.Stop(ctx, "fast"); err != nil {
			a.log.Error("stop before rejoin", zap.Error(err))
			return
		}
		a.noteRole(dcs.RoleStopped)
	}
	a.setState("rewinding")
	began := a.now()
	if err := a.pg.Rewind(ctx, leader); err != nil {
		a.log.Warn("pg_rewind failed; cloning instead", zap.String("leader", leader.Name), zap.Error(err))
		a.setState("cloning")
		if err := a.pg.Clone(ctx, leader); err != nil {
			a.log.Error("clone failed", zap.String("leader", leader.Name), zap.Error(err))
			a.setState("clone failed")
			return
		}
		a.metrics.rejoined("clone")
		a.log.Info("re-cloned from the leader", zap.String("leader", leader.Name), zap.Duration("took", a.now().Sub(began)))
	} else {
		a.metrics.rejoined("rewind")
		a.log.Info("rewound from the leader", zap.String("leader", leader.Name), zap.Duration("took", a.now().Sub(began)))
	}
	a.startStandby(ctx, &leader)
	a.notStreamingSince = a.now()
}

func (a *Agent) startStandby(ctx context.Context, upstream *dcs.Member) {
	a.setState("starting")
	err := a.pg.Start(ctx, ServerOptions{Standby: true, Upstream: upstream})
	if err != nil {
		a.every("start", 5*time.Second, func() { a.log.Error("start postgres as a standby", zap.Error(err)) })
		a.setState("start failed")
		if a.startFailedSince.IsZero() {
			a.startFailedSince = a.now()
		}
		return
	}
	a.startFailedSince = time.Time{}
	a.setState("running")
	a.noteRole(dcs.RoleStandby)
}

// publish writes the member record and notes a role change.
func (a *Agent) publish(ctx context.Context, st PGState, cl *dcs.Cluster, force bool) {
	m := a.self
	m.Role = st.Role()
	m.State = a.getState()
	m.Timeline = st.Timeline
	m.ReceivedLSN, m.ReplayedLSN = st.ReceivedLSN, st.ReplayedLSN
	m.Streaming = st.Streaming
	m.Upstream = st.Upstream
	m.SystemID = st.SystemID
	m.UpdatedAt = a.now().UTC()
	if st.Warm && cl != nil && cl.Leader != "" {
		m.Streaming = a.streamingFrom(st, cl, cl.Members[cl.Leader])
	}
	if m.Role == dcs.RolePrimary {
		m.Upstream = ""
	}
	a.mu.Lock()
	a.lastSelf = m
	a.mu.Unlock()
	if m.Role != dcs.RoleUnknown {
		a.noteRole(m.Role)
	}
	pctx, cancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
	defer cancel()
	if err := a.store.PublishMember(pctx, m, force); err != nil && ctx.Err() == nil {
		a.every("publish", 10*time.Second, func() { a.log.Warn("publish member state", zap.Error(err)) })
	}
}

func (a *Agent) lastPublished() dcs.Member {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastSelf
}

// noteRole logs and counts a change of the local server's role, once,
// with the reason of the action that caused it.
func (a *Agent) noteRole(role string) {
	a.mu.Lock()
	from, reason := a.role, a.reason
	if from == role {
		a.mu.Unlock()
		return
	}
	a.role = role
	a.mu.Unlock()
	if from == "" {
		a.log.Info("postgres role", zap.String("role", role))
		return
	}
	if reason == "" {
		reason = "observed"
	}
	a.log.Info("role changed", zap.String("from", from), zap.String("to", role), zap.String("reason", reason))
	a.metrics.roleChanged(from, role)
}

func (a *Agent) setState(s string) {
	a.mu.Lock()
	a.state = s
	a.mu.Unlock()
}

func (a *Agent) getState() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
}

func (a *Agent) setReason(r string) {
	a.mu.Lock()
	a.reason = r
	a.mu.Unlock()
}

// act runs f once, logging it with its reason.
func (a *Agent) act(why string, f func() error) {
	a.setReason(why)
	a.log.Info(why)
	if err := f(); err != nil {
		a.log.Error(why, zap.Error(err))
	}
}

// waiting logs what the agent waits for, once per distinct wait.
func (a *Agent) waiting(what string) {
	if what == a.waitingFor {
		return
	}
	a.waitingFor = what
	a.log.Info(what)
}

// every runs f at most once per d for key (rate-limited logs).
func (a *Agent) every(key string, d time.Duration, f func()) {
	a.mu.Lock()
	last := a.lastLogged[key]
	now := a.now()
	ok := now.Sub(last) >= d
	if ok {
		a.lastLogged[key] = now
	}
	a.mu.Unlock()
	if ok {
		f()
	}
}
