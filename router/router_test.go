package router

import (
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgrouter/pgrouter/topology"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// member builds a usable member with effective role r; mods adjust it.
func member(name string, r topology.Role, mods ...func(*topology.MemberState)) topology.MemberState {
	m := topology.MemberState{
		Member: topology.Member{Name: name, Addr: name + ":5432"},
		Health: topology.Health{Up: true, AcceptsConnections: true, Role: r},
		Role:   r,
	}
	for _, f := range mods {
		f(&m)
	}
	return m
}

func down(m *topology.MemberState)    { m.Health.Up = false; m.Health.AcceptsConnections = false }
func warm(m *topology.MemberState)    { m.Health.AcceptsConnections = false }
func unknown(m *topology.MemberState) { m.Role = topology.RoleUnknown }
func lagBytes(n uint64) func(*topology.MemberState) {
	return func(m *topology.MemberState) { m.Health.ReplayLagBytes = n }
}
func lagTime(d time.Duration) func(*topology.MemberState) {
	return func(m *topology.MemberState) { m.Health.ReplayLag = d }
}

func snap(ms ...topology.MemberState) *topology.Snapshot {
	return &topology.Snapshot{Version: 1, Members: ms}
}

func TestRoute(t *testing.T) {
	const (
		P = topology.RolePrimary
		S = topology.RoleStandby
	)
	healthy := snap(member("a", P), member("b", S), member("c", S))
	fallback := Policy{FallbackToPrimary: true}
	counts := map[string]int{"a": 0, "b": 5, "c": 2, "d": 2}

	tests := []struct {
		name     string
		in       Intent
		s        *topology.Snapshot
		p        Policy
		want     string // member name; "" when an error is expected
		role     topology.Role
		fallback bool
		err      error
	}{
		{name: "rw to primary", in: Intent{Listener: ListenerReadWrite}, s: healthy, want: "a", role: P},
		{name: "any to primary", in: Intent{Listener: ListenerAny}, s: healthy, want: "a", role: P},
		{name: "nil snapshot rw", in: Intent{Listener: ListenerReadWrite}, s: nil, err: ErrNoPrimary},
		{name: "nil snapshot ro", in: Intent{Listener: ListenerReadOnly}, s: nil, p: fallback, err: ErrNoStandby},
		{name: "empty snapshot", in: Intent{Listener: ListenerAny}, s: snap(), err: ErrNoPrimary},
		{name: "no primary rw", in: Intent{Listener: ListenerReadWrite}, s: snap(member("b", S)), err: ErrNoPrimary},
		{name: "no primary any", in: Intent{Listener: ListenerAny}, s: snap(member("b", S)), err: ErrNoPrimary},
		{name: "no primary ro still reads", in: Intent{Listener: ListenerReadOnly}, s: snap(member("b", S)), want: "b", role: S},
		{name: "primary down", in: Intent{Listener: ListenerReadWrite}, s: snap(member("a", P, down), member("b", S)), err: ErrNoPrimary},
		{name: "primary not accepting", in: Intent{Listener: ListenerReadWrite}, s: snap(member("a", P, warm)), err: ErrNoPrimary},
		{name: "two primaries fail closed", in: Intent{Listener: ListenerReadWrite}, s: snap(member("a", P), member("b", P)), err: ErrNoPrimary},
		{name: "two primaries one down", in: Intent{Listener: ListenerReadWrite}, s: snap(member("a", P, down), member("b", P)), want: "b", role: P},
		{
			// Observed primary but discovery claims standby: the merge
			// made it unknown, and the router only reads Role.
			name: "claimed standby observed primary",
			in:   Intent{Listener: ListenerReadWrite},
			s: snap(member("a", P, unknown, func(m *topology.MemberState) { m.Claimed = S }),
				member("b", S)),
			err: ErrNoPrimary,
		},
		{
			// Claimed primary, observed in recovery: routed as a standby,
			// never as the primary.
			name: "claimed primary observed standby rw",
			in:   Intent{Listener: ListenerReadWrite},
			s:    snap(member("a", S, func(m *topology.MemberState) { m.Claimed = P })),
			err:  ErrNoPrimary,
		},
		{
			name: "claimed primary observed standby ro",
			in:   Intent{Listener: ListenerReadOnly},
			s:    snap(member("a", S, func(m *topology.MemberState) { m.Claimed = P })),
			want: "a", role: S,
		},
		{name: "ro round robin 0", in: Intent{Listener: ListenerReadOnly, Seq: 0}, s: healthy, want: "b", role: S},
		{name: "ro round robin 1", in: Intent{Listener: ListenerReadOnly, Seq: 1}, s: healthy, want: "c", role: S},
		{name: "ro round robin 2 wraps", in: Intent{Listener: ListenerReadOnly, Seq: 2}, s: healthy, want: "b", role: S},
		{
			name: "ro round robin by name not snapshot order",
			in:   Intent{Listener: ListenerReadOnly, Seq: 0},
			s:    snap(member("c", S), member("a", P), member("b", S)),
			want: "b", role: S,
		},
		{
			name: "least connections",
			in:   Intent{Listener: ListenerReadOnly, Sessions: func(m string) int { return counts[m] }},
			s:    healthy, p: Policy{Balance: LeastConnections},
			want: "c", role: S,
		},
		{
			name: "least connections tie by name",
			in:   Intent{Listener: ListenerReadOnly, Sessions: func(m string) int { return counts[m] }},
			s:    snap(member("a", P), member("d", S), member("c", S)), p: Policy{Balance: LeastConnections},
			want: "c", role: S,
		},
		{
			name: "least connections nil sessions",
			in:   Intent{Listener: ListenerReadOnly, Seq: 1},
			s:    healthy, p: Policy{Balance: LeastConnections},
			want: "b", role: S,
		},
		{
			name: "lagging by bytes skipped",
			in:   Intent{Listener: ListenerReadOnly, Seq: 0},
			s:    snap(member("a", P), member("b", S, lagBytes(2<<20)), member("c", S, lagBytes(10))),
			p:    Policy{MaxLagBytes: 1 << 20},
			want: "c", role: S,
		},
		{
			name: "lag at the limit is allowed",
			in:   Intent{Listener: ListenerReadOnly, Seq: 0},
			s:    snap(member("a", P), member("b", S, lagBytes(1<<20)), member("c", S)),
			p:    Policy{MaxLagBytes: 1 << 20},
			want: "b", role: S,
		},
		{
			name: "byte lag ignored without limit",
			in:   Intent{Listener: ListenerReadOnly, Seq: 0},
			s:    snap(member("a", P), member("b", S, lagBytes(1<<40))),
			want: "b", role: S,
		},
		{
			name: "lagging by time skipped",
			in:   Intent{Listener: ListenerReadOnly, Seq: 0},
			s:    snap(member("a", P), member("b", S, lagTime(time.Minute)), member("c", S, lagTime(time.Second))),
			p:    Policy{MaxLag: 10 * time.Second},
			want: "c", role: S,
		},
		{
			name: "all lagging falls back",
			in:   Intent{Listener: ListenerReadOnly},
			s:    snap(member("a", P), member("b", S, lagTime(time.Minute)), member("c", S, lagBytes(1<<30))),
			p:    Policy{MaxLag: time.Second, MaxLagBytes: 1 << 20, FallbackToPrimary: true},
			want: "a", role: P, fallback: true,
		},
		{
			name: "all lagging no fallback",
			in:   Intent{Listener: ListenerReadOnly},
			s:    snap(member("a", P), member("b", S, lagTime(time.Minute))),
			p:    Policy{MaxLag: time.Second},
			err:  ErrNoStandby,
		},
		{
			name: "warm standby never chosen",
			in:   Intent{Listener: ListenerReadOnly, Seq: 0},
			s:    snap(member("a", P), member("b", S, warm), member("c", S)),
			want: "c", role: S,
		},
		{
			name: "only warm standby falls back",
			in:   Intent{Listener: ListenerReadOnly},
			s:    snap(member("a", P), member("b", S, warm)), p: fallback,
			want: "a", role: P, fallback: true,
		},
		{
			name: "only warm standby no fallback",
			in:   Intent{Listener: ListenerReadOnly},
			s:    snap(member("a", P), member("b", S, warm)),
			err:  ErrNoStandby,
		},
		{
			name: "down standby skipped",
			in:   Intent{Listener: ListenerReadOnly, Seq: 0},
			s:    snap(member("a", P), member("b", S, down), member("c", S)),
			want: "c", role: S,
		},
		{
			name: "unknown role never read from",
			in:   Intent{Listener: ListenerReadOnly},
			s:    snap(member("a", P), member("b", topology.RoleUnknown)), p: fallback,
			want: "a", role: P, fallback: true,
		},
		{
			name: "ro fallback without primary",
			in:   Intent{Listener: ListenerReadOnly},
			s:    snap(member("a", P, down), member("b", S, down)), p: fallback,
			err: ErrNoStandby,
		},
		{name: "any read-only to standby", in: Intent{Listener: ListenerAny, ReadOnly: true, Seq: 1}, s: healthy, want: "c", role: S},
		{
			name: "any read-only always falls back",
			in:   Intent{Listener: ListenerAny, ReadOnly: true},
			s:    snap(member("a", P), member("b", S, down)),
			p:    Policy{FallbackToPrimary: false},
			want: "a", role: P, fallback: true,
		},
		{
			name: "any read-only nothing usable",
			in:   Intent{Listener: ListenerAny, ReadOnly: true},
			s:    snap(member("a", P, down)),
			err:  ErrNoStandby,
		},
		{
			name: "rw ignores ReadOnly flag",
			in:   Intent{Listener: ListenerReadWrite, ReadOnly: true},
			s:    healthy, want: "a", role: P,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Route(tc.in, tc.s, tc.p)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Route() error = %v, want %v (decision %+v)", err, tc.err, d)
				}
				return
			}
			if err != nil {
				t.Fatalf("Route() error = %v, want member %q", err, tc.want)
			}
			if d.Member.Name != tc.want || d.Role != tc.role || d.Fallback != tc.fallback {
				t.Fatalf("Route() = member %q role %v fallback %v, want %q %v %v",
					d.Member.Name, d.Role, d.Fallback, tc.want, tc.role, tc.fallback)
			}
		})
	}
}

func TestPrimary(t *testing.T) {
	const P = topology.RolePrimary
	tests := []struct {
		name string
		s    *topology.Snapshot
		want string
	}{
		{"nil", nil, ""},
		{"one", snap(member("a", P), member("b", topology.RoleStandby)), "a"},
		{"two", snap(member("a", P), member("b", P)), ""},
		{"down", snap(member("a", P, down)), ""},
		{"not accepting", snap(member("a", P, warm)), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, ok := Primary(tc.s)
			if ok != (tc.want != "") || m.Name != tc.want {
				t.Fatalf("Primary() = %q, %v; want %q", m.Name, ok, tc.want)
			}
		})
	}
}

func TestMayUseStandby(t *testing.T) {
	for _, tc := range []struct {
		in   Intent
		want bool
	}{
		{Intent{Listener: ListenerReadOnly}, true},
		{Intent{Listener: ListenerAny, ReadOnly: true}, true},
		{Intent{Listener: ListenerAny}, false},
		{Intent{Listener: ListenerReadWrite, ReadOnly: true}, false},
	} {
		if got := tc.in.MayUseStandby(); got != tc.want {
			t.Errorf("%+v.MayUseStandby() = %v, want %v", tc.in, got, tc.want)
		}
	}
}
