package proxy

import (
	"testing"

	"github.com/pgrouter/pgrouter/topology"
)

func TestStaleReason(t *testing.T) {
	up := func(name string, role topology.Role) topology.MemberState {
		return topology.MemberState{Member: topology.Member{Name: name}, Role: role,
			Health: topology.Health{Up: true, AcceptsConnections: true, Role: role}}
	}
	down := topology.MemberState{Member: topology.Member{Name: "a"}}
	snap := func(ms ...topology.MemberState) *topology.Snapshot { return &topology.Snapshot{Members: ms} }
	tests := []struct {
		name   string
		member string
		role   topology.Role
		snap   *topology.Snapshot
		stale  bool
	}{
		{"primary still primary", "a", topology.RolePrimary, snap(up("a", topology.RolePrimary), up("b", topology.RoleStandby)), false},
		{"primary now in recovery", "a", topology.RolePrimary, snap(up("a", topology.RoleStandby)), true},
		{"another member is primary", "a", topology.RolePrimary, snap(down, up("b", topology.RolePrimary)), true},
		{"primary unreachable, no other primary: keep", "a", topology.RolePrimary, snap(down, up("b", topology.RoleStandby)), false},
		{"member removed", "a", topology.RolePrimary, snap(up("b", topology.RolePrimary)), true},
		{"standby still standby", "b", topology.RoleStandby, snap(up("a", topology.RolePrimary), up("b", topology.RoleStandby)), false},
		{"standby promoted", "b", topology.RoleStandby, snap(up("b", topology.RolePrimary)), true},
		{"standby, primary changed elsewhere: keep", "b", topology.RoleStandby, snap(up("b", topology.RoleStandby), up("c", topology.RolePrimary)), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			why, stale := staleReason(tc.member, tc.role, tc.snap)
			if stale != tc.stale {
				t.Fatalf("stale = %v (%s), want %v", stale, why, tc.stale)
			}
		})
	}
}
