package health

import (
	"testing"

	"github.com/pgrouter/pgrouter/topology"
)

const (
	P = topology.RolePrimary
	S = topology.RoleStandby
	U = topology.RoleUnknown
)

func up(r topology.Role, tl uint32, wal uint64) topology.Health {
	return topology.Health{Up: true, AcceptsConnections: true, Role: r, Timeline: tl, WALPosition: wal}
}

func TestMerge(t *testing.T) {
	type want struct {
		role topology.Role
		lag  uint64
	}
	tests := []struct {
		name    string
		members []topology.Member
		obs     map[string]topology.Health
		want    map[string]want
	}{
		{
			name:    "never checked",
			members: []topology.Member{{Name: "a"}, {Name: "b", Claimed: P}},
			want:    map[string]want{"a": {U, 0}, "b": {U, 0}},
		},
		{
			name:    "primary and standbys with lag",
			members: []topology.Member{{Name: "c"}, {Name: "a"}, {Name: "b"}},
			obs:     map[string]topology.Health{"a": up(P, 1, 1000), "b": up(S, 1, 400), "c": up(S, 1, 1000)},
			want:    map[string]want{"a": {P, 0}, "b": {S, 600}, "c": {S, 0}},
		},
		{
			name:    "standby ahead of primary reading has no negative lag",
			members: []topology.Member{{Name: "a"}, {Name: "b"}},
			obs:     map[string]topology.Health{"a": up(P, 1, 1000), "b": up(S, 1, 1200)},
			want:    map[string]want{"a": {P, 0}, "b": {S, 0}},
		},
		{
			name:    "no primary no lag",
			members: []topology.Member{{Name: "a"}, {Name: "b"}},
			obs:     map[string]topology.Health{"a": {Role: P, WALPosition: 1000}, "b": up(S, 1, 400)},
			want:    map[string]want{"a": {U, 0}, "b": {S, 0}},
		},
		{
			name:    "down member is unknown",
			members: []topology.Member{{Name: "a", Claimed: P}},
			obs:     map[string]topology.Health{"a": {Err: "refused"}},
			want:    map[string]want{"a": {U, 0}},
		},
		{
			name:    "claimed standby observed primary fails closed",
			members: []topology.Member{{Name: "a", Claimed: S}, {Name: "b", Claimed: S}},
			obs:     map[string]topology.Health{"a": up(P, 2, 10), "b": up(S, 2, 5)},
			want:    map[string]want{"a": {U, 0}, "b": {S, 0}},
		},
		{
			name:    "claimed primary observed in recovery is a standby",
			members: []topology.Member{{Name: "a", Claimed: P}, {Name: "b", Claimed: S}},
			obs:     map[string]topology.Health{"a": up(S, 1, 10), "b": up(P, 2, 30)},
			want:    map[string]want{"a": {S, 0}, "b": {U, 0}}, // b fails closed: no primary, no lag
		},
		{
			name:    "claims agree",
			members: []topology.Member{{Name: "a", Claimed: P}, {Name: "b", Claimed: S}},
			obs:     map[string]topology.Health{"a": up(P, 1, 10), "b": up(S, 1, 4)},
			want:    map[string]want{"a": {P, 0}, "b": {S, 6}},
		},
		{
			name:    "alive but role not observed",
			members: []topology.Member{{Name: "a", Claimed: P}},
			obs:     map[string]topology.Health{"a": {Up: true}},
			want:    map[string]want{"a": {U, 0}},
		},
		{
			name:    "warm standby keeps its role but accepts nothing",
			members: []topology.Member{{Name: "a"}, {Name: "w"}},
			obs:     map[string]topology.Health{"a": up(P, 1, 10), "w": {Up: true, Role: S}},
			want:    map[string]want{"a": {P, 0}, "w": {S, 10}},
		},
		{
			name:    "two primaries higher timeline wins",
			members: []topology.Member{{Name: "old"}, {Name: "new"}, {Name: "s"}},
			obs:     map[string]topology.Health{"old": up(P, 1, 500), "new": up(P, 2, 300), "s": up(S, 2, 100)},
			want:    map[string]want{"old": {U, 0}, "new": {P, 0}, "s": {S, 200}},
		},
		{
			name:    "two primaries same timeline none wins",
			members: []topology.Member{{Name: "a"}, {Name: "b"}, {Name: "s"}},
			obs:     map[string]topology.Health{"a": up(P, 2, 500), "b": up(P, 2, 300), "s": up(S, 2, 100)},
			want:    map[string]want{"a": {U, 0}, "b": {U, 0}, "s": {S, 0}},
		},
		{
			name:    "three primaries tie on top",
			members: []topology.Member{{Name: "a"}, {Name: "b"}, {Name: "c"}},
			obs:     map[string]topology.Health{"a": up(P, 3, 1), "b": up(P, 3, 1), "c": up(P, 1, 1)},
			want:    map[string]want{"a": {U, 0}, "b": {U, 0}, "c": {U, 0}},
		},
		{
			name:    "duplicate name keeps first",
			members: []topology.Member{{Name: "a", Addr: "x"}, {Name: "a", Addr: "y", Claimed: S}},
			obs:     map[string]topology.Health{"a": up(P, 1, 1)},
			want:    map[string]want{"a": {P, 0}},
		},
		{
			name:    "stale lag from observations is recomputed",
			members: []topology.Member{{Name: "a"}},
			obs:     map[string]topology.Health{"a": {Up: true, AcceptsConnections: true, Role: S, ReplayLagBytes: 99}},
			want:    map[string]want{"a": {S, 0}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Merge(7, tc.members, tc.obs)
			if s.Version != 7 {
				t.Errorf("Version = %d", s.Version)
			}
			if len(s.Members) != len(tc.want) {
				t.Fatalf("got %d members, want %d", len(s.Members), len(tc.want))
			}
			for i, ms := range s.Members {
				if i > 0 && s.Members[i-1].Name >= ms.Name {
					t.Errorf("members not sorted by name: %q before %q", s.Members[i-1].Name, ms.Name)
				}
				w, ok := tc.want[ms.Name]
				if !ok {
					t.Fatalf("unexpected member %q", ms.Name)
				}
				if ms.Role != w.role || ms.Health.ReplayLagBytes != w.lag {
					t.Errorf("%s: role %v lag %d, want %v %d", ms.Name, ms.Role, ms.Health.ReplayLagBytes, w.role, w.lag)
				}
				if o, ok := tc.obs[ms.Name]; ok && ms.Health.Role != o.Role {
					t.Errorf("%s: observed role rewritten to %v", ms.Name, ms.Health.Role)
				}
			}
			if tc.name == "duplicate name keeps first" && s.Members[0].Addr != "x" {
				t.Errorf("kept %q, want the first entry", s.Members[0].Addr)
			}
		})
	}
}

func TestMergeReasons(t *testing.T) {
	_, reasons := merge(1, []topology.Member{{Name: "old"}, {Name: "new"}, {Name: "s", Claimed: P}},
		map[string]topology.Health{"old": up(P, 1, 5), "new": up(P, 2, 5), "s": up(S, 2, 5)})
	for name, want := range map[string]string{
		"old": "another primary is on higher timeline 2",
		"new": "observed primary (not in recovery)",
		"s":   "claimed primary but observed in recovery",
	} {
		if reasons[name] != want {
			t.Errorf("reason for %s = %q, want %q", name, reasons[name], want)
		}
	}
}
