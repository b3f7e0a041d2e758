package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestAgentFailover runs one synchronous three-node cluster through every
// fault in turn. Before each a writer inserts through the proxy's
// read-write port; after each the cluster must be healthy again (exactly
// one primary, the proxy writing to it, both other members streaming from
// it, the old primary rejoined as a standby) and every acknowledged row
// must be on the new primary.
func TestAgentFailover(t *testing.T) {
	c := startAgentCluster(t, agentOptions{synchronous: true})
	mustExecProxy(t, c, "CREATE TABLE acked (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
	next := int64(1)
	scenario := func(name string, fault func(t *testing.T, ld *agentProc)) {
		t.Run(name, func(t *testing.T) {
			ld := c.waitHealthy(90 * time.Second)
			w := startWriter(t, c.proxy.RW, next)
			eventually(t, 20*time.Second, "writes flowing", func() error {
				if n := w.count(); n < 20 {
					return fmt.Errorf("%d acknowledged", n)
				}
				return nil
			})
			began := time.Now()
			fault(t, ld)
			nl := c.waitHealthy(90 * time.Second)
			acked, errs, longest := w.settle(t, nl)
			next += 10_000_000
			t.Logf("%s: leader %s -> %s, healthy again after %v; %d writes acknowledged, %d client errors, longest gap between acknowledged writes %v",
				name, ld.Name, nl.Name, time.Since(began).Round(time.Millisecond), len(acked), errs, longest.Round(time.Millisecond))
		})
	}

	scenario("kill-primary-postmaster", func(t *testing.T, ld *agentProc) {
		pid, err := ld.postmasterPID()
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		c.waitNewLeader(t, ld, 30*time.Second)
	})

	scenario("kill-leader-agent", func(t *testing.T, ld *agentProc) {
		ld.kill() // its PostgreSQL keeps running as a primary
		nl := c.waitNewLeader(t, ld, 30*time.Second)
		// The orphaned old primary must get no writes through the proxy.
		assertRWLandsOn(t, c, nl)
		ld.start() // a supervisor restarts the agent: it demotes and rewinds
	})

	scenario("leader-partitioned-from-etcd", func(t *testing.T, ld *agentProc) {
		cut := time.Now()
		ld.etcd.Cut(t)
		fencedBeforePromoted(t, c, ld, cut)
		ld.etcd.Heal(t)
	})

	scenario("planned-switchover", func(t *testing.T, ld *agentProc) {
		st, err := ld.status()
		if err != nil || st.Sync == nil || st.Sync.Standby == "" {
			t.Fatalf("leader status %+v, %v: no synchronous standby", st, err)
		}
		var other *agentProc
		for _, a := range c.agents {
			if a != ld && a.Name != st.Sync.Standby {
				other = a
			}
		}
		// Only the synchronous standby may take over in synchronous mode.
		out, err := exec.Command(binPath, "switchover", "--force", "--api", other.API, "--to", other.Name).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "not the synchronous standby") {
			t.Fatalf("switchover to the asynchronous standby %s: %v\n%s", other.Name, err, out)
		}
		// Without --force the command asks first; no answer changes nothing.
		out, err = exec.Command(binPath, "switchover", "--api", other.API).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "aborted, nothing changed") || !strings.Contains(string(out), "Switch over scope") {
			t.Fatalf("switchover without --force and no answer: %v\n%s", err, out)
		}
		eventually(t, 10*time.Second, "the leader unchanged after a refused switchover", func() error {
			nl, err := c.leader()
			if err == nil && nl != ld {
				err = fmt.Errorf("leader is %s, want %s", nl.Name, ld.Name)
			}
			return err
		})
		out, err = exec.Command(binPath, "switchover", "--force", "--api", other.API).CombinedOutput()
		if err != nil {
			t.Fatalf("pgrouter switchover: %v\n%s", err, out)
		}
		t.Logf("%s", out)
		c.waitNewLeader(t, ld, 30*time.Second)
	})

	scenario("primary-data-directory-deleted", func(t *testing.T, ld *agentProc) {
		if err := os.RemoveAll(ld.DataDir); err != nil {
			t.Fatal(err)
		}
		c.waitNewLeader(t, ld, 30*time.Second)
	})
}

// TestAgentRefusesRoot: PostgreSQL will not run as root, so neither does
// the agent, and it says what to do instead.
func TestAgentRefusesRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not running as root")
	}
	out, err := exec.Command(binPath, "agent", "--name", "n1", "--scope", "s", "--etcd-endpoints", "127.0.0.1:1",
		"--pgdata", "/nonexistent").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "must not run as root") || !strings.Contains(string(out), "owns the data directory") {
		t.Fatalf("agent as root: %v\n%s", err, out)
	}
}

// TestAgentWarmStandby: warm standbys get no sessions, yet one is promoted
// when the primary dies.
func TestAgentWarmStandby(t *testing.T) {
	c := startAgentCluster(t, agentOptions{warm: true})
	ld := c.waitHealthy(60 * time.Second)
	for i := 0; i < 6; i++ {
		conn := mustConnectAs(t, c.proxy.RO)
		port, inRecovery := where(t, conn)
		conn.Close(context.Background())
		if port != ld.PGPort || inRecovery {
			t.Fatalf("read-only session landed on port %d (recovery %v), want the primary %d: warm standbys take no sessions", port, inRecovery, ld.PGPort)
		}
	}
	pid, err := ld.postmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	nl := c.waitNewLeader(t, ld, 30*time.Second)
	if st, err := nl.status(); err != nil || st.Warm {
		t.Errorf("new leader %s status %+v, %v", nl.Name, st, err)
	}
	c.waitHealthy(90 * time.Second)
	assertRWLandsOn(t, c, nl)
}

// waitNewLeader waits until an agent other than old answers /primary 200.
func (c *agentCluster) waitNewLeader(t *testing.T, old *agentProc, d time.Duration) *agentProc {
	t.Helper()
	var nl *agentProc
	eventually(t, d, "a new leader", func() error {
		ld, err := c.leader()
		if err != nil {
			return err
		}
		if ld == old {
			return fmt.Errorf("%s still leads", old.Name)
		}
		nl = ld
		return nil
	})
	return nl
}

// acceptsConnections reports whether the member's PostgreSQL takes a
// connection and a query.
func acceptsConnections(a *agentProc) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	conn, err := pgConn(ctx, a.PGAddr)
	if err != nil {
		return false
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "SELECT 1")
	return err == nil
}

// assertRWLandsOn waits until the proxy's read-write port lands on a.
func assertRWLandsOn(t *testing.T, c *agentCluster, a *agentProc) {
	t.Helper()
	eventually(t, 30*time.Second, "proxy rw on "+a.Name, func() error {
		conn, err := connect(t, c.proxy.RW, agentSuper, agentSuperPass, nil)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		var port int
		if err := conn.QueryRow(context.Background(), "SELECT inet_server_port()").Scan(&port); err != nil {
			return err
		}
		if port != a.PGPort {
			return fmt.Errorf("rw landed on port %d, want %s's %d", port, a.Name, a.PGPort)
		}
		return nil
	})
}

func mustConnectAs(t *testing.T, addr string) *pgx.Conn {
	t.Helper()
	conn, err := connect(t, addr, agentSuper, agentSuperPass, nil)
	if err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	return conn
}

func mustExecProxy(t *testing.T, c *agentCluster, sql string) {
	t.Helper()
	conn, err := connect(t, c.proxy.RW, agentSuper, agentSuperPass, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
}
