// Package router decides which member a new session goes to. Route is a pure
// function of the session's intent, a topology snapshot and the policy: it
// does no I/O, reads no clock and logs nothing, so the caller logs and counts
// the decision and a table test can enumerate every case.
package router

import (
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/pgrouter/pgrouter/topology"
)

// Listener says which kind of port a session arrived on.
type Listener uint8

const (
	// ListenerAny is a single endpoint for every session: it goes to the
	// primary unless the session declared itself read-only at startup.
	ListenerAny Listener = iota
	// ListenerReadWrite sends every session to the primary.
	ListenerReadWrite
	// ListenerReadOnly sends every session to a standby.
	ListenerReadOnly
)

// String returns the name used in logs and metrics.
func (l Listener) String() string {
	switch l {
	case ListenerReadWrite:
		return "read-write"
	case ListenerReadOnly:
		return "read-only"
	default:
		return "any"
	}
}

// Balance is how a read-only session picks among the eligible standbys.
type Balance uint8

const (
	// RoundRobin takes the standby at Intent.Seq modulo the number of
	// eligible standbys, in name order.
	RoundRobin Balance = iota
	// LeastConnections takes the standby with the fewest open sessions as
	// reported by Intent.Sessions; ties go to the first name.
	LeastConnections
)

// String returns the name used in configuration and logs.
func (b Balance) String() string {
	if b == LeastConnections {
		return "least-connections"
	}
	return "round-robin"
}

// Policy is the operator's routing configuration. The zero value balances
// round-robin, has no lag limits and does not fall back to the primary;
// callers default FallbackToPrimary to true.
type Policy struct {
	// Balance picks among eligible standbys.
	Balance Balance
	// MaxLagBytes skips standbys whose ReplayLagBytes is above it; 0 means
	// no limit.
	MaxLagBytes uint64
	// MaxLag skips standbys whose ReplayLag is above it; 0 means no limit.
	MaxLag time.Duration
	// FallbackToPrimary sends a session from the read-only port to the
	// primary when no standby is usable.
	FallbackToPrimary bool
}

// Intent is what the proxy knows about a new session when it routes it.
type Intent struct {
	// Listener is the port the session arrived on.
	Listener Listener
	// ReadOnly is true when the session declared itself read-only at
	// startup (for example target_session_attrs or
	// default_transaction_read_only=on). Only ListenerAny looks at it.
	ReadOnly bool
	// Seq is the caller's counter for round-robin; the caller advances it
	// for each intent that MayUseStandby.
	Seq uint64
	// Sessions reports the open sessions per member for LeastConnections;
	// nil counts every member as zero.
	Sessions func(member string) int
}

// Decision is where a session goes.
type Decision struct {
	// Member is the chosen member as the snapshot describes it.
	Member topology.MemberState
	// Role is the role the member is routed as: RolePrimary for the primary
	// (including a read-only session that fell back to it), RoleStandby for
	// a standby.
	Role topology.Role
	// Fallback is true when a read-only session went to the primary because
	// no standby was usable.
	Fallback bool
}

var (
	// ErrNoPrimary means the snapshot has no usable primary, or more than
	// one: writes fail closed.
	ErrNoPrimary = errors.New("router: no usable primary")
	// ErrNoStandby means a read-only session found no usable standby within
	// the lag limits, and could not fall back to the primary.
	ErrNoStandby = errors.New("router: no usable standby")
)

// MayUseStandby reports whether Route may send the intent to a standby, the
// only case in which it reads Seq: a caller advances its round-robin
// counter for these intents alone, so that writes interleaved with reads do
// not keep every read on the same standby.
func (in Intent) MayUseStandby() bool {
	return in.Listener == ListenerReadOnly || (in.Listener == ListenerAny && in.ReadOnly)
}

// Route picks the member for a new session. s may be nil, which routes
// nowhere. The snapshot is only read.
func Route(in Intent, s *topology.Snapshot, p Policy) (Decision, error) {
	switch {
	case in.Listener == ListenerReadOnly:
		return routeRead(in, s, p, p.FallbackToPrimary)
	case in.MayUseStandby():
		// On the single endpoint a read-only session may always use
		// the primary: it asked for no more than any session gets.
		return routeRead(in, s, p, true)
	default:
		return routePrimary(s)
	}
}

// Primary returns the one usable member whose effective role is primary. It
// reports false when there is none or more than one (fail closed; the health
// merge already resolves split brain by timeline).
func Primary(s *topology.Snapshot) (topology.MemberState, bool) {
	if s == nil {
		return topology.MemberState{}, false
	}
	var (
		found topology.MemberState
		n     int
	)
	for _, m := range s.Members {
		if m.Role == topology.RolePrimary && usable(m) {
			found = m
			n++
		}
	}
	if n != 1 {
		return topology.MemberState{}, false
	}
	return found, true
}

func routePrimary(s *topology.Snapshot) (Decision, error) {
	m, ok := Primary(s)
	if !ok {
		return Decision{}, ErrNoPrimary
	}
	return Decision{Member: m, Role: topology.RolePrimary}, nil
}

func routeRead(in Intent, s *topology.Snapshot, p Policy, fallback bool) (Decision, error) {
	if m, ok := pickStandby(in, s, p); ok {
		return Decision{Member: m, Role: topology.RoleStandby}, nil
	}
	if !fallback {
		return Decision{}, ErrNoStandby
	}
	m, ok := Primary(s)
	if !ok {
		return Decision{}, ErrNoStandby
	}
	return Decision{Member: m, Role: topology.RolePrimary, Fallback: true}, nil
}

// pickStandby chooses among the eligible standbys in name order.
func pickStandby(in Intent, s *topology.Snapshot, p Policy) (topology.MemberState, bool) {
	if s == nil {
		return topology.MemberState{}, false
	}
	var buf [16]int
	eligible := buf[:0]
	for i, m := range s.Members {
		if eligibleStandby(m, p) {
			eligible = append(eligible, i)
		}
	}
	if len(eligible) == 0 {
		return topology.MemberState{}, false
	}
	// Snapshots from health.Merge are already sorted; sort anyway so the
	// result never depends on the order the snapshot builder chose.
	slices.SortFunc(eligible, func(a, b int) int {
		return strings.Compare(s.Members[a].Name, s.Members[b].Name)
	})

	if p.Balance == LeastConnections {
		best, bestN := eligible[0], sessions(in, s.Members[eligible[0]].Name)
		for _, i := range eligible[1:] {
			if n := sessions(in, s.Members[i].Name); n < bestN {
				best, bestN = i, n
			}
		}
		return s.Members[best], true
	}
	return s.Members[eligible[in.Seq%uint64(len(eligible))]], true
}

func sessions(in Intent, member string) int {
	if in.Sessions == nil {
		return 0
	}
	return in.Sessions(member)
}

func eligibleStandby(m topology.MemberState, p Policy) bool {
	if m.Role != topology.RoleStandby || !usable(m) {
		return false
	}
	if p.MaxLagBytes > 0 && m.Health.ReplayLagBytes > p.MaxLagBytes {
		return false
	}
	if p.MaxLag > 0 && m.Health.ReplayLag > p.MaxLag {
		return false
	}
	return true
}

// usable reports whether a member may get sessions at all: it answers
// probes and accepts connections (a warm standby, or a server starting up
// or shutting down, does not).
func usable(m topology.MemberState) bool {
	return m.Health.Up && m.Health.AcceptsConnections
}
