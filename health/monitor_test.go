package health

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/topology"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func usable(m topology.MemberState) bool { return m.Health.Up && m.Health.AcceptsConnections }

// TestMonitorCluster runs the monitor with default timings against a real
// primary, two hot standbys and a warm one, then follows a hand promotion.
func TestMonitorCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	c := pgtest.StartT(t, pgtest.Options{Standbys: 2, WarmStandbys: 1})
	primary, hot1, hot2, warm := c.Nodes[0], c.Nodes[1], c.Nodes[2], c.Nodes[3]

	feed := &topology.Feed{}
	reg := prometheus.NewRegistry()
	mon := NewMonitor(Config{User: c.SuperUser, Password: c.SuperPassword}, feed, zaptest.NewLogger(t), NewMetrics(reg))
	var members []topology.Member
	for _, n := range c.Nodes {
		members = append(members, topology.Member{Name: n.Name, Addr: n.Addr})
	}
	mon.SetMembers(members)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mon.Run(ctx) }()
	// Registered after StartT, so it runs before the cluster closes.
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})

	s := waitSnapshot(t, feed, "initial roles", func(s *topology.Snapshot) bool {
		p, _ := s.Member(primary.Name)
		h1, _ := s.Member(hot1.Name)
		h2, _ := s.Member(hot2.Name)
		w, _ := s.Member(warm.Name)
		return usable(p) && p.Role == P &&
			usable(h1) && h1.Role == S && usable(h2) && h2.Role == S &&
			w.Health.Up && !w.Health.AcceptsConnections && w.Health.Role == S
	})
	p, _ := s.Member(primary.Name)
	if p.Health.Timeline != 1 || p.Health.WALPosition == 0 {
		t.Errorf("primary timeline %d WAL %d, want timeline 1 and a position", p.Health.Timeline, p.Health.WALPosition)
	}
	for _, n := range []*pgtest.Node{hot1, hot2} {
		h, _ := s.Member(n.Name)
		if h.Health.Timeline != 1 || h.Health.WALPosition == 0 {
			t.Errorf("%s: timeline %d WAL %d, want timeline 1 and a position", n.Name, h.Health.Timeline, h.Health.WALPosition)
		}
	}
	if w, _ := s.Member(warm.Name); !strings.Contains(w.Health.Err, "Hot standby mode is disabled") {
		t.Errorf("warm standby error = %q", w.Health.Err)
	}
	if v := metricValue(t, reg, "pgrouter_member_role", primary.Name, "primary"); v != 1 {
		t.Errorf("pgrouter_member_role{%s,primary} = %v", primary.Name, v)
	}

	// Stop the primary, promote hot1 by hand: the monitor must show hot1
	// as the only primary within 2 s of the promotion.
	opCtx, opCancel := context.WithTimeout(context.Background(), time.Minute)
	defer opCancel()
	if err := primary.Stop(opCtx); err != nil {
		t.Fatal(err)
	}
	if err := c.Promote(opCtx, hot1); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	s = waitSnapshot(t, feed, hot1.Name+" primary", func(s *topology.Snapshot) bool {
		n, _ := s.Member(hot1.Name)
		old, _ := s.Member(primary.Name)
		return usable(n) && n.Role == P && old.Role != P
	})
	if took := time.Since(promoted); took > 2*time.Second {
		t.Errorf("the new primary showed after %v, want within 2s", took)
	}
	if n, _ := s.Member(hot1.Name); n.Health.Timeline < 2 {
		t.Errorf("promoted timeline = %d, want > 1", n.Health.Timeline)
	}
	waitSnapshot(t, feed, primary.Name+" down", func(s *topology.Snapshot) bool {
		old, _ := s.Member(primary.Name)
		return !old.Health.Up && old.Role == topology.RoleUnknown
	})
	if v := metricValue(t, reg, "pgrouter_role_changes_total", "standby", hot1.Name, "primary"); v != 1 {
		t.Errorf("pgrouter_role_changes_total{standby,%s,primary} = %v", hot1.Name, v)
	}
}
