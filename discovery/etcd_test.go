package discovery

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pgrouter/pgrouter/dcs"
	"github.com/pgrouter/pgrouter/topology"
)

func TestClaims(t *testing.T) {
	cl := &dcs.Cluster{
		Leader: "b",
		Members: map[string]dcs.Member{
			"c": {ConnAddr: "127.0.0.1:3"},
			"a": {ConnAddr: "127.0.0.1:1"},
			"b": {ConnAddr: "127.0.0.1:2"},
			"x": {}, // no address yet
		},
	}
	got := Claims(cl)
	want := []topology.Member{
		{Name: "a", Addr: "127.0.0.1:1", Claimed: topology.RoleStandby},
		{Name: "b", Addr: "127.0.0.1:2", Claimed: topology.RolePrimary},
		{Name: "c", Addr: "127.0.0.1:3", Claimed: topology.RoleStandby},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Claims = %+v, want %+v", got, want)
	}
	cl.Leader = ""
	for _, m := range Claims(cl) {
		if m.Claimed != topology.RoleStandby {
			t.Fatalf("no leader: %s claimed %v", m.Name, m.Claimed)
		}
	}
}

// fakeStore serves Load from a settable cluster or error; Watch notifies
// on every set.
type fakeStore struct {
	dcs.Store
	mu     sync.Mutex
	cl     *dcs.Cluster
	err    error
	notify func()
}

func (f *fakeStore) set(cl *dcs.Cluster, err error) {
	f.mu.Lock()
	f.cl, f.err = cl, err
	n := f.notify
	f.mu.Unlock()
	if n != nil {
		n()
	}
}

func (f *fakeStore) Load(context.Context) (*dcs.Cluster, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cl, f.err
}

func (f *fakeStore) Watch(ctx context.Context, _ bool, notify func()) error {
	f.mu.Lock()
	f.notify = notify
	f.mu.Unlock()
	<-ctx.Done()
	return nil
}

func (f *fakeStore) Close() error { return nil }

func TestEtcdSourceRun(t *testing.T) {
	f := &fakeStore{}
	f.set(&dcs.Cluster{Leader: "a", Members: map[string]dcs.Member{"a": {ConnAddr: "h:1"}, "b": {ConnAddr: "h:2"}}}, nil)
	now := time.Unix(1000, 0)
	var clock sync.Mutex
	src := newEtcd(f, nil)
	src.resync = 10 * time.Millisecond
	src.now = func() time.Time { clock.Lock(); defer clock.Unlock(); return now }
	advance := func(d time.Duration) { clock.Lock(); now = now.Add(d); clock.Unlock() }

	got := make(chan []topology.Member, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(ms []topology.Member) { got <- ms }) }()
	next := func() []topology.Member {
		t.Helper()
		select {
		case ms := <-got:
			return ms
		case <-time.After(5 * time.Second):
			t.Fatal("no publish")
			return nil
		}
	}
	primary := func(ms []topology.Member) string {
		for _, m := range ms {
			if m.Claimed == topology.RolePrimary {
				return m.Name
			}
		}
		return ""
	}
	if p := primary(next()); p != "a" {
		t.Fatalf("first publish: primary %q", p)
	}
	f.set(&dcs.Cluster{Leader: "b", Members: map[string]dcs.Member{"a": {ConnAddr: "h:1"}, "b": {ConnAddr: "h:2"}}}, nil)
	if p := primary(next()); p != "b" {
		t.Fatalf("after failover: primary %q", p)
	}
	// etcd unreadable: the claims stand for a while, then fail closed.
	f.set(nil, errors.New("unreachable"))
	select {
	case ms := <-got:
		t.Fatalf("published %v while the claims are still fresh", ms)
	case <-time.After(100 * time.Millisecond):
	}
	advance(EtcdStale + time.Second)
	if p := primary(next()); p != "" {
		t.Fatalf("stale claims still name primary %q", p)
	}
	f.set(&dcs.Cluster{Leader: "b", Members: map[string]dcs.Member{"a": {ConnAddr: "h:1"}, "b": {ConnAddr: "h:2"}}}, nil)
	if p := primary(next()); p != "b" {
		t.Fatalf("etcd back: primary %q", p)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestEtcdSourceReportsSwitchover(t *testing.T) {
	f := &fakeStore{}
	members := map[string]dcs.Member{"a": {ConnAddr: "h:1"}, "b": {ConnAddr: "h:2"}}
	f.set(&dcs.Cluster{Leader: "a", Members: members}, nil)
	src := newEtcd(f, nil)
	src.resync = 5 * time.Millisecond
	events := make(chan bool, 10)
	src.OnSwitchover = func(on bool) { events <- on }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func([]topology.Member) {}) }()
	expect := func(want bool) {
		t.Helper()
		select {
		case got := <-events:
			if got != want {
				t.Fatalf("OnSwitchover(%v), want %v", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no OnSwitchover(%v)", want)
		}
	}
	f.set(&dcs.Cluster{Leader: "a", Members: members, Switchover: &dcs.Switchover{From: "a", To: "b", At: time.Now()}}, nil)
	expect(true)
	f.set(&dcs.Cluster{Leader: "b", Members: members}, nil)
	expect(false)
	// A refused request is no switchover.
	f.set(&dcs.Cluster{Leader: "b", Members: members, Switchover: &dcs.Switchover{From: "b", Error: "no candidate"}}, nil)
	select {
	case got := <-events:
		t.Fatalf("OnSwitchover(%v) for a refused request", got)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
