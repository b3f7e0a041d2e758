package pgtest

import (
	"context"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// waitStreaming polls the primary until every standby shows as streaming
// in pg_stat_replication, under its cluster_name.
func (c *Cluster) waitStreaming(ctx context.Context) error {
	p := c.Nodes[0]
	want := make(map[string]bool)
	for _, n := range c.Nodes[1:] {
		want[n.Name] = true
	}
	if len(want) == 0 {
		return nil
	}
	conn, err := c.connect(ctx, p)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		rows, _ := conn.Query(ctx, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return p.errorf("wait for standbys to stream: %w", err)
		}
		missing := missingNames(want, names)
		if len(missing) == 0 {
			return nil
		}
		if err := Sleep(ctx, 20*time.Millisecond); err != nil {
			var logs []string
			for _, n := range c.Nodes[1:] {
				logs = append(logs, n.LogFile)
			}
			return p.errorf("standbys %v not streaming: %w (standby logs %s)", missing, err, strings.Join(logs, ", "))
		}
	}
}

func missingNames(want map[string]bool, got []string) []string {
	have := make(map[string]bool, len(got))
	for _, g := range got {
		have[g] = true
	}
	var missing []string
	for w := range want {
		if !have[w] {
			missing = append(missing, w)
		}
	}
	sort.Strings(missing)
	return missing
}

// Promote makes standby n the primary and returns once it accepts writes:
// SELECT pg_promote(wait => true) on a hot standby, pg_ctl promote -w on a
// warm one, which accepts no connection. The other standbys keep following
// the old primary.
func (c *Cluster) Promote(ctx context.Context, n *Node) error {
	secs := timeoutSeconds(ctx, time.Minute)
	if n.Warm {
		if _, err := c.r.run(ctx, filepath.Dir(n.DataDir), nil, "pg_ctl", "promote", "-w", "-s",
			"-t", strconv.Itoa(secs), "-D", n.DataDir); err != nil {
			return n.errorf("promote: %w", err)
		}
		// pg_ctl returns once pg_control says the server is in production,
		// a moment before the postmaster lets anyone in (57P03 until then).
		deadline := time.Now().Add(time.Duration(secs) * time.Second)
		for {
			conn, err := c.connect(ctx, n)
			if err == nil {
				conn.Close(context.WithoutCancel(ctx))
				break
			}
			if time.Now().After(deadline) {
				return n.errorf("promote: not accepting connections after pg_ctl promote: %w", err)
			}
			if err := Sleep(ctx, 20*time.Millisecond); err != nil {
				return n.errorf("promote: %w", err)
			}
		}
	} else {
		conn, err := c.connect(ctx, n)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT pg_promote(true, $1)", secs).Scan(&ok); err != nil {
			return n.errorf("promote: %w", err)
		}
		if !ok {
			return n.errorf("promote: not promoted within %ds", secs)
		}
	}
	c.mu.Lock()
	c.primary = n
	c.mu.Unlock()
	return nil
}

// WaitReplayed waits until every running hot standby has replayed the WAL
// the primary had written when it was called. Without a deadline on ctx it
// gives up after a minute. A standby that follows a primary that is gone
// never catches up, so after Promote it times out.
func (c *Cluster) WaitReplayed(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	p := c.Primary()
	conn, err := c.connect(ctx, p)
	if err != nil {
		return err
	}
	var target string
	err = conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&target)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return p.errorf("current WAL position: %w", err)
	}
	for _, n := range c.Nodes {
		if n == p || n.Warm || !n.Running() {
			continue
		}
		if err := c.waitReplayedOn(ctx, n, target); err != nil {
			return err
		}
	}
	return nil
}

// waitReplayedOn polls one standby until it has replayed target.
func (c *Cluster) waitReplayedOn(ctx context.Context, n *Node, target string) error {
	conn, err := c.connect(ctx, n)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var at *string
		var done bool
		err := conn.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn()::text, coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", target).Scan(&at, &done)
		if err != nil {
			return n.errorf("replay position: %w", err)
		}
		if done {
			return nil
		}
		if err := Sleep(ctx, 10*time.Millisecond); err != nil {
			replayed := "nothing"
			if at != nil {
				replayed = *at
			}
			return n.errorf("replayed up to %s, not %s: %w", replayed, target, err)
		}
	}
}

// Sleep sleeps for d, or returns ctx's error if it ends first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
