package election

import (
	"context"

	"github.com/pgrouter/pgrouter/dcs"
)

// Postgres is the local PostgreSQL server as the agent drives it. The
// agent calls it from one goroutine at a time, except Stop, which fencing
// may call concurrently with anything else.
type Postgres interface {
	// Observe reports the server's state. It does not fail: what it cannot
	// find out is left zero and Err says why.
	Observe(ctx context.Context) PGState
	// Bootstrap runs initdb in the empty data directory, configures and
	// starts the server as a primary, creates the replication role, and
	// returns the system identifier.
	Bootstrap(ctx context.Context) (systemID string, err error)
	// Clone fills the empty data directory with pg_basebackup from the
	// member's server. The caller starts the server afterwards.
	Clone(ctx context.Context, from dcs.Member) error
	// Rewind runs pg_rewind against the member's server; the local server
	// must be stopped.
	Rewind(ctx context.Context, from dcs.Member) error
	// Start writes the configuration for the role and starts the server.
	Start(ctx context.Context, o ServerOptions) error
	// Reconfigure rewrites the configuration and reloads the server: a
	// standby follows a new upstream without a restart, a primary changes
	// synchronous_standby_names.
	Reconfigure(ctx context.Context, o ServerOptions) error
	// Stop shuts the server down; mode is "fast" (clean: a primary sends
	// its remaining WAL first) or "immediate". When that does not finish
	// in time, or the data directory is gone, it kills the postmaster and
	// its children. Stopping a stopped server does nothing.
	Stop(ctx context.Context, mode string) error
	// Promote ends recovery and returns when the server accepts writes.
	Promote(ctx context.Context) error
	// Checkpoint runs CHECKPOINT (before a switchover, so that the
	// shutdown checkpoint is quick).
	Checkpoint(ctx context.Context) error
	// FinalLSN returns the position after the last checkpoint of a stopped
	// server (pg_controldata): what a switchover target must have.
	FinalLSN(ctx context.Context) (uint64, error)
	// WaitReplayed waits until the member's server has replayed lsn. A
	// warm standby, which cannot be asked, counts as replayed: promotion
	// replays everything it received.
	WaitReplayed(ctx context.Context, target dcs.Member, lsn uint64) error
	// Wipe removes the data directory's contents (before a re-clone).
	Wipe() error
}

// ServerOptions is the role the server is configured for.
type ServerOptions struct {
	// Standby writes standby.signal; Upstream (when set) is followed.
	Standby  bool
	Upstream *dcs.Member
	// SyncStandby is the synchronous standby's name on a primary; "" for
	// asynchronous replication.
	SyncStandby string
}

// PGState is one observation of the local server.
type PGState struct {
	// Initialized is true when the data directory holds a cluster
	// (global/pg_control exists).
	Initialized bool
	// StandbySignal is true when standby.signal exists: the server starts
	// in recovery. A stopped former primary has none.
	StandbySignal bool
	// Running is true while the postmaster process is alive.
	Running bool
	// PID is the postmaster's PID, 0 when unknown.
	PID int
	// Answering is true when the server answered the status query, or
	// refused it only because it is a warm standby.
	Answering bool
	// InRecovery is true for a standby.
	InRecovery bool
	// Warm is true when the server refuses connections because
	// hot_standby is off; positions then come from pg_controldata.
	Warm        bool
	Timeline    uint32
	ReceivedLSN uint64
	ReplayedLSN uint64
	// Streaming is true while the WAL receiver streams; SenderAddr is
	// host:port of its upstream.
	Streaming  bool
	SenderAddr string
	// Upstream is the member name the configuration follows.
	Upstream string
	// SyncStandby is the synchronous standby the configuration names.
	SyncStandby string
	SystemID    string
	// Replication is pg_stat_replication on a primary, by
	// application_name.
	Replication map[string]dcs.Replica
	// Err is why the server could not be queried, if it could not.
	Err error
}

// Role returns the dcs role name for the state.
func (s PGState) Role() string {
	switch {
	case !s.Running:
		return dcs.RoleStopped
	case !s.Answering:
		return dcs.RoleUnknown
	case s.InRecovery:
		return dcs.RoleStandby
	default:
		return dcs.RolePrimary
	}
}
