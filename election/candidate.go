package election

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/pgrouter/pgrouter/dcs"

	"github.com/pgrouter/pgrouter/topology"
)

// Policy is what Choose needs of the configuration.
type Policy struct {
	// MaxLagOnFailover excludes members further behind the last leader's
	// reported WAL position, in bytes; 0 means no limit.
	MaxLagOnFailover uint64
	// Synchronous allows only the members named in the sync record.
	Synchronous bool
	// SwitchoverWindow is how long after a handover only the switchover's
	// target may take the lease; afterwards any eligible member may.
	SwitchoverWindow time.Duration
}

// Choice is the result of Choose.
type Choice struct {
	// Name is the member that should take the lease; "" when none may.
	Name string
	// Reason says why Name won, or why no one may.
	Reason string
	// Eligible counts the members that could have won.
	Eligible int
	// Rejected says why each other member may not take the lease.
	Rejected map[string]string
}

// Choose picks the member that should take the leader key when no one
// holds it. It is pure: it reads c and never changes it.
//
// A member is eligible when it runs as a standby (or it is the last
// leader, still running as primary on the newest timeline), it is not on an
// older timeline than the last leader, its lag behind the last leader's
// reported position is within MaxLagOnFailover, in synchronous mode it is
// the recorded synchronous standby or the last leader, and during a
// switchover it is the switchover's target. Among the eligible, the newest
// timeline wins, then the furthest WAL position (received or replayed, or
// what the last leader saw it flush), then the smallest name.
func Choose(c *dcs.Cluster, p Policy, now time.Time) Choice {
	ch := Choice{Rejected: map[string]string{}}
	st := c.Status
	var maxTL uint32
	for _, m := range c.Members {
		maxTL = max(maxTL, timeline(m, st))
	}
	var target string
	if sw := c.Switchover; sw != nil && sw.To != "" && !sw.HandedOverAt.IsZero() && now.Sub(sw.HandedOverAt) < p.SwitchoverWindow {
		target = sw.To
	}
	type cand struct {
		name string
		tl   uint32
		lsn  uint64
	}
	var cands []cand
	for name, m := range c.Members {
		tl, lsn := timeline(m, st), position(m, st)
		why := ""
		switch {
		case m.Role == dcs.RolePrimary && name != st.Leader && name != c.Sync.Leader:
			why = "runs as primary but was not the last leader"
		case m.Role == dcs.RolePrimary && tl < maxTL:
			why = fmt.Sprintf("runs as primary on timeline %d, older than %d", tl, maxTL)
		case m.Role != dcs.RoleStandby && m.Role != dcs.RolePrimary:
			why = "postgres is " + orUnknown(m.Role)
		case st.Timeline > 0 && tl > 0 && tl < st.Timeline:
			why = fmt.Sprintf("on timeline %d, older than the last leader's %d", tl, st.Timeline)
		case p.MaxLagOnFailover > 0 && st.LSN > lsn && st.LSN-lsn > p.MaxLagOnFailover:
			why = fmt.Sprintf("lags %d bytes behind the last leader, over max-lag-on-failover %d", st.LSN-lsn, p.MaxLagOnFailover)
		case p.Synchronous && name != c.Sync.Standby && name != c.Sync.Leader:
			why = "synchronous mode: not the synchronous standby"
		case target != "" && name != target:
			why = "switchover to " + target + " in progress"
		}
		if why != "" {
			ch.Rejected[name] = why
			continue
		}
		cands = append(cands, cand{name, tl, lsn})
	}
	ch.Eligible = len(cands)
	if len(cands) == 0 {
		switch {
		case len(c.Members) == 0:
			ch.Reason = "no member has published its state"
		case p.Synchronous && c.Sync.Standby == "" && c.Sync.Leader == "":
			ch.Reason = "synchronous mode: no synchronous standby recorded"
		default:
			ch.Reason = "no member is eligible"
		}
		return ch
	}
	slices.SortFunc(cands, func(a, b cand) int {
		if c := cmp.Compare(b.tl, a.tl); c != 0 {
			return c
		}
		if c := cmp.Compare(b.lsn, a.lsn); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})
	best := cands[0]
	ch.Name = best.name
	switch {
	case target != "":
		ch.Reason = "switchover target"
	case len(cands) == 1:
		ch.Reason = fmt.Sprintf("only eligible member (timeline %d, lsn %s)", best.tl, topology.FormatLSN(best.lsn))
	default:
		ch.Reason = fmt.Sprintf("most advanced of %d eligible (timeline %d, lsn %s)", len(cands), best.tl, topology.FormatLSN(best.lsn))
	}
	for _, o := range cands[1:] {
		ch.Rejected[o.name] = fmt.Sprintf("less advanced than %s (timeline %d, lsn %s)", best.name, o.tl, topology.FormatLSN(o.lsn))
	}
	return ch
}

// timeline is the member's own timeline, or the last leader's when the
// leader saw it streaming (a warm standby's own reading lags).
func timeline(m dcs.Member, st dcs.Status) uint32 {
	tl := m.Timeline
	if r, ok := st.Replication[m.Name]; ok && r.State == "streaming" {
		tl = max(tl, st.Timeline)
	}
	return tl
}

// position is the furthest WAL position known for the member: its own
// reading, or what the last leader saw it flush.
func position(m dcs.Member, st dcs.Status) uint64 {
	lsn := m.LSN()
	if r, ok := st.Replication[m.Name]; ok {
		lsn = max(lsn, r.FlushLSN, r.ReplayLSN)
	}
	return lsn
}

func orUnknown(s string) string {
	if s == "" {
		return dcs.RoleUnknown
	}
	return s
}

// SyncChoice is the result of ChooseSync.
type SyncChoice struct {
	// Standby to name in synchronous_standby_names; "" for none.
	Standby string
	Reason  string
}

// ChooseSync picks the synchronous standby for the leader: the current one
// while it streams, else the streaming standby with the furthest flush
// position (smallest name on a tie), else none. replication is the
// leader's pg_stat_replication by application_name, which is the member
// name; only standbys that are members count.
func ChooseSync(current string, replication map[string]dcs.Replica, members map[string]dcs.Member) SyncChoice {
	streaming := func(name string) bool {
		r, ok := replication[name]
		_, member := members[name]
		return ok && member && r.State == "streaming"
	}
	if current != "" && streaming(current) {
		return SyncChoice{Standby: current, Reason: "current synchronous standby still streams"}
	}
	var best string
	for name := range replication {
		if !streaming(name) {
			continue
		}
		if best == "" || replication[name].FlushLSN > replication[best].FlushLSN ||
			(replication[name].FlushLSN == replication[best].FlushLSN && name < best) {
			best = name
		}
	}
	if best == "" {
		return SyncChoice{Reason: "no standby streams"}
	}
	if current == "" {
		return SyncChoice{Standby: best, Reason: "streaming standby with the furthest flush position"}
	}
	return SyncChoice{Standby: best, Reason: current + " no longer streams"}
}
