package main

import (
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/dcs"
	"github.com/pgrouter/pgrouter/election"
)

func TestCheckFailover(t *testing.T) {
	members := func(standbyRole string, streaming bool, replayed uint64) []dcs.Member {
		return []dcs.Member{
			{Name: "a", Role: dcs.RolePrimary, ReceivedLSN: 100 << 20, ReplayedLSN: 100 << 20},
			{Name: "b", Role: standbyRole, Streaming: streaming, ReceivedLSN: 100 << 20, ReplayedLSN: replayed},
		}
	}
	for _, tc := range []struct {
		name string
		v    election.View
		to   string
		want string // "" for allowed
	}{
		{"ok", election.View{Leader: "a", Members: members(dcs.RoleStandby, true, 100<<20)}, "b", ""},
		{"not a member", election.View{Leader: "a", Members: members(dcs.RoleStandby, true, 0)}, "c", "not a member"},
		{"already leader", election.View{Leader: "a", Members: members(dcs.RoleStandby, true, 0)}, "a", "already the leader"},
		{"no leader", election.View{Members: members(dcs.RoleStandby, true, 0)}, "b", "no leader"},
		{"stopped", election.View{Leader: "a", Members: members(dcs.RoleStopped, false, 0)}, "b", "no healthy candidate"},
		{"not streaming", election.View{Leader: "a", Members: members(dcs.RoleStandby, false, 100<<20)}, "b", "does not stream"},
		{"lag", election.View{Leader: "a", Members: members(dcs.RoleStandby, true, 90<<20)}, "b", "lag too high"},
		{"lag within limit", election.View{Leader: "a", Members: members(dcs.RoleStandby, true, 100<<20-1000)}, "b", ""},
		{"not the sync standby", election.View{Leader: "a", Sync: &dcs.Sync{Leader: "a", Standby: "c"},
			Members: members(dcs.RoleStandby, true, 100<<20)}, "b", "synchronous mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkFailover(tc.v, tc.to, 1<<20)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestMergeStatus(t *testing.T) {
	view := &election.View{Scope: "s", Leader: "a", Members: []dcs.Member{
		{Name: "a", ConnAddr: "h:1", Role: dcs.RolePrimary, State: "running", Timeline: 2, ReceivedLSN: 3000},
		{Name: "b", ConnAddr: "h:2", Role: dcs.RoleStandby, State: "running", Timeline: 2, ReceivedLSN: 3000, ReplayedLSN: 1000},
	}}
	topo := &proxyTopology{Primary: "a", Members: []proxyMember{{Name: "a", Addr: "h:1", Role: "primary", Sessions: 4}, {Name: "b", Addr: "h:2", Role: "standby", Sessions: 1}}}
	topo.Members[0].Health.Up = true
	st := mergeStatus(view, topo)
	if st.Leader != "a" || len(st.Members) != 2 {
		t.Fatalf("%+v", st)
	}
	a, b := st.Members[0], st.Members[1]
	if !a.Leader || *a.LagBytes != 0 || *a.Sessions != 4 || a.State != "running" {
		t.Errorf("a: %+v", a)
	}
	if *b.LagBytes != 2000 || *b.Sessions != 1 || b.State != "running, proxy: down" {
		t.Errorf("b: %+v (lag %d)", b, *b.LagBytes)
	}
	// The proxy alone: its roles and health.
	st = mergeStatus(nil, topo)
	if st.Members[1].Role != "standby" || st.Members[1].State != "down" || st.Members[1].LagBytes != nil {
		t.Errorf("proxy only: %+v", st.Members[1])
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 6 << 20: "6.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
