package election

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgrouter/pgrouter/dcs"

	"github.com/pgrouter/pgrouter/topology"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func standby(name string, tl uint32, lsn uint64) dcs.Member {
	return dcs.Member{Name: name, Role: dcs.RoleStandby, Timeline: tl, ReceivedLSN: lsn, ReplayedLSN: lsn}
}

func members(ms ...dcs.Member) map[string]dcs.Member {
	out := map[string]dcs.Member{}
	for _, m := range ms {
		out[m.Name] = m
	}
	return out
}

func TestChoose(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	async := Policy{MaxLagOnFailover: 1000, SwitchoverWindow: 8 * time.Second}
	syncP := Policy{MaxLagOnFailover: 1000, Synchronous: true, SwitchoverWindow: 8 * time.Second}
	tests := []struct {
		name     string
		cluster  dcs.Cluster
		policy   Policy
		want     string
		eligible int
		rejected map[string]string // substring of the reason, per member
	}{
		{
			name:     "no members",
			cluster:  dcs.Cluster{},
			policy:   async,
			want:     "",
			rejected: map[string]string{},
		},
		{
			name:     "most advanced standby wins",
			cluster:  dcs.Cluster{Members: members(standby("a", 1, 500), standby("b", 1, 900), standby("c", 1, 700))},
			policy:   async,
			want:     "b",
			eligible: 3,
			rejected: map[string]string{"a": "less advanced", "c": "less advanced"},
		},
		{
			name:     "newer timeline beats further position",
			cluster:  dcs.Cluster{Members: members(standby("a", 1, 5000), standby("b", 2, 100))},
			policy:   Policy{},
			want:     "b",
			eligible: 2,
		},
		{
			name:     "tie goes to the smallest name",
			cluster:  dcs.Cluster{Members: members(standby("b", 1, 500), standby("a", 1, 500))},
			policy:   async,
			want:     "a",
			eligible: 2,
		},
		{
			name: "stopped and unknown members are not eligible",
			cluster: dcs.Cluster{Members: members(
				dcs.Member{Name: "a", Role: dcs.RoleStopped, ReceivedLSN: 9000},
				dcs.Member{Name: "b", Role: dcs.RoleUnknown, ReceivedLSN: 9000},
				standby("c", 1, 10))},
			policy:   Policy{},
			want:     "c",
			eligible: 1,
			rejected: map[string]string{"a": "postgres is stopped", "b": "postgres is unknown"},
		},
		{
			name: "lag over max-lag-on-failover excludes",
			cluster: dcs.Cluster{
				Status:  dcs.Status{Leader: "old", Timeline: 1, LSN: 10_000},
				Members: members(standby("a", 1, 8_000), standby("b", 1, 9_500)),
			},
			policy:   async,
			want:     "b",
			eligible: 1,
			rejected: map[string]string{"a": "lags 2000 bytes"},
		},
		{
			name: "nobody within max lag",
			cluster: dcs.Cluster{
				Status:  dcs.Status{Leader: "old", Timeline: 1, LSN: 10_000},
				Members: members(standby("a", 1, 8_000)),
			},
			policy:   async,
			want:     "",
			rejected: map[string]string{"a": "over max-lag-on-failover"},
		},
		{
			name: "the leader's report of a warm standby's flush counts",
			cluster: dcs.Cluster{
				Status: dcs.Status{Leader: "old", Timeline: 3, LSN: 10_000, Replication: map[string]dcs.Replica{
					"w": {State: "streaming", FlushLSN: 9_900}}},
				Members: members(dcs.Member{Name: "w", Role: dcs.RoleStandby, Warm: true, Timeline: 2, ReceivedLSN: 100},
					standby("h", 3, 9_800)),
			},
			policy:   async,
			want:     "w",
			eligible: 2,
		},
		{
			name: "older timeline than the last leader is not eligible",
			cluster: dcs.Cluster{
				Status:  dcs.Status{Leader: "old", Timeline: 3, LSN: 100},
				Members: members(standby("a", 2, 100), standby("b", 3, 50)),
			},
			policy:   async,
			want:     "b",
			eligible: 1,
			rejected: map[string]string{"a": "older than the last leader's 3"},
		},
		{
			name: "synchronous mode: only the sync standby",
			cluster: dcs.Cluster{
				Sync:    dcs.Sync{Leader: "old", Standby: "a"},
				Members: members(standby("a", 1, 500), standby("b", 1, 900)),
			},
			policy:   syncP,
			want:     "a",
			eligible: 1,
			rejected: map[string]string{"b": "not the synchronous standby"},
		},
		{
			name: "synchronous mode: no sync standby, no failover",
			cluster: dcs.Cluster{
				Sync:    dcs.Sync{Leader: "old"},
				Members: members(standby("a", 1, 500), standby("b", 1, 900)),
			},
			policy: syncP,
			want:   "",
		},
		{
			name: "synchronous mode with no record at all",
			cluster: dcs.Cluster{
				Members: members(standby("a", 1, 500)),
			},
			policy: syncP,
			want:   "",
		},
		{
			name: "synchronous mode: the last leader may come back",
			cluster: dcs.Cluster{
				Sync:    dcs.Sync{Leader: "old", Standby: "a"},
				Status:  dcs.Status{Leader: "old", Timeline: 1, LSN: 1000},
				Members: members(dcs.Member{Name: "old", Role: dcs.RolePrimary, Timeline: 1, ReceivedLSN: 1000}, standby("a", 1, 990)),
			},
			policy:   syncP,
			want:     "old",
			eligible: 2,
		},
		{
			name: "a primary that was not the last leader is never chosen",
			cluster: dcs.Cluster{
				Status:  dcs.Status{Leader: "b", Timeline: 2, LSN: 1000},
				Members: members(dcs.Member{Name: "x", Role: dcs.RolePrimary, Timeline: 2, ReceivedLSN: 5000}, standby("a", 2, 990)),
			},
			policy:   async,
			want:     "a",
			eligible: 1,
			rejected: map[string]string{"x": "was not the last leader"},
		},
		{
			name: "the last leader on an older timeline is not chosen",
			cluster: dcs.Cluster{
				Status:  dcs.Status{Leader: "old", Timeline: 1, LSN: 1000},
				Members: members(dcs.Member{Name: "old", Role: dcs.RolePrimary, Timeline: 1, ReceivedLSN: 5000}, standby("a", 2, 990)),
			},
			policy:   async,
			want:     "a",
			eligible: 1,
			rejected: map[string]string{"old": "older than 2"},
		},
		{
			name: "switchover target only, while the window lasts",
			cluster: dcs.Cluster{
				Switchover: &dcs.Switchover{From: "old", To: "b", HandedOverAt: now.Add(-time.Second)},
				Members:    members(standby("a", 1, 900), standby("b", 1, 800)),
			},
			policy:   async,
			want:     "b",
			eligible: 1,
			rejected: map[string]string{"a": "switchover to b"},
		},
		{
			name: "stale switchover no longer restricts",
			cluster: dcs.Cluster{
				Switchover: &dcs.Switchover{From: "old", To: "b", HandedOverAt: now.Add(-time.Minute)},
				Members:    members(standby("a", 1, 900), standby("b", 1, 800)),
			},
			policy:   async,
			want:     "a",
			eligible: 2,
		},
		{
			name: "a switchover request not yet handed over does not restrict",
			cluster: dcs.Cluster{
				Switchover: &dcs.Switchover{From: "old", To: "b", At: now},
				Members:    members(standby("a", 1, 900), standby("b", 1, 800)),
			},
			policy:   async,
			want:     "a",
			eligible: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Choose(&tc.cluster, tc.policy, now)
			if got.Name != tc.want {
				t.Fatalf("Choose = %q (%s), want %q; rejected %v", got.Name, got.Reason, tc.want, got.Rejected)
			}
			if got.Reason == "" {
				t.Errorf("no reason given")
			}
			if tc.want != "" && got.Eligible != tc.eligible {
				t.Errorf("eligible = %d, want %d", got.Eligible, tc.eligible)
			}
			for name, sub := range tc.rejected {
				if !strings.Contains(got.Rejected[name], sub) {
					t.Errorf("rejected[%s] = %q, want it to contain %q", name, got.Rejected[name], sub)
				}
			}
		})
	}
}

func TestChooseSync(t *testing.T) {
	ms := members(standby("a", 1, 0), standby("b", 1, 0), standby("c", 1, 0))
	streaming := func(flush uint64) dcs.Replica { return dcs.Replica{State: "streaming", FlushLSN: flush} }
	tests := []struct {
		name    string
		current string
		repl    map[string]dcs.Replica
		want    string
	}{
		{"none streams", "", map[string]dcs.Replica{"a": {State: "catchup"}}, ""},
		{"furthest flush", "", map[string]dcs.Replica{"a": streaming(5), "b": streaming(9), "c": streaming(7)}, "b"},
		{"tie by name", "", map[string]dcs.Replica{"c": streaming(9), "b": streaming(9)}, "b"},
		{"current kept while it streams", "a", map[string]dcs.Replica{"a": streaming(1), "b": streaming(9)}, "a"},
		{"current replaced when it stops", "a", map[string]dcs.Replica{"a": {State: "startup"}, "b": streaming(9)}, "b"},
		{"current gone, none left", "a", nil, ""},
		{"non-members do not count", "", map[string]dcs.Replica{"pg_basebackup": streaming(99), "c": streaming(1)}, "c"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ChooseSync(tc.current, tc.repl, ms)
			if got.Standby != tc.want || got.Reason == "" {
				t.Fatalf("ChooseSync = %+v, want %q with a reason", got, tc.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for valid
	}{
		{"defaults", Config{Name: "n1", Scope: "demo"}, ""},
		{"fast but sound", Config{Name: "n1", Scope: "demo", Rules: Rules{TTL: 2 * time.Second, RenewDeadline: 600 * time.Millisecond, RetryPeriod: 200 * time.Millisecond}}, ""},
		{"fencing arithmetic", Config{Name: "n1", Scope: "demo", Rules: Rules{TTL: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond}}, "must exceed renew-deadline"},
		{"ttl not whole seconds", Config{Name: "n1", Scope: "demo", Rules: Rules{TTL: 4500 * time.Millisecond}}, "whole seconds"},
		{"retry not shorter than renew", Config{Name: "n1", Scope: "demo", Rules: Rules{TTL: 10 * time.Second, RenewDeadline: time.Second, RetryPeriod: time.Second}}, "shorter than renew-deadline"},
		{"negative", Config{Name: "n1", Scope: "demo", Rules: Rules{RejoinTimeout: -time.Second}}, "negative"},
		{"bad name", Config{Name: "a/b", Scope: "demo"}, "name"},
		{"no scope", Config{Name: "n1"}, "scope"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestLSN(t *testing.T) {
	for _, s := range []string{"0/0", "0/16B3748", "1/FF000028", "FFFFFFFF/FFFFFFFF"} {
		v, err := topology.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := topology.FormatLSN(v); got != s {
			t.Errorf("topology.FormatLSN(topology.ParseLSN(%q)) = %q", s, got)
		}
	}
	for _, bad := range []string{"", "0", "x/1", "1/", "100000000/0"} {
		if _, err := topology.ParseLSN(bad); err == nil {
			t.Errorf("topology.ParseLSN(%q) accepted", bad)
		}
	}
}
