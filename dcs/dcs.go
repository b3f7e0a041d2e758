// Package dcs is the consensus store the agents coordinate through: the
// records they write, the Store seam the election drives, and its two
// implementations, on etcd (etcd.go) and on the Kubernetes API
// (kubernetes.go: a Lease and the agents' pods). The proxy's etcd discovery
// reads the same records with Load and Watch.
//
// Layout under /pgrouter/<scope>/ (etcd keys; kubernetes.go maps each to
// its own objects):
//
//	leader          member name; lives only while its holder renews the lease
//	members/<name>  JSON Member; expires unless its agent keeps publishing
//	initialize      PostgreSQL system identifier once bootstrapped; while one
//	                agent bootstraps it holds "bootstrapping:<name>" on the
//	                leader lease, so a crashed bootstrap frees it
//	sync            JSON Sync: who may be promoted in synchronous mode
//	status          JSON Status: the leader's last WAL position and what it
//	                saw of each standby, kept after the leader is gone
//	switchover      JSON Switchover: a planned switchover in progress
//
// Nothing here imports pgrouter packages.
package dcs

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// ErrNotLeader is returned by Acquire when another member holds the leader
// key, and by the leader-only writes when this member does not.
var ErrNotLeader = errors.New("dcs: leader key held by another member")

// ErrLost is returned by Renew when the lease expired or the leader key no
// longer names this member with this lease.
var ErrLost = errors.New("dcs: leader lease lost")

// ErrInitialized is returned by Acquire(bootstrap) when the cluster has
// been (or is being) bootstrapped already.
var ErrInitialized = errors.New("dcs: cluster already initialized")

// Store is what the election needs from a consensus store. One Store
// belongs to one member (its name is fixed at construction); discovery uses
// a Store with an empty name and only calls Load, Watch and Close. Methods
// are safe for concurrent use.
type Store interface {
	// Load reads the whole cluster state in one consistent read.
	Load(ctx context.Context) (*Cluster, error)
	// Watch calls notify, which must not block, after every change of the
	// leader, sync, switchover or initialize keys (and of members too when
	// members is true), until ctx ends. It reconnects by itself.
	Watch(ctx context.Context, members bool, notify func()) error

	// PublishMember writes this member's record and keeps its TTL alive.
	// It skips the write when only UpdatedAt changed and the record was
	// written recently, unless force is set.
	PublishMember(ctx context.Context, m Member, force bool) error
	// DeleteMember removes this member's record (clean shutdown).
	DeleteMember(ctx context.Context) error

	// Acquire takes the leader key on a new lease of TTL seconds when no
	// one holds it, or when it already names this member (an agent that
	// restarted adopts its own key). With bootstrap it also claims the
	// initialize key, and fails with ErrInitialized when it exists.
	Acquire(ctx context.Context, bootstrap bool) error
	// Renew extends the lease. ErrLost means the lease or the key is gone
	// (or names someone else); other errors are transient.
	Renew(ctx context.Context) error
	// Release gives the leader key up at once (revokes the lease).
	Release(ctx context.Context) error
	// Handover releases the leader key and records sw in one step, so the
	// switchover target is the only one that may take the key.
	Handover(ctx context.Context, sw Switchover) error

	// SetInitialized records the bootstrap as done (leader only).
	SetInitialized(ctx context.Context, systemID string) error
	// SetSync writes the synchronous replication state (leader only).
	SetSync(ctx context.Context, s Sync) error
	// SetStatus writes the leader's status (leader only).
	SetStatus(ctx context.Context, s Status) error
	// RequestSwitchover records a switchover request for the leader.
	RequestSwitchover(ctx context.Context, sw Switchover) error
	// ClearSwitchover removes the switchover record.
	ClearSwitchover(ctx context.Context) error

	// Close releases nothing it holds in the store (a lease simply
	// expires) but closes the connection.
	Close() error
}

// Role names as members publish them.
const (
	RolePrimary = "primary"
	RoleStandby = "standby"
	// RoleStopped is a member whose PostgreSQL is not running.
	RoleStopped = "stopped"
	// RoleUnknown is a running server the agent cannot query.
	RoleUnknown = "unknown"
)

// Member is what an agent publishes about itself and its PostgreSQL.
type Member struct {
	Name string `json:"name"`
	// ConnAddr is host:port of its PostgreSQL.
	ConnAddr string `json:"conn_addr"`
	// APIAddr is host:port of the agent's HTTP API.
	APIAddr string `json:"api_addr"`
	// Role is one of the Role* constants.
	Role string `json:"role"`
	// State says what the agent is doing: running, starting, stopping,
	// cloning, rewinding, bootstrapping, promoting, fenced, ...
	State string `json:"state"`
	// Warm is true for a warm standby (hot_standby=off): it accepts no
	// connections, so its positions come from pg_controldata and the
	// leader's report.
	Warm bool `json:"warm,omitempty"`
	// Timeline is the server's timeline (0 when unknown).
	Timeline uint32 `json:"timeline"`
	// ReceivedLSN is WAL received (standby) or written (primary).
	ReceivedLSN uint64 `json:"received_lsn"`
	// ReplayedLSN is WAL replayed (standby) or written (primary).
	ReplayedLSN uint64 `json:"replayed_lsn"`
	// Streaming is true while the standby's WAL receiver streams.
	Streaming bool `json:"streaming"`
	// Upstream is the member the standby is configured to follow.
	Upstream string `json:"upstream,omitempty"`
	// SystemID is the PostgreSQL system identifier.
	SystemID string `json:"system_id,omitempty"`
	// UpdatedAt is when the agent observed this.
	UpdatedAt time.Time `json:"updated_at"`

	// Rev is the store's revision of the record; not serialized.
	Rev int64 `json:"-"`
}

// LSN is the furthest WAL position the member has.
func (m Member) LSN() uint64 { return max(m.ReceivedLSN, m.ReplayedLSN) }

// Sync is the synchronous replication state the leader maintains. Only
// Leader and Standby may be promoted in synchronous mode: between them they
// hold every acknowledged commit.
type Sync struct {
	Leader  string `json:"leader"`
	Standby string `json:"standby,omitempty"`
}

// Replica is what the leader saw of one standby in pg_stat_replication.
type Replica struct {
	State     string `json:"state"`
	SyncState string `json:"sync_state"`
	FlushLSN  uint64 `json:"flush_lsn"`
	ReplayLSN uint64 `json:"replay_lsn"`
}

// Status is the leader's last report; it outlives the leader, so a failover
// knows how far the old primary had written.
type Status struct {
	Leader      string             `json:"leader"`
	Timeline    uint32             `json:"timeline"`
	LSN         uint64             `json:"lsn"`
	Replication map[string]Replica `json:"replication,omitempty"`
	UpdatedAt   time.Time          `json:"updated_at"`
}

// Switchover is a planned change of leader. To is empty for "any
// suitable standby" in a request; the leader fills it before handing over.
type Switchover struct {
	From string `json:"from"`
	To   string `json:"to,omitempty"`
	// At is when it was requested; a stale one is ignored.
	At time.Time `json:"at"`
	// HandedOverAt is set by the leader when it released the key.
	HandedOverAt time.Time `json:"handed_over_at,omitzero"`
	// LSN is the old primary's final WAL position (its shutdown checkpoint)
	// that the target has replayed; 0 in a request.
	LSN uint64 `json:"lsn,omitempty"`
	// Error is set by the leader when it refuses the request.
	Error string `json:"error,omitempty"`
}

// Cluster is one consistent read of the store.
type Cluster struct {
	// Leader names the leader key's holder; "" when no one holds it.
	Leader string
	// Initialized is the system identifier once bootstrapped, "" before.
	Initialized string
	// Bootstrapping names the member running initdb, if any.
	Bootstrapping string
	Members       map[string]Member
	Sync          Sync
	Status        Status
	// Switchover is nil when none is requested or in progress.
	Switchover *Switchover
	// Rev is the store revision the read saw.
	Rev int64
}

// Keys are the store keys of one scope.
type Keys struct{ prefix string }

// NewKeys returns the keys of scope.
func NewKeys(scope string) Keys { return Keys{prefix: "/pgrouter/" + scope + "/"} }

// Prefix is the common prefix of every key of the scope.
func (k Keys) Prefix() string { return k.prefix }

// Leader, Initialize, Sync, Status and Switchover are the single keys.
func (k Keys) Leader() string     { return k.prefix + "leader" }
func (k Keys) Initialize() string { return k.prefix + "initialize" }
func (k Keys) Sync() string       { return k.prefix + "sync" }
func (k Keys) Status() string     { return k.prefix + "status" }
func (k Keys) Switchover() string { return k.prefix + "switchover" }

// Members is the prefix of member records; Member is one of them.
func (k Keys) Members() string           { return k.prefix + "members/" }
func (k Keys) Member(name string) string { return k.prefix + "members/" + name }

// bootstrapPrefix marks the initialize key while a member runs initdb.
const bootstrapPrefix = "bootstrapping:"

// ValidName reports whether s may be a member or scope name: letters,
// digits, '-', '_' and '.', 1..63 characters (it becomes a key segment, an
// application_name and part of synchronous_standby_names).
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	return strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) < 0
}

// encodeMember returns a member record as stored, and the same without its
// timestamp, which tells whether anything but the time changed since the
// last write.
func encodeMember(m Member) (same, data []byte, err error) {
	cmp := m
	cmp.UpdatedAt = time.Time{}
	if same, err = json.Marshal(cmp); err != nil {
		return nil, nil, err
	}
	data, err = json.Marshal(m)
	return same, data, err
}
