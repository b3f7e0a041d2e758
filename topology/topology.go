// Package topology holds the leaf types every other package shares: a
// cluster member, its role, what health checks observed of it, and an
// immutable snapshot of the whole cluster. It imports nothing of pgrouter.
package topology

import (
	"time"
)

// Role is what a member is, as discovery claims it or as a health check
// observed it.
type Role uint8

const (
	// RoleUnknown means nobody has said or seen what the member is; the
	// router never sends sessions to it.
	RoleUnknown Role = iota
	// RolePrimary accepts writes.
	RolePrimary
	// RoleStandby replays WAL from a primary; hot standbys accept reads.
	RoleStandby
)

// String returns the name used in logs, metrics and the admin API.
func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleStandby:
		return "standby"
	default:
		return "unknown"
	}
}

// MarshalText makes a Role read as its name in JSON.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a name written by MarshalText (or any ParseRole
// accepts), so clients of the admin API can decode what it serves.
func (r *Role) UnmarshalText(b []byte) error {
	*r = ParseRole(string(b))
	return nil
}

// ParseRole maps the names operators use for roles to a Role; unrecognised
// names are RoleUnknown.
func ParseRole(s string) Role {
	switch s {
	case "primary", "master", "leader":
		return RolePrimary
	case "standby", "replica", "secondary":
		return RoleStandby
	default:
		return RoleUnknown
	}
}

// Member is one PostgreSQL instance as discovery publishes it.
type Member struct {
	// Name identifies the member in logs, metrics and the API; for a static
	// list it is the address.
	Name string `json:"name"`
	// Addr is host:port of the PostgreSQL server.
	Addr string `json:"addr"`
	// Claimed is the role discovery says the member has; RoleUnknown when
	// the source does not know (a static list). Health must confirm it.
	Claimed Role `json:"claimed_role"`
}

// Health is what the last health checks observed of one member. The zero
// value means "never checked": not reachable, role unknown.
type Health struct {
	// Up is true while the member answers probes; it turns false only
	// after the configured number of consecutive failures.
	Up bool `json:"up"`
	// AcceptsConnections is false for a warm standby (hot_standby=off) or
	// a server that is starting or shutting down: it must get no sessions.
	AcceptsConnections bool `json:"accepts_connections"`
	// Role is primary when pg_is_in_recovery() is false, standby when true.
	Role Role `json:"role"`
	// Timeline is the member's current timeline id (0 when unknown).
	Timeline uint32 `json:"timeline"`
	// WALPosition is pg_current_wal_lsn() on a primary and
	// pg_last_wal_replay_lsn() on a standby.
	WALPosition uint64 `json:"wal_position"`
	// ReplayLagBytes is how far a standby's replay is behind the primary's
	// current WAL position; 0 on a primary or when it cannot be computed.
	ReplayLagBytes uint64 `json:"replay_lag_bytes"`
	// ReplayLag is the age of the last replayed transaction while the
	// standby has WAL left to replay; 0 when it has caught up.
	ReplayLag time.Duration `json:"replay_lag_ns"`
	// Latency is how long the last successful probe took.
	Latency time.Duration `json:"latency_ns"`
	// CheckedAt is when the last probe finished.
	CheckedAt time.Time `json:"checked_at"`
	// Err is the last probe's error, empty when it succeeded.
	Err string `json:"error,omitempty"`
}

// MemberState is a member with what health checks observed of it.
type MemberState struct {
	Member
	Health Health `json:"health"`
	// Role is the role the router acts on: the observed role, confirmed
	// against the claim (see Snapshot).
	Role Role `json:"role"`
}

// Snapshot is the whole cluster at one moment. It is immutable once
// published: holders share it across goroutines without locks, and a new
// state is a new Snapshot with a higher Version.
type Snapshot struct {
	Version uint64        `json:"version"`
	Members []MemberState `json:"members"`
}

// Member returns the state of the member with that name.
func (s *Snapshot) Member(name string) (MemberState, bool) {
	for _, m := range s.Members {
		if m.Name == name {
			return m, true
		}
	}
	return MemberState{}, false
}
