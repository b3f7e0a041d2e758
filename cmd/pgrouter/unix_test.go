package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// unixConn connects over the Unix socket that serves the listener at
// tcpAddr: dir/.s.PGSQL.<its port>, as libpq and pgx find it from host=dir.
func unixConn(t *testing.T, dir, tcpAddr, user, password, db string) (*pgx.Conn, error) {
	t.Helper()
	_, port, _ := net.SplitHostPort(tcpAddr)
	conn, err := connectHost(t, dir, port, user, password, db, nil)
	if err == nil {
		t.Cleanup(func() { conn.Close(context.Background()) })
	}
	return conn, err
}

// TestUnixSocketListeners serves every port on a Unix socket too
// (--unix-socket-dir): each lands where its TCP twin does, cancel works
// over it, psql finds it from -h DIR -p PORT, and in pooled mode the
// auth rules of type local are the ones that apply there.
func TestUnixSocketListeners(t *testing.T) {
	c := sharedCluster(t)
	dir := t.TempDir()
	p := startProxy(t, c, "--unix-socket-dir", dir)
	waitStandby(t, p, c.Nodes[1].Addr)
	for _, l := range []struct {
		addr      string
		onStandby bool
	}{{p.RW, false}, {p.Any, false}, {p.RO, true}} {
		_, port, _ := net.SplitHostPort(l.addr)
		if fi, err := os.Stat(filepath.Join(dir, ".s.PGSQL."+port)); err != nil || fi.Mode().Perm() != 0o777 {
			t.Fatalf("socket for %s: %v, %v; want mode 0777", l.addr, fi, err)
		}
		conn, err := unixConn(t, dir, l.addr, c.SuperUser, c.SuperPassword, "postgres")
		if err != nil {
			t.Fatalf("connect over the socket of %s: %v", l.addr, err)
		}
		if _, rec := where(t, conn); rec != l.onStandby {
			t.Fatalf("socket of %s: in recovery %v, want %v", l.addr, rec, l.onStandby)
		}
	}

	rw, err := unixConn(t, dir, p.RW, c.SuperUser, c.SuperPassword, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	if err := sleepAndCancel(t, rw); sqlState(err) != "57014" {
		t.Fatalf("cancel over the Unix socket: %v, want 57014", err)
	}

	_, port, _ := net.SplitHostPort(p.RW)
	cmd := exec.Command("psql", "-X", "-At", "-h", dir, "-p", port, "-U", c.SuperUser, "-d", "postgres", "-c", "SELECT NOT pg_is_in_recovery()")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+c.SuperPassword)
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "t" {
		t.Fatalf("psql -h %s -p %s: %q, %v", dir, port, out, err)
	}

	p.stop()
	if left, _ := filepath.Glob(filepath.Join(dir, ".s.PGSQL.*")); len(left) > 0 {
		t.Fatalf("sockets left after the proxy stopped: %v", left)
	}
}

// TestUnixSocketPooledUsesLocalRules: the proxy authenticates pooled
// clients on its Unix sockets by the rules of type local, and on TCP by
// host rules.
func TestUnixSocketPooledUsesLocalRules(t *testing.T) {
	c := sharedCluster(t)
	dir := t.TempDir()
	p := startProxy(t, c, "--unix-socket-dir", dir, "--pool-mode", "transaction", "--auth-file", writeAuthFile(t, c),
		"--auth-hba", "local all all scram-sha-256", "--auth-hba", "host all all 127.0.0.1/32 reject")
	conn, err := unixConn(t, dir, p.RW, pgtest.AppUser, pgtest.AppPassword, pgtest.AppDB)
	if err != nil {
		t.Fatalf("pooled client over the Unix socket: %v", err)
	}
	if _, rec := where(t, conn); rec {
		t.Fatal("pooled rw socket landed on a standby")
	}
	if _, err := unixConn(t, dir, p.RW, pgtest.AppUser, "wrong", pgtest.AppDB); sqlState(err) != "28P01" {
		t.Fatalf("wrong password over the Unix socket: %v, want 28P01", err)
	}
	_, err = connectDB(t, p.RW, pgtest.AppUser, pgtest.AppPassword, pgtest.AppDB, nil)
	var pe *pgconn.PgError
	if !asPgError(err, &pe) || pe.Code != "28000" {
		t.Fatalf("pooled client over TCP with only a reject host rule: %v, want 28000", err)
	}
}

// TestUnixSocketSharesClientCap: --max-client-conns caps a port whichever
// way its clients come, TCP or its Unix socket.
func TestUnixSocketSharesClientCap(t *testing.T) {
	c := sharedCluster(t)
	dir := t.TempDir()
	p := startProxy(t, c, "--unix-socket-dir", dir, "--max-client-conns", "1")
	conn, err := unixConn(t, dir, p.RW, c.SuperUser, c.SuperPassword, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, p.RW, c.SuperUser, c.SuperPassword, nil); sqlState(err) != "53300" {
		t.Fatalf("second client over TCP while one is on the socket: %v, want 53300", err)
	}
	conn.Close(context.Background())
	eventually(t, 10*time.Second, "a TCP client admitted once the socket's left", func() error {
		tcp, err := connect(t, p.RW, c.SuperUser, c.SuperPassword, nil)
		if err == nil {
			tcp.Close(context.Background())
		}
		return err
	})
}

// TestServersOverUnixSockets: members given as libpq gives them,
// "socket directory:port", are reached over their Unix sockets by the
// health checks, the passthrough and the pools alike, and cancel requests
// follow them there. inet_server_port() is NULL on a server's end of a
// Unix socket, which tells the two transports apart.
func TestServersOverUnixSockets(t *testing.T) {
	c := sharedCluster(t)
	var members []string
	for _, n := range c.Nodes {
		members = append(members, net.JoinHostPort(n.SocketDir, strconv.Itoa(n.Port)))
	}
	for _, mode := range []string{"none", "transaction"} {
		t.Run("pool-mode="+mode, func(t *testing.T) {
			args := []string{"--backends", strings.Join(members, ",")}
			user, password, db := c.SuperUser, c.SuperPassword, "postgres"
			if mode != "none" {
				args = append(args, "--pool-mode", mode, "--auth-file", writeAuthFile(t, c))
				user, password, db = pgtest.AppUser, pgtest.AppPassword, pgtest.AppDB
			}
			p := startProxy(t, c, args...)
			waitStandby(t, p, members[1])
			for _, l := range []struct {
				addr      string
				onStandby bool
			}{{p.RW, false}, {p.RO, true}} {
				conn, err := connectDB(t, l.addr, user, password, db, nil)
				if err != nil {
					t.Fatalf("connect to %s: %v", l.addr, err)
				}
				defer conn.Close(context.Background())
				if port, rec := where(t, conn); port != 0 || rec != l.onStandby {
					t.Fatalf("through %s: server port %d (0: its Unix socket), in recovery %v; want 0, %v", l.addr, port, rec, l.onStandby)
				}
				if err := sleepAndCancel(t, conn); sqlState(err) != "57014" {
					t.Fatalf("cancel through %s: %v, want 57014", l.addr, err)
				}
			}
		})
	}
}
