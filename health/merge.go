package health

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pgrouter/pgrouter/topology"
)

// Merge builds the snapshot the router acts on from discovery's member list
// and the latest health observations, keyed by member name. It is pure; obs
// is only read and members missing from obs count as never checked.
//
// The effective role (MemberState.Role) fails closed:
//   - a member that is down has RoleUnknown;
//   - otherwise the observed role counts, except that a member discovery
//     claims is a standby but that observes as primary gets RoleUnknown, and a
//     member claimed primary but observed in recovery is a standby;
//   - when several members end up primary, only the one on the strictly
//     highest timeline stays primary and the others get RoleUnknown; on a tie
//     none is primary.
//
// Each standby's ReplayLagBytes is the resolved primary's WALPosition minus
// the standby's (0 when negative or when there is no primary). Members are
// sorted by name; a name listed twice keeps its first entry.
func Merge(version uint64, members []topology.Member, obs map[string]topology.Health) *topology.Snapshot {
	s, _ := merge(version, members, obs)
	return s
}

// merge is Merge that also says, per member name, why the member has its
// effective role; the monitor logs the reason when the role changes.
func merge(version uint64, members []topology.Member, obs map[string]topology.Health) (*topology.Snapshot, map[string]string) {
	s := &topology.Snapshot{Version: version, Members: make([]topology.MemberState, 0, len(members))}
	reasons := make(map[string]string, len(members))
	seen := make(map[string]bool, len(members))
	for _, m := range members {
		if seen[m.Name] {
			continue
		}
		seen[m.Name] = true
		h := obs[m.Name]
		h.ReplayLagBytes = 0
		role, why := effectiveRole(m.Claimed, h)
		s.Members = append(s.Members, topology.MemberState{Member: m, Health: h, Role: role})
		reasons[m.Name] = why
	}
	slices.SortFunc(s.Members, func(a, b topology.MemberState) int { return strings.Compare(a.Name, b.Name) })

	primary := resolvePrimaries(s.Members, reasons)
	if primary < 0 {
		return s, reasons
	}
	head := s.Members[primary].Health.WALPosition
	for i := range s.Members {
		m := &s.Members[i]
		if m.Role == topology.RoleStandby && head > m.Health.WALPosition {
			m.Health.ReplayLagBytes = head - m.Health.WALPosition
		}
	}
	return s, reasons
}

// effectiveRole confirms the claimed role against the observed one.
func effectiveRole(claimed topology.Role, h topology.Health) (topology.Role, string) {
	observed := h.Role
	switch {
	case !h.Up:
		if h.Err != "" {
			return topology.RoleUnknown, "down: " + h.Err
		}
		return topology.RoleUnknown, "not checked yet"
	case observed == topology.RoleUnknown:
		return topology.RoleUnknown, "role not observed"
	case claimed == topology.RoleStandby && observed == topology.RolePrimary:
		return topology.RoleUnknown, "claimed standby but observed primary"
	case claimed == topology.RolePrimary && observed == topology.RoleStandby:
		return topology.RoleStandby, "claimed primary but observed in recovery"
	case observed == topology.RolePrimary:
		return topology.RolePrimary, "observed primary (not in recovery)"
	default:
		return topology.RoleStandby, "observed standby (in recovery)"
	}
}

// resolvePrimaries leaves at most one member primary: the one on the
// strictly highest timeline. It returns that member's index, or -1.
func resolvePrimaries(ms []topology.MemberState, reasons map[string]string) int {
	best, tie, n := -1, false, 0
	for i, m := range ms {
		if m.Role != topology.RolePrimary {
			continue
		}
		n++
		switch {
		case best < 0 || m.Health.Timeline > ms[best].Health.Timeline:
			best, tie = i, false
		case m.Health.Timeline == ms[best].Health.Timeline:
			tie = true
		}
	}
	if n <= 1 {
		return best
	}
	tl := ms[best].Health.Timeline
	for i := range ms {
		m := &ms[i]
		if m.Role != topology.RolePrimary || (i == best && !tie) {
			continue
		}
		if m.Health.Timeline == tl {
			reasons[m.Name] = fmt.Sprintf("several primaries on timeline %d: fail closed", tl)
		} else {
			reasons[m.Name] = fmt.Sprintf("another primary is on higher timeline %d", tl)
		}
		m.Role = topology.RoleUnknown
	}
	if tie {
		return -1
	}
	return best
}
