package election

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pgrouter/pgrouter/dcs"
)

// memStore is an in-memory dcs.Store for one member, with a leader key
// that expires after ttl unless renewed, and a switch that makes every
// call hang until its context ends (a partition).
type memStore struct {
	dcs.Store
	name string
	ttl  time.Duration

	mu          sync.Mutex
	leader      string
	expires     time.Time
	lastRenewed time.Time
	partitioned bool
	cluster     dcs.Cluster // the rest of the state
}

func newMemStore(name string, ttl time.Duration) *memStore {
	return &memStore{name: name, ttl: ttl, cluster: dcs.Cluster{Members: map[string]dcs.Member{}, Initialized: "1"}}
}

// wait blocks while partitioned, until ctx ends.
func (m *memStore) wait(ctx context.Context) error {
	m.mu.Lock()
	p := m.partitioned
	m.mu.Unlock()
	if !p {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func (m *memStore) holder() string {
	if m.leader != "" && time.Now().After(m.expires) {
		m.leader = ""
	}
	return m.leader
}

func (m *memStore) Load(ctx context.Context) (*dcs.Cluster, error) {
	if err := m.wait(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.cluster
	c.Leader = m.holder()
	c.Members = map[string]dcs.Member{}
	for k, v := range m.cluster.Members {
		c.Members[k] = v
	}
	return &c, nil
}

func (m *memStore) Watch(ctx context.Context, _ bool, _ func()) error { <-ctx.Done(); return nil }

func (m *memStore) PublishMember(ctx context.Context, mem dcs.Member, _ bool) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	mem.Name = m.name
	m.cluster.Members[m.name] = mem
	return nil
}

func (m *memStore) DeleteMember(context.Context) error { return nil }

func (m *memStore) Acquire(ctx context.Context, _ bool) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := m.holder(); h != "" && h != m.name {
		return dcs.ErrNotLeader
	}
	m.leader, m.expires, m.lastRenewed = m.name, time.Now().Add(m.ttl), time.Now()
	return nil
}

func (m *memStore) Renew(ctx context.Context) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holder() != m.name {
		return dcs.ErrLost
	}
	m.expires, m.lastRenewed = time.Now().Add(m.ttl), time.Now()
	return nil
}

func (m *memStore) Release(ctx context.Context) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holder() == m.name {
		m.leader = ""
	}
	return nil
}

func (m *memStore) SetStatus(ctx context.Context, s dcs.Status) error  { return m.wait(ctx) }
func (m *memStore) SetSync(ctx context.Context, s dcs.Sync) error      { return m.wait(ctx) }
func (m *memStore) SetInitialized(ctx context.Context, _ string) error { return m.wait(ctx) }
func (m *memStore) ClearSwitchover(ctx context.Context) error          { return m.wait(ctx) }
func (m *memStore) Close() error                                       { return nil }
func (m *memStore) set(f func(*memStore))                              { m.mu.Lock(); f(m); m.mu.Unlock() }
func (m *memStore) get(f func(*memStore))                              { m.mu.Lock(); f(m); m.mu.Unlock() }
func (m *memStore) RequestSwitchover(ctx context.Context, _ dcs.Switchover) error {
	return m.wait(ctx)
}

// fakePG is a PostgreSQL that does what it is told at once and records
// stops.
type fakePG struct {
	Postgres
	mu                  sync.Mutex
	running, inRecovery bool
	stops               []stopCall
}

type stopCall struct {
	mode string
	at   time.Time
}

func (p *fakePG) Observe(context.Context) PGState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PGState{Initialized: true, StandbySignal: p.inRecovery, Running: p.running, Answering: p.running,
		InRecovery: p.inRecovery, Timeline: 1, ReceivedLSN: 100, ReplayedLSN: 100}
}

func (p *fakePG) Stop(_ context.Context, mode string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		p.stops = append(p.stops, stopCall{mode, time.Now()})
	}
	p.running = false
	return nil
}

func (p *fakePG) Start(_ context.Context, o ServerOptions) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running, p.inRecovery = true, o.Standby
	return nil
}

func (p *fakePG) Promote(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inRecovery = false
	return nil
}

func (p *fakePG) Reconfigure(context.Context, ServerOptions) error { return nil }
func (p *fakePG) Rewind(context.Context, dcs.Member) error         { return nil }

func (p *fakePG) do(f func(*fakePG)) { p.mu.Lock(); f(p); p.mu.Unlock() }

func waitUntil(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startLeader runs an agent that becomes the leader of a one-member
// cluster whose server already runs as primary.
func startLeader(t *testing.T) (*Agent, *memStore, *fakePG, context.CancelFunc, chan error) {
	t.Helper()
	cfg := Config{Name: "a", Scope: "s", Rules: Rules{TTL: 2 * time.Second, RenewDeadline: 600 * time.Millisecond, RetryPeriod: 100 * time.Millisecond}}
	store := newMemStore("a", cfg.TTL)
	store.cluster.Status = dcs.Status{Leader: "a", Timeline: 1, LSN: 100}
	pg := &fakePG{running: true}
	a, err := NewAgent(Options{Config: cfg, Store: store, Postgres: pg, ConnAddr: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitUntil(t, 5*time.Second, "leadership", a.isLeader.Load)
	return a, store, pg, cancel, done
}

// TestFenceBeforeLeaseExpires: a leader cut off from the store stops its
// server before the lease can expire, so nobody else can be promoted while
// it still takes writes.
func TestFenceBeforeLeaseExpires(t *testing.T) {
	a, store, pg, cancel, done := startLeader(t)
	time.Sleep(300 * time.Millisecond) // a few renewals
	store.set(func(m *memStore) { m.partitioned = true })
	waitUntil(t, 5*time.Second, "fencing", func() bool {
		var n int
		pg.do(func(p *fakePG) { n = len(p.stops) })
		return n > 0
	})
	var last, expires time.Time
	store.get(func(m *memStore) { last, expires = m.lastRenewed, m.expires })
	var stop stopCall
	pg.do(func(p *fakePG) { stop = p.stops[0] })
	if stop.mode != "immediate" {
		t.Errorf("fenced with a %s stop, want immediate", stop.mode)
	}
	// A follower may take over as early as TTL − 1s after the last renewal.
	if earliest := last.Add(a.cfg.TTL - time.Second); !stop.at.Before(earliest) {
		t.Errorf("stopped %v after the last renewal, not before a follower could take over (%v)", stop.at.Sub(last), earliest.Sub(last))
	}
	if !stop.at.Before(expires) {
		t.Errorf("stopped after the lease expired")
	}
	if a.isLeader.Load() {
		t.Error("still claims leadership after fencing")
	}
	t.Logf("fenced %v after the last renewal (renew deadline %v, lease %v)", stop.at.Sub(last).Round(time.Millisecond), a.cfg.RenewDeadline, a.cfg.TTL)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestLeaderReleasesWhenPostgresDies: the lease goes at once, without
// waiting for it to expire.
func TestLeaderReleasesWhenPostgresDies(t *testing.T) {
	_, store, pg, cancel, done := startLeader(t)
	crashed := time.Now()
	pg.do(func(p *fakePG) { p.running = false })
	waitUntil(t, 2*time.Second, "release", func() bool {
		var h string
		store.get(func(m *memStore) { h = m.holder() })
		return h == ""
	})
	if d := time.Since(crashed); d > time.Second {
		t.Errorf("released %v after the crash, want within a loop interval or two", d)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestShutdownStopsThenReleases: a leader stopping cleanly stops its
// server (fast, so standbys get its last WAL) before the lease goes.
func TestShutdownStopsThenReleases(t *testing.T) {
	_, store, pg, cancel, done := startLeader(t)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var stops []stopCall
	pg.do(func(p *fakePG) { stops = p.stops })
	var h string
	store.get(func(m *memStore) { h = m.holder() })
	if len(stops) != 1 || stops[0].mode != "fast" || h != "" {
		t.Fatalf("stops %v, holder %q; want one fast stop and no holder", stops, h)
	}
}

func (s stopCall) String() string { return fmt.Sprintf("%s@%s", s.mode, s.at.Format("15:04:05.000")) }
