package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Real clients cannot tell the read-write port from the server: COPY both
// ways, notices, errors, LISTEN/NOTIFY, the extended protocol, pipelining.
func TestRealClientsThroughReadWritePort(t *testing.T) {
	c := sharedCluster(t)
	p := startProxy(t, c)
	ctx := context.Background()
	host, port, _ := net.SplitHostPort(p.RW)
	env := append(os.Environ(), "PGPASSWORD="+c.SuperPassword, "PGHOST="+host, "PGPORT="+port, "PGUSER="+c.SuperUser, "PGDATABASE=postgres")

	t.Run("psql copy, notices and errors", func(t *testing.T) {
		script := `CREATE TABLE IF NOT EXISTS copy_t (a int, b text);
TRUNCATE copy_t;
\copy copy_t FROM stdin
1	one
2	two
\.
SELECT count(*) FROM copy_t;
DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$;
\copy (SELECT a, b FROM copy_t ORDER BY a) TO stdout
SELECT 1/0;
`
		cmd := exec.Command("psql", "-X", "-At", "-v", "ON_ERROR_STOP=0")
		cmd.Env = env
		cmd.Stdin = strings.NewReader(script)
		out, _ := cmd.CombinedOutput()
		for _, want := range []string{"\n2\n", "NOTICE:  hello from the server", "1\tone\n2\ttwo", "division by zero"} {
			if !strings.Contains(string(out), want) {
				t.Fatalf("psql output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("pgbench", func(t *testing.T) {
		for _, args := range [][]string{
			{"-i", "-s", "1", "-q"},
			{"-n", "-c", "4", "-j", "2", "-t", "200", "-M", "extended"},
			{"-n", "-c", "4", "-j", "2", "-t", "200", "-M", "prepared", "-S"},
			{"-n", "-c", "2", "-t", "20", "-C", "-S"},
		} {
			cmd := exec.Command("pgbench", args...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("pgbench %v: %v\n%s", args, err, out)
			}
			if args[0] != "-i" && !strings.Contains(string(out), "number of failed transactions: 0") {
				t.Fatalf("pgbench %v:\n%s", args, out)
			}
		}
	})

	t.Run("listen notify", func(t *testing.T) {
		l := mustConnect(t, c, p.RW, nil)
		n := mustConnect(t, c, p.RW, nil)
		if _, err := l.Exec(ctx, "LISTEN chan"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.Exec(ctx, "NOTIFY chan, 'payload'"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		note, err := l.WaitForNotification(wctx)
		if err != nil || note.Payload != "payload" {
			t.Fatalf("notification %+v, %v", note, err)
		}
	})

	t.Run("pipelined batch and large rows", func(t *testing.T) {
		conn := mustConnect(t, c, p.RW, nil)
		b := &pgx.Batch{}
		for i := range 100 {
			b.Queue("SELECT $1::int, repeat('x', $2::int)", i, i*1000)
		}
		br := conn.SendBatch(ctx, b)
		for i := range 100 {
			var n int
			var s string
			if err := br.QueryRow().Scan(&n, &s); err != nil || n != i || len(s) != i*1000 {
				t.Fatalf("row %d: %d %d %v", i, n, len(s), err)
			}
		}
		if err := br.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// SIGHUP reloads the member list without dropping sessions.
func TestReloadOnSIGHUP(t *testing.T) {
	c := sharedCluster(t)
	dir := t.TempDir()
	cfgPath := dir + "/pgrouter.yaml"
	write := func(backends []string) {
		y := "discovery:\n  backends:\n"
		for _, b := range backends {
			y += "    - " + b + "\n"
		}
		if err := os.WriteFile(cfgPath, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write([]string{c.Nodes[0].Addr, c.Nodes[1].Addr})
	p := startProxy(t, c, "--config", cfgPath)
	waitStandby(t, p, c.Nodes[1].Addr)
	ro := mustConnect(t, c, p.RO, nil)
	if port, _ := where(t, ro); port != c.Nodes[1].Port {
		t.Fatalf("ro landed on %d, want the only listed standby %d", port, c.Nodes[1].Port)
	}
	write([]string{c.Nodes[0].Addr, c.Nodes[1].Addr, c.Nodes[2].Addr})
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "third member after reload", func() error {
		doc := getTopology(t, p.Admin)
		for _, m := range doc.Members {
			if m.Name == c.Nodes[2].Addr && m.Role == "standby" {
				return nil
			}
		}
		return fmt.Errorf("topology: %+v", doc)
	})
	if port, _ := where(t, ro); port != c.Nodes[1].Port {
		t.Fatal("session moved across reload")
	}
	// A bad file is refused and the running configuration kept.
	if err := os.WriteFile(cfgPath, []byte("discovery:\n  backends: [nonsense]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 10*time.Second, "reload refused", func() error {
		if !strings.Contains(p.logs(), "reload refused") {
			return fmt.Errorf("no refusal logged")
		}
		return nil
	})
	if len(getTopology(t, p.Admin).Members) != 3 {
		t.Fatal("bad reload changed the members")
	}
}

// The warm standby is seen, marked as not accepting connections, and gets
// no sessions.
func TestWarmStandbyGetsNoSessions(t *testing.T) {
	c := sharedCluster(t)
	p := startProxy(t, c)
	warm := c.Nodes[3]
	eventually(t, 10*time.Second, "warm standby observed", func() error {
		for _, m := range getTopology(t, p.Admin).Members {
			if m.Name == warm.Addr {
				if m.Health.AcceptsConnections {
					return fmt.Errorf("warm standby accepts connections?")
				}
				return nil
			}
		}
		return fmt.Errorf("not listed")
	})
	for range 8 {
		conn := mustConnect(t, c, p.RO, nil)
		if port, _ := where(t, conn); port == warm.Port {
			t.Fatal("session routed to the warm standby")
		}
		conn.Close(context.Background())
	}
}

// waitStandby waits until the proxy has seen member as a usable standby,
// so a read-only session cannot fall back to the primary.
func waitStandby(t *testing.T, p *proxyProc, member string) {
	t.Helper()
	eventually(t, 10*time.Second, "standby "+member+" seen", func() error {
		for _, m := range getTopology(t, p.Admin).Members {
			if m.Name == member && m.Role == "standby" && m.Health.AcceptsConnections {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
}

type topologyDoc struct {
	Primary string `json:"primary"`
	Members []struct {
		Name   string `json:"name"`
		Role   string `json:"role"`
		Health struct {
			AcceptsConnections bool `json:"accepts_connections"`
		} `json:"health"`
	} `json:"members"`
}

func getTopology(t *testing.T, admin string) topologyDoc {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/api/v1/topology")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc topologyDoc
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	return doc
}
