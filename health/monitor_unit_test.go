package health

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/pgrouter/pgrouter/topology"
)

// fakeCluster answers probes from a table the test edits.
type fakeCluster struct {
	mu      sync.Mutex
	results map[string]fakeResult // by address
	probes  int
	open    map[string]int // probers not yet closed, by address
}

type fakeResult struct {
	h   topology.Health
	err error
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{results: map[string]fakeResult{}, open: map[string]int{}}
}

func (f *fakeCluster) set(addr string, h topology.Health, err error) {
	f.mu.Lock()
	f.results[addr] = fakeResult{h, err}
	f.mu.Unlock()
}

func (f *fakeCluster) count() (probes int, open int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.open {
		open += n
	}
	return f.probes, open
}

func (f *fakeCluster) newProber(m topology.Member, _ Config) prober {
	f.mu.Lock()
	f.open[m.Addr]++
	f.mu.Unlock()
	return &fakeProber{f: f, addr: m.Addr}
}

type fakeProber struct {
	f    *fakeCluster
	addr string
}

func (p *fakeProber) probe(ctx context.Context) (topology.Health, error) {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	p.f.probes++
	r, ok := p.f.results[p.addr]
	if !ok {
		return topology.Health{}, errors.New("connection refused")
	}
	return r.h, r.err
}

func (p *fakeProber) close() {
	p.f.mu.Lock()
	p.f.open[p.addr]--
	p.f.mu.Unlock()
}

// waitSnapshot polls the feed until cond holds or the deadline passes.
func waitSnapshot(t *testing.T, feed *topology.Feed, what string, cond func(*topology.Snapshot) bool) *topology.Snapshot {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		s, changed := feed.Load()
		if cond(s) {
			return s
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; last snapshot %+v", what, s)
		}
	}
}

func roleOf(s *topology.Snapshot, name string) topology.Role {
	m, _ := s.Member(name)
	return m.Role
}

func TestMonitorFake(t *testing.T) {
	f := newFakeCluster()
	f.set("a:1", topology.Health{Role: P, Timeline: 1, WALPosition: 100}, nil)
	f.set("b:1", topology.Health{Role: S, Timeline: 1, WALPosition: 60}, nil)

	reg := prometheus.NewRegistry()
	feed := &topology.Feed{}
	feed.Publish(&topology.Snapshot{Version: 41})
	m := NewMonitor(Config{Interval: 2 * time.Millisecond, FailureThreshold: 2}, feed, zaptest.NewLogger(t), NewMetrics(reg))
	m.newProber = f.newProber
	var evMu sync.Mutex
	var events []topology.Event
	m.OnEvent = func(e topology.Event) {
		evMu.Lock()
		events = append(events, e)
		evMu.Unlock()
	}
	m.SetMembers([]topology.Member{{Name: "b", Addr: "b:1"}, {Name: "a", Addr: "a:1"}})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()

	s := waitSnapshot(t, feed, "a primary, b standby", func(s *topology.Snapshot) bool {
		return roleOf(s, "a") == P && roleOf(s, "b") == S
	})
	if s.Version <= 41 {
		t.Errorf("version %d does not continue from the feed's 41", s.Version)
	}
	if b, _ := s.Member("b"); b.Health.ReplayLagBytes != 40 {
		t.Errorf("b lag = %d, want 40", b.Health.ReplayLagBytes)
	}

	// Nothing changes: probes go on, versions do not.
	probes, _ := f.count()
	for p, _ := f.count(); p < probes+20; p, _ = f.count() {
		runtime.Gosched()
	}
	if s2, _ := feed.Load(); s2.Version != s.Version {
		t.Errorf("published version %d without a change (was %d)", s2.Version, s.Version)
	}

	// Promote b by hand and kill a: the role change shows at once, the
	// old primary loses to the higher timeline before it is marked down.
	f.set("b:1", topology.Health{Role: P, Timeline: 2, WALPosition: 200}, nil)
	waitSnapshot(t, feed, "b primary", func(s *topology.Snapshot) bool { return roleOf(s, "b") == P })
	f.set("a:1", topology.Health{}, errors.New("connection refused"))
	waitSnapshot(t, feed, "a down", func(s *topology.Snapshot) bool {
		a, _ := s.Member("a")
		return !a.Health.Up && a.Health.Err == "connection refused"
	})

	// Each logged change reached OnEvent once, in order, with its time.
	evMu.Lock()
	var seen []string
	for _, e := range events {
		if e.At.IsZero() {
			t.Errorf("event without a time: %+v", e)
		}
		seen = append(seen, e.Member+" "+e.Kind+" "+e.From+">"+e.To)
	}
	evMu.Unlock()
	for _, want := range []string{"b role standby>primary", "a availability up>down"} {
		if !slices.Contains(seen, want) {
			t.Errorf("no event %q in %v", want, seen)
		}
	}
	if v := metricValue(t, reg, "pgrouter_member_role", "b", "primary"); v != 1 {
		t.Errorf("pgrouter_member_role{b,primary} = %v", v)
	}
	if v := metricValue(t, reg, "pgrouter_role_changes_total", "standby", "b", "primary"); v != 1 {
		t.Errorf("pgrouter_role_changes_total{b,standby,primary} = %v", v)
	}
	if v := metricValue(t, reg, "pgrouter_member_up", "a"); v != 0 {
		t.Errorf("pgrouter_member_up{a} = %v", v)
	}

	// Drop a: its checker stops and closes its connection.
	m.SetMembers([]topology.Member{{Name: "b", Addr: "b:1"}})
	waitSnapshot(t, feed, "a removed", func(s *topology.Snapshot) bool { return len(s.Members) == 1 })
	if n := seriesCount(t, reg, "pgrouter_member_up"); n != 1 {
		t.Errorf("pgrouter_member_up has %d series after removal, want 1", n)
	}

	// A new address for b restarts its checker.
	f.set("b:2", topology.Health{Role: S, Timeline: 2}, nil)
	m.SetMembers([]topology.Member{{Name: "b", Addr: "b:2"}})
	waitSnapshot(t, feed, "b at new address", func(s *topology.Snapshot) bool {
		b, _ := s.Member("b")
		return b.Addr == "b:2" && b.Role == S
	})

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if _, open := f.count(); open != 0 {
		t.Fatalf("%d probers left open after Run returned", open)
	}
}

// blockingProber hangs until its context ends, as a probe to a
// blackholed host would.
type blockingProber struct{ closed chan struct{} }

func (b *blockingProber) probe(ctx context.Context) (topology.Health, error) {
	<-ctx.Done()
	return topology.Health{}, ctx.Err()
}
func (b *blockingProber) close() { close(b.closed) }

func TestMonitorStopsHungChecker(t *testing.T) {
	bp := &blockingProber{closed: make(chan struct{})}
	m := NewMonitor(Config{}, &topology.Feed{}, nil, nil)
	m.newProber = func(topology.Member, Config) prober { return bp }
	m.SetMembers([]topology.Member{{Name: "x", Addr: "x:1"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitSnapshot(t, m.feed, "x listed", func(s *topology.Snapshot) bool { return len(s.Members) == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case <-bp.closed:
	default:
		t.Fatal("Run returned before the checker closed its prober")
	}
	if s, _ := m.feed.Load(); s.Members[0].Health.Err != "" {
		t.Fatalf("cancellation recorded as a probe failure: %q", s.Members[0].Health.Err)
	}
}

func TestConfig(t *testing.T) {
	d := Config{}.WithDefaults()
	if d.Interval != 500*time.Millisecond || d.Timeout != time.Second || d.FailureThreshold != 3 ||
		d.User != "postgres" || d.Database != "postgres" || d.SSLMode != "prefer" || d.Password != "" {
		t.Fatalf("defaults = %+v", d)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Config{Interval: -1, SSLMode: "maybe"}).Validate(); err == nil {
		t.Fatal("invalid config accepted")
	}
}

// metricValue reads a gauge or counter series whose label values, in label
// name order, are values; -1 when absent.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, values ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(values) {
				continue
			}
			for i, l := range m.GetLabel() {
				if l.GetValue() != values[i] {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

func seriesCount(t *testing.T, reg *prometheus.Registry, name string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}
