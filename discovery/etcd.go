package discovery

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/dcs"
	"github.com/pgrouter/pgrouter/topology"
)

var _ Source = (*Etcd)(nil)

// EtcdStale is how long the etcd source keeps the last claims it read
// while etcd cannot be read; after that it claims every member is a
// standby, so no member gets writes until etcd answers again (the leader
// may have changed meanwhile).
const EtcdStale = 5 * time.Second

// Etcd publishes the members a cluster of pgrouter agents records in etcd,
// with the role each claims: the holder of the leader key is primary,
// every other member a standby. Health checks confirm the claims. Run it
// at most once at a time.
type Etcd struct {
	store dcs.Store
	log   *zap.Logger
	// resync is the interval of full reads besides the watch.
	resync time.Duration
	now    func() time.Time

	// OnSwitchover, if set, is called with true when a planned switchover
	// (the switchover key, without a refusal) appears and with false when
	// it is gone, so a pooled proxy can hold new transactions meanwhile.
	// It is called from Run's goroutine and must not block.
	OnSwitchover func(inProgress bool)
}

// NewEtcd connects to etcd (without waiting for it) for the agents of
// scope.
func NewEtcd(endpoints []string, scope string, log *zap.Logger) (*Etcd, error) {
	if log == nil {
		log = zap.NewNop()
	}
	store, err := dcs.NewEtcd(dcs.EtcdConfig{Endpoints: endpoints, Scope: scope, Log: log.Named("etcd")})
	if err != nil {
		return nil, err
	}
	return newEtcd(store, log), nil
}

func newEtcd(store dcs.Store, log *zap.Logger) *Etcd {
	if log == nil {
		log = zap.NewNop()
	}
	return &Etcd{store: store, log: log, resync: 2 * time.Second, now: time.Now}
}

// Close closes the etcd client.
func (e *Etcd) Close() error { return e.store.Close() }

// Run publishes the member list at once, after every change in etcd and
// every resync interval when it differs, until ctx ends.
func (e *Etcd) Run(ctx context.Context, publish func([]topology.Member)) error {
	wake := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = e.store.Watch(ctx, true, func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		})
	})
	defer wg.Wait()
	t := time.NewTicker(e.resync)
	defer t.Stop()
	var (
		last      []topology.Member
		published bool
		lastRead  = e.now()
		failing   bool
		switching bool
	)
	for {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		cl, err := e.store.Load(lctx)
		cancel()
		var next []topology.Member
		switch {
		case err == nil:
			if failing {
				e.log.Info("etcd readable again")
				failing = false
			}
			lastRead = e.now()
			next = Claims(cl)
			if sw := cl.Switchover != nil && cl.Switchover.Error == ""; sw != switching && e.OnSwitchover != nil {
				switching = sw
				e.log.Info("planned switchover", zap.Bool("in_progress", sw))
				e.OnSwitchover(sw)
			}
		case ctx.Err() != nil:
			return nil
		default:
			if !failing {
				e.log.Warn("cannot read etcd; keeping the last claims for now", zap.Error(err), zap.Duration("for", EtcdStale))
				failing = true
			}
			next = last
			if e.now().Sub(lastRead) > EtcdStale {
				next = allStandby(last)
			}
		}
		if !published || !slices.Equal(next, last) {
			if published {
				e.log.Info("members changed", zap.Stringer("members", memberList(next)))
			}
			publish(slices.Clone(next))
			last, published = next, true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-t.C:
		}
	}
}

// Claims turns the agents' records into members: each member with a
// published address, named as the agent is, primary when it holds the
// leader key, else standby. Sorted by name.
func Claims(cl *dcs.Cluster) []topology.Member {
	ms := make([]topology.Member, 0, len(cl.Members))
	for name, m := range cl.Members {
		if m.ConnAddr == "" {
			continue
		}
		role := topology.RoleStandby
		if name == cl.Leader {
			role = topology.RolePrimary
		}
		ms = append(ms, topology.Member{Name: name, Addr: m.ConnAddr, Claimed: role})
	}
	slices.SortFunc(ms, func(a, b topology.Member) int { return strings.Compare(a.Name, b.Name) })
	return ms
}

func allStandby(ms []topology.Member) []topology.Member {
	out := slices.Clone(ms)
	for i := range out {
		out[i].Claimed = topology.RoleStandby
	}
	return out
}

type memberList []topology.Member

func (l memberList) String() string {
	var b strings.Builder
	for i, m := range l {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(m.Name + "=" + m.Addr + "(" + m.Claimed.String() + ")")
	}
	return b.String()
}
