package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// A standby promoted by hand takes the read-write traffic: sessions on the
// old primary are told why and closed, new ones land on the new primary.
func TestHandPromotionMovesWrites(t *testing.T) {
	c := pgtest.StartT(t, pgtest.Options{Standbys: 2})
	p := startProxy(t, c)
	ctx := context.Background()

	old := mustConnect(t, c, p.RW, nil)
	if _, err := old.Exec(ctx, "CREATE TABLE t (v int)"); err != nil {
		t.Fatal(err)
	}
	ro := mustConnect(t, c, p.RO, nil) // on a standby that stays a standby
	roPort, _ := where(t, ro)
	target := c.Nodes[1]
	if roPort == target.Port {
		target = c.Nodes[2]
	}

	// Promote while the old primary still runs: the newer timeline wins.
	if err := c.Promote(ctx, target); err != nil {
		t.Fatal(err)
	}
	var err error
	eventually(t, 10*time.Second, "old-primary session closed", func() error {
		_, err = old.Exec(ctx, "SELECT 1")
		if err == nil {
			return fmt.Errorf("still open")
		}
		return nil
	})
	var pe *pgconn.PgError
	if !asPgError(err, &pe) || pe.Code != "57P01" || !strings.Contains(pe.Message, "role change") {
		t.Fatalf("old session ended with %v, want 57P01 naming the role change", err)
	}

	eventually(t, 10*time.Second, "writes reach the promoted standby", func() error {
		conn, err := connect(t, p.RW, c.SuperUser, c.SuperPassword, nil)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var port int
		if err := conn.QueryRow(ctx, "INSERT INTO t VALUES (1) RETURNING inet_server_port()").Scan(&port); err != nil {
			return err
		}
		if port != target.Port {
			return fmt.Errorf("write landed on %d, want %d", port, target.Port)
		}
		return nil
	})
	// The standby session that stayed a standby is untouched.
	if p2, rec := where(t, ro); p2 != roPort || !rec {
		t.Fatalf("ro session moved or broke: port %d recovery %v", p2, rec)
	}
}

// With no primary, read-write sessions wait for primary-wait, then get
// 57P03; a primary appearing within the wait serves them.
func TestNoPrimaryWaitsThenRefuses(t *testing.T) {
	c := pgtest.StartT(t, pgtest.Options{Standbys: 1})
	p := startProxy(t, c, "--primary-wait", "1500ms")
	ctx := context.Background()
	if err := c.Nodes[0].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "primary seen down", func() error {
		_, err := connect(t, p.RW, c.SuperUser, c.SuperPassword, nil)
		if sqlState(err) != "57P03" {
			return fmt.Errorf("connect: %v", err)
		}
		return nil
	})
	_, err := connect(t, p.RW, c.SuperUser, c.SuperPassword, nil)
	var pe *pgconn.PgError
	if !asPgError(err, &pe) || pe.Severity != "FATAL" || !strings.Contains(pe.Message, "no primary") {
		t.Fatalf("want FATAL 57P03 no primary, got %v", err)
	}
	// Reads still work on the standby.
	ro := mustConnect(t, c, p.RO, nil)
	if _, rec := where(t, ro); !rec {
		t.Fatal("ro not on the standby")
	}
	// A session that starts waiting is served once a primary appears.
	// readyz needs a primary, which is missing here: do not wait for it.
	p2 := startProxyNoWait(t, c, "--primary-wait", "20s")
	done := make(chan error, 1)
	go func() {
		conn, err := connect(t, p2.RW, c.SuperUser, c.SuperPassword, nil)
		if err == nil {
			_, rec := where(t, conn)
			if rec {
				err = fmt.Errorf("landed in recovery")
			}
			conn.Close(ctx)
		}
		done <- err
	}()
	time.Sleep(300 * time.Millisecond) // let it start waiting; the test passes either way
	if err := c.Promote(ctx, c.Nodes[1]); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiting session: %v", err)
	}
}

// SIGTERM stops accepting, lets sessions drain, then closes the rest with
// 57P01.
func TestShutdownDrainsThenCloses(t *testing.T) {
	c := sharedCluster(t)
	p := startProxy(t, c, "--drain-timeout", "1s")
	conn := mustConnect(t, c, p.RW, nil)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var err error
	eventually(t, 15*time.Second, "session closed after drain", func() error {
		_, err = conn.Exec(context.Background(), "SELECT 1")
		if err == nil {
			return fmt.Errorf("still served")
		}
		return nil
	})
	var pe *pgconn.PgError
	if !asPgError(err, &pe) || pe.Code != "57P01" {
		t.Fatalf("want 57P01, got %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("proxy did not exit after drain")
	}
}
