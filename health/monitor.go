// Package health probes every cluster member on its own goroutine and
// publishes the merged result as topology snapshots.
package health

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/topology"
)

// Monitor runs one checker per member of the newest list given to
// SetMembers and publishes a new snapshot to the feed whenever the merged
// state changes. A probe's timestamp and latency alone are not a change.
//
// Versions continue from the feed's snapshot at the start of Run. Checkers
// never wait for the monitor, and the monitor never waits for feed readers.
type Monitor struct {
	cfg     Config
	feed    *topology.Feed
	log     *zap.Logger
	metrics *Metrics

	// newProber builds the prober for a member; tests replace it.
	newProber func(topology.Member, Config) prober

	// OnEvent, when set before Run, is called on Run's goroutine with each
	// availability and role change as it is logged; it must not block.
	OnEvent func(topology.Event)

	mu         sync.Mutex
	members    []topology.Member // newest list from SetMembers
	membersSet chan struct{}     // cap 1: SetMembers wakes Run
	updated    chan struct{}     // cap 1: a checker has a new result
}

// NewMonitor returns a monitor publishing to feed. Zero fields of cfg take
// their defaults; log and m may be nil.
func NewMonitor(cfg Config, feed *topology.Feed, log *zap.Logger, m *Metrics) *Monitor {
	if log == nil {
		log = zap.NewNop()
	}
	return &Monitor{
		cfg:        cfg.WithDefaults(),
		feed:       feed,
		log:        log,
		metrics:    m,
		newProber:  newProber,
		membersSet: make(chan struct{}, 1),
		updated:    make(chan struct{}, 1),
	}
}

// SetMembers replaces the member list; it suits a discovery.Source's
// publish func. It never blocks and is safe to call at any time, before Run
// too. A member is identified by name: a new address restarts its checker,
// a new claimed role only changes the merge.
func (m *Monitor) SetMembers(members []topology.Member) {
	list := append([]topology.Member(nil), members...)
	m.mu.Lock()
	m.members = list
	m.mu.Unlock()
	poke(m.membersSet)
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default: // already pending; the reader takes the newest state
	}
}

// Run checks members and publishes snapshots until ctx ends. It returns nil
// after every checker has stopped and closed its connection.
func (m *Monitor) Run(ctx context.Context) error {
	cur, _ := m.feed.Load()
	r := &run{Monitor: m, ctx: ctx, version: cur.Version, checkers: map[string]*checker{}}
	defer r.stopAll()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.membersSet:
			m.mu.Lock()
			members := m.members
			m.mu.Unlock()
			r.setMembers(members)
		case <-m.updated:
		}
		r.publish()
	}
}

// run is the state of one Run call, owned by its goroutine.
type run struct {
	*Monitor
	ctx      context.Context
	version  uint64
	members  []topology.Member
	checkers map[string]*checker
	retired  []*checker         // stopped, maybe still returning
	last     *topology.Snapshot // last published; nil before the first
}

func (r *run) setMembers(members []topology.Member) {
	want := make(map[string]topology.Member, len(members))
	r.members = r.members[:0:0]
	for _, mem := range members {
		if _, dup := want[mem.Name]; dup {
			r.log.Warn("member listed twice; keeping the first", zap.String("member", mem.Name))
			continue
		}
		want[mem.Name] = mem
		r.members = append(r.members, mem)
	}
	for name, c := range r.checkers {
		if mem, ok := want[name]; !ok || mem.Addr != c.member.Addr {
			r.stop(c)
			delete(r.checkers, name)
			if !ok {
				r.metrics.forget(name)
				r.log.Info("member removed", zap.String("member", name))
			}
		}
	}
	for _, mem := range r.members {
		if _, ok := r.checkers[mem.Name]; !ok {
			r.start(mem)
		}
	}
}

func (r *run) start(mem topology.Member) {
	ctx, cancel := context.WithCancel(r.ctx)
	c := &checker{
		member:   mem,
		cfg:      r.cfg,
		prober:   r.newProber(mem, r.cfg),
		duration: r.metrics.checkObserver(mem.Name),
		notify:   func() { poke(r.updated) },
		stop:     cancel,
		done:     make(chan struct{}),
	}
	r.checkers[mem.Name] = c
	r.log.Info("checking member", zap.String("member", mem.Name), zap.String("addr", mem.Addr))
	go c.run(ctx)
}

// stop cancels a checker without waiting: its probe may take up to the
// timeouts to notice, and Run must keep publishing meanwhile. stopAll waits.
func (r *run) stop(c *checker) {
	c.stop()
	live := r.retired[:0]
	for _, old := range r.retired {
		select {
		case <-old.done:
		default:
			live = append(live, old)
		}
	}
	r.retired = append(live, c)
}

// stopAll stops every checker and waits until each has returned.
func (r *run) stopAll() {
	for _, c := range r.checkers {
		c.stop()
	}
	for _, c := range r.checkers {
		<-c.done
	}
	for _, c := range r.retired {
		<-c.done
	}
}

// publish merges the newest observations and publishes them if they differ
// from the last snapshot published.
func (r *run) publish() {
	obs := make(map[string]topology.Health, len(r.checkers))
	for name, c := range r.checkers {
		if h := c.latest.Load(); h != nil {
			obs[name] = *h
		}
	}
	next, reasons := merge(r.version+1, r.members, obs)
	for _, ms := range next.Members {
		r.metrics.set(ms)
	}
	if r.last != nil && sameState(r.last, next) {
		return
	}
	r.logChanges(r.last, next, reasons)
	r.version++
	r.last = next
	r.feed.Publish(next)
}

// sameState compares two snapshots ignoring versions and the fields every
// probe changes (CheckedAt, Latency).
func sameState(a, b *topology.Snapshot) bool {
	if len(a.Members) != len(b.Members) {
		return false
	}
	for i := range a.Members {
		x, y := a.Members[i], b.Members[i]
		x.Health.CheckedAt, y.Health.CheckedAt = time.Time{}, time.Time{}
		x.Health.Latency, y.Health.Latency = 0, 0
		if x != y {
			return false
		}
	}
	return true
}

// availability names what a member offers, for logs.
func availability(h topology.Health) string {
	switch {
	case !h.Up:
		return "down"
	case !h.AcceptsConnections:
		return "not accepting connections"
	default:
		return "up"
	}
}

// logChanges logs, once each, availability and role changes between two
// snapshots, and counts role changes.
func (r *run) logChanges(prev, next *topology.Snapshot, reasons map[string]string) {
	for _, ms := range next.Members {
		var was topology.MemberState
		if prev != nil {
			was, _ = prev.Member(ms.Name)
		}
		log := r.log.With(zap.String("member", ms.Name))
		if from, to := availability(was.Health), availability(ms.Health); from != to {
			reason, lvl := ms.Health.Err, log.Info
			switch to {
			case "up":
				reason = "probe succeeded"
			case "down":
				lvl = log.Warn
			}
			if reason == "" {
				reason = reasons[ms.Name]
			}
			lvl("member "+to, zap.String("from", from), zap.String("to", to), zap.String("reason", reason))
			r.emit(topology.Event{Member: ms.Name, Kind: "availability", From: from, To: to, Reason: reason})
		}
		if ms.Role != was.Role {
			log.Info("member role changed", zap.Stringer("from", was.Role), zap.Stringer("to", ms.Role),
				zap.String("reason", reasons[ms.Name]))
			r.metrics.roleChanged(ms.Name, was.Role, ms.Role)
			r.emit(topology.Event{Member: ms.Name, Kind: "role", From: was.Role.String(), To: ms.Role.String(), Reason: reasons[ms.Name]})
		}
	}
}

func (r *run) emit(e topology.Event) {
	if r.OnEvent != nil {
		e.At = time.Now().UTC()
		r.OnEvent(e)
	}
}

// newProber is the real prober; a member whose address cannot be used gets
// one that always fails, so it shows as down with the reason.
func newProber(mem topology.Member, cfg Config) prober {
	p, err := newPGProber(mem, cfg)
	if err != nil {
		return failProber{err}
	}
	return p
}

type failProber struct{ err error }

func (f failProber) probe(context.Context) (topology.Health, error) { return topology.Health{}, f.err }
func (failProber) close()                                           {}
