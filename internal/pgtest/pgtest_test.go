package pgtest

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgrouter/pgrouter/internal/proc"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a connection as user and closes it when the test ends.
func connect(t *testing.T, ctx context.Context, c *Cluster, n *Node, user, password, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, c.ConnString(n, user, password, db))
	if err != nil {
		t.Fatalf("connect to %s as %s: %v", n.Name, user, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestCluster(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	began := time.Now()
	c := StartT(t, Options{Standbys: 2, WarmStandbys: 1})
	t.Logf("primary + 2 hot + 1 warm standbys started in %s", time.Since(began).Round(time.Millisecond))

	if len(c.Nodes) != 4 || c.Primary() != c.Nodes[0] {
		t.Fatalf("got %d nodes, primary %v; want 4 with Nodes[0] primary", len(c.Nodes), c.Primary())
	}
	for i, n := range c.Nodes {
		if want := i == 3; n.Warm != want {
			t.Errorf("%s: Warm = %v, want %v", n.Name, n.Warm, want)
		}
	}

	t.Run("hot standbys see a row after WaitReplayed", func(t *testing.T) {
		p := connect(t, ctx, c, c.Primary(), AppUser, AppPassword, AppDB)
		if _, err := p.Exec(ctx, "CREATE TABLE t (v text); INSERT INTO t VALUES ('hello')"); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplayed(ctx); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Nodes[1:3] {
			var v string
			var inRecovery bool
			err := connect(t, ctx, c, n, AppUser, AppPassword, AppDB).
				QueryRow(ctx, "SELECT v, pg_is_in_recovery() FROM t").Scan(&v, &inRecovery)
			if err != nil || v != "hello" || !inRecovery {
				t.Errorf("%s: got %q, in recovery %v, err %v; want hello from a standby", n.Name, v, inRecovery, err)
			}
		}
	})

	t.Run("warm standby refuses connections", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, c.ConnString(c.Nodes[3], SuperUser, SuperPassword, "postgres"))
		if err == nil {
			conn.Close(ctx)
			t.Fatal("connected to the warm standby")
		}
		if got := sqlState(err); got != "57P03" {
			t.Fatalf("got SQLSTATE %q (%v), want 57P03", got, err)
		}
	})

	t.Run("users log in", func(t *testing.T) {
		tests := []struct {
			name, user, password, db string
			wantState                string // "" means the login succeeds
		}{
			{"superuser scram", SuperUser, SuperPassword, "postgres", ""},
			{"replicator scram", ReplUser, ReplPassword, "postgres", ""},
			{"app scram", AppUser, AppPassword, AppDB, ""},
			{"scram2", Scram2User, Scram2Password, AppDB, ""},
			{"md5user md5", MD5User, MD5Password, AppDB, ""},
			{"trustuser without password", TrustUser, "", AppDB, ""},
			{"app wrong password", AppUser, "wrong", AppDB, "28P01"},
			{"md5user wrong password", MD5User, "wrong", AppDB, "28P01"},
			{"unknown user", "nobody", "x", AppDB, "28P01"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				conn, err := pgx.Connect(ctx, c.ConnString(c.Primary(), tc.user, tc.password, tc.db))
				if err != nil {
					if got := sqlState(err); got != tc.wantState || got == "" {
						t.Fatalf("got %v (SQLSTATE %q), want SQLSTATE %q", err, got, tc.wantState)
					}
					return
				}
				defer conn.Close(ctx)
				if tc.wantState != "" {
					t.Fatalf("logged in, want SQLSTATE %s", tc.wantState)
				}
				var who string
				if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != tc.user {
					t.Fatalf("current_user = %q, %v", who, err)
				}
			})
		}
	})

	t.Run("passwords are stored as intended", func(t *testing.T) {
		want := map[string]string{
			SuperUser: "SCRAM-SHA-256$", ReplUser: "SCRAM-SHA-256$", AppUser: "SCRAM-SHA-256$",
			Scram2User: "SCRAM-SHA-256$", MD5User: "md5", TrustUser: "",
		}
		rows, _ := connect(t, ctx, c, c.Primary(), SuperUser, SuperPassword, "postgres").
			Query(ctx, "SELECT rolname, coalesce(rolpassword, '') FROM pg_authid WHERE rolcanlogin")
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ Name, Hash string }])
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range got {
			prefix, ok := want[r.Name]
			if !ok {
				continue
			}
			delete(want, r.Name)
			if !strings.HasPrefix(r.Hash, prefix) || (prefix == "") != (r.Hash == "") {
				t.Errorf("%s: stored password %.16q..., want prefix %q", r.Name, r.Hash, prefix)
			}
		}
		if len(want) > 0 {
			t.Errorf("roles missing: %v", want)
		}
	})

	t.Run("promote a standby after the primary stops", func(t *testing.T) {
		old, next := c.Nodes[0], c.Nodes[1]
		if err := old.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Promote(ctx, next); err != nil {
			t.Fatal(err)
		}
		if c.Primary() != next {
			t.Fatalf("Primary() = %s, want %s", c.Primary().Name, next.Name)
		}
		conn := connect(t, ctx, c, next, AppUser, AppPassword, AppDB)
		if _, err := conn.Exec(ctx, "INSERT INTO t VALUES ('after promote')"); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 2 {
			t.Fatalf("count = %d, %v; want 2", n, err)
		}

		// A warm standby accepts no connection, so Promote uses pg_ctl.
		warm := c.Nodes[3]
		if err := c.Promote(ctx, warm); err != nil {
			t.Fatal(err)
		}
		var inRecovery bool
		err := connect(t, ctx, c, warm, SuperUser, SuperPassword, "postgres").
			QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
		if err != nil || inRecovery {
			t.Fatalf("promoted warm standby: in recovery %v, %v", inRecovery, err)
		}
	})
}

func TestKillRestartClose(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	began := time.Now()
	c, err := Start(ctx, Options{Standbys: 2, Params: map[string]string{"application_name": "pgtest it's quoted"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary + 2 hot standbys started in %s", time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() { c.Close() })
	p := c.Primary()

	conn := connect(t, ctx, c, p, SuperUser, SuperPassword, "postgres")
	if _, err := conn.Exec(ctx, "CREATE TABLE k (v int); INSERT INTO k VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	pid, err := p.PID()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if proc.Alive(pid) || p.Running() {
		t.Fatalf("postmaster %d alive after Kill", pid)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("connection opened before Kill still works")
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := connect(t, ctx, c, p, SuperUser, SuperPassword, "postgres").QueryRow(ctx, "SELECT v FROM k").Scan(&v); err != nil || v != 1 {
		t.Fatalf("after crash recovery: v = %d, %v", v, err)
	}
	if err := c.WaitReplayed(ctx); err != nil {
		t.Fatal(err)
	}

	var pids []int
	for _, n := range c.Nodes {
		pid, err := n.PID()
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for i, n := range c.Nodes {
		if proc.Alive(pids[i]) {
			t.Errorf("%s: postmaster %d alive after Close", n.Name, pids[i])
		}
		if conn, err := net.DialTimeout("tcp", n.Addr, time.Second); err == nil {
			conn.Close()
			t.Errorf("%s: %s still accepts connections after Close", n.Name, n.Addr)
		}
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists after Close: %v", c.Dir, err)
	}
}

func TestConnValue(t *testing.T) {
	tests := []struct{ in, want string }{
		{"app", "app"},
		{"", "''"},
		{"a b", "'a b'"},
		{`it's`, `'it\'s'`},
		{`back\slash`, `'back\\slash'`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			if got := connValue(tc.in); got != tc.want {
				t.Errorf("connValue(%q) = %s, want %s", tc.in, got, tc.want)
			}
			// pgx must read back what we wrote.
			cfg, err := pgconn.ParseConfig("host=127.0.0.1 port=1 sslmode=disable user=u password=" + connValue(tc.in))
			if err != nil || cfg.Password != tc.in {
				t.Errorf("pgx parsed password %q, %v; want %q", cfg.Password, err, tc.in)
			}
		})
	}
}

func TestMemberConfRejectsBadNames(t *testing.T) {
	if _, err := memberConf(map[string]string{"work_mem = 1\nfsync": "on"}); err == nil {
		t.Fatal("accepted a setting name holding a newline")
	}
	conf, err := memberConf(map[string]string{"work_mem": "8MB", "auto_explain.log_min_duration": "0"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(conf, "work_mem = '8MB'\n") || !strings.HasSuffix(conf, "include '"+nodeConfName+"'\n") {
		t.Fatalf("unexpected conf:\n%s", conf)
	}
}

func TestFindBinDirNamesTheInstallCommand(t *testing.T) {
	t.Setenv("PGR_PG_BINDIR", t.TempDir())
	_, err := findBinDir()
	if err == nil || !strings.Contains(err.Error(), "apt-get install -y postgresql-15") {
		t.Fatalf("got %v, want an error with the install command", err)
	}
}

// shortDir returns a fresh parent directory that the postgres OS user can
// traverse, with a path short enough for Unix sockets.
func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp(DefaultDir(), "pgtp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestStartFailureLeavesNothing(t *testing.T) {
	t.Parallel()
	parent := shortDir(t)
	_, err := Start(testContext(t), Options{Dir: parent, Params: map[string]string{"max_connections": "bogus"}})
	if err == nil {
		t.Fatal("started with max_connections = bogus")
	}
	if msg := err.Error(); !strings.Contains(msg, "postgres.log") || !strings.Contains(msg, "max_connections") {
		t.Errorf("error names neither the log file nor the cause: %v", err)
	}
	if testing.Verbose() {
		t.Log(err)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("left %v in %s", ents, parent)
	}
}

func TestStartRefusesUntraversableDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root runs the servers as another OS user")
	}
	t.Parallel()
	parent := shortDir(t)
	if err := os.Chmod(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := Start(testContext(t), Options{Dir: parent})
	if err == nil || !strings.Contains(err.Error(), "cannot enter "+parent) {
		t.Fatalf("got %v, want an error saying postgres cannot enter %s", err, parent)
	}
}
