package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// writeAuthFile writes the cluster's roles and secrets as a userlist.
func writeAuthFile(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := c.WriteAuthFile(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	return path
}

func startPooled(t *testing.T, c *pgtest.Cluster, mode string, extra ...string) *proxyProc {
	t.Helper()
	args := append([]string{"--pool-mode", mode, "--auth-file", writeAuthFile(t, c),
		"--auth-hba", "host all trustuser 127.0.0.1/32 trust",
		"--auth-hba", "host all md5user 127.0.0.1/32 md5",
		"--auth-hba", "host all all 127.0.0.1/32 scram-sha-256"}, extra...)
	return startProxy(t, c, args...)
}

func appConn(t *testing.T, c *pgtest.Cluster, addr string) *pgx.Conn {
	t.Helper()
	conn, err := connectDB(t, addr, c.AppUser, c.AppPassword, c.AppDB, nil)
	if err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// relays are the two ways a session is relayed: by an epoll loop thread
// (the default) and by goroutines (--relay-threads 0, as TLS sessions
// are). Tests that must hold for both run once per entry.
var relays = []struct {
	name string
	args []string
}{{"loop", nil}, {"goroutines", []string{"--relay-threads", "0"}}}

// receiveName reads one message from the server side of fe and names it:
// its Go type, or "Error" and the SQLSTATE of an ErrorResponse.
func receiveName(t *testing.T, fe *pgproto3.Frontend) string {
	t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := msg.(*pgproto3.ErrorResponse); ok {
		return "Error " + e.Code
	}
	return fmt.Sprintf("%T", msg)
}

// TestTransactionPoolingSharesServers runs on both relays: an epoll loop
// thread (the default) and goroutines (--relay-threads 0).
func TestTransactionPoolingSharesServers(t *testing.T) {
	onEachRelay(t, "transaction", "2", func(t *testing.T, _ *pgtest.Cluster, p *proxyProc, relay string) {
		testTransactionPooling(t, p, "pooled_"+relay)
		want := `pgrouter_relayed_sessions_total{listener="rw",relay="` + relay + `"}`
		if n := metricValue(t, p.Admin, want); n < 10 {
			t.Fatalf("%s = %v, want every session (at least 10)", want, n)
		}
	})
}

func testTransactionPooling(t *testing.T, p *proxyProc, table string) {
	c := sharedCluster(t)
	ctx := context.Background()
	setup := appConn(t, c, p.RW)
	if _, err := setup.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+table+" (client int, n int)"); err != nil {
		t.Fatal(err)
	}
	const clients, rounds = 10, 30
	var wg sync.WaitGroup
	errc := make(chan error, clients)
	pids := make([]map[uint32]bool, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := connectDB(t, p.RW, c.AppUser, c.AppPassword, c.AppDB, nil)
			if err != nil {
				errc <- err
				return
			}
			defer conn.Close(ctx)
			pids[i] = map[uint32]bool{}
			for n := range rounds {
				tx, err := conn.Begin(ctx)
				if err != nil {
					errc <- err
					return
				}
				// The default statement cache uses named prepared statements:
				// they must follow the client from server to server.
				if _, err := tx.Exec(ctx, "INSERT INTO "+table+" VALUES ($1, $2)", i, n); err != nil {
					errc <- fmt.Errorf("client %d round %d insert: %w", i, n, err)
					return
				}
				var got, pid int
				if err := tx.QueryRow(ctx, "SELECT count(*), pg_backend_pid() FROM "+table+" WHERE client = $1", i).Scan(&got, &pid); err != nil {
					errc <- fmt.Errorf("client %d round %d select: %w", i, n, err)
					return
				}
				if got != n+1 {
					errc <- fmt.Errorf("client %d saw %d rows, want %d: results mixed up", i, got, n+1)
					return
				}
				pids[i][uint32(pid)] = true
				if err := tx.Commit(ctx); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	all := map[uint32]bool{}
	for _, m := range pids {
		for pid := range m {
			all[pid] = true
		}
	}
	if len(all) > 2 {
		t.Fatalf("%d server backends used, pool size is 2", len(all))
	}
	moved := false
	for _, m := range pids {
		if len(m) > 1 {
			moved = true
		}
	}
	if !moved {
		t.Fatal("no client ever changed server: not transaction pooling")
	}
}

func TestTransactionPoolingCarriesSettingsAndPins(t *testing.T) {
	c := sharedCluster(t)
	p := startPooled(t, c, "transaction", "--pool-size", "3")
	ctx := context.Background()
	a := appConn(t, c, p.RW)
	b := appConn(t, c, p.RW)
	if _, err := a.Exec(ctx, "SET application_name = 'client-a'"); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		var name string
		if err := a.QueryRow(ctx, "SHOW application_name").Scan(&name); err != nil || name != "client-a" {
			t.Fatalf("application_name = %q, %v", name, err)
		}
		if err := b.QueryRow(ctx, "SHOW application_name").Scan(&name); err != nil || name == "client-a" {
			t.Fatalf("client b inherited a's setting: %q, %v", name, err)
		}
	}
	// A temporary table pins the client to its server: it stays usable.
	if _, err := a.Exec(ctx, "CREATE TEMP TABLE scratch (x int)"); err != nil {
		t.Fatal(err)
	}
	var pid0 int
	a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid0)
	for i := range 10 {
		b.Exec(ctx, "SELECT 1")
		if _, err := a.Exec(ctx, "INSERT INTO scratch VALUES ($1)", i); err != nil {
			t.Fatalf("temp table lost: %v", err)
		}
		var pid int
		a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
		if pid != pid0 {
			t.Fatal("pinned client changed server")
		}
	}
	// LISTEN pins too, and notifications arrive.
	l := appConn(t, c, p.RW)
	if _, err := l.Exec(ctx, "LISTEN pooled_chan"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Exec(ctx, "NOTIFY pooled_chan, 'hi'"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if n, err := l.WaitForNotification(wctx); err != nil || n.Payload != "hi" {
		t.Fatalf("notification: %v %v", n, err)
	}
}

// A session advisory lock taken with pg_try_advisory_lock (how Rails and
// many migration tools lock) pins its client as pg_advisory_lock does: on
// a pool of one server, another client then waits instead of being lent
// the server that holds the lock, and the holder can release it.
func TestTransactionPoolingPinsTryAdvisoryLock(t *testing.T) {
	c := sharedCluster(t)
	p := startPooled(t, c, "transaction", "--pool-size", "1", "--query-wait-timeout", "300ms")
	ctx := context.Background()
	holder := appConn(t, c, p.RW)
	other := appConn(t, c, p.RW)
	var took bool
	if err := holder.QueryRow(ctx, "SELECT pg_try_advisory_lock(4242)").Scan(&took); err != nil || !took {
		t.Fatalf("pg_try_advisory_lock: %v %v", took, err)
	}
	var got bool
	err := other.QueryRow(ctx, "SELECT pg_try_advisory_lock(4242)").Scan(&got)
	if sqlState(err) != "53300" {
		t.Fatalf("other client: got %v, %v; want to wait for the pinned server (53300)", got, err)
	}
	var released bool
	if err := holder.QueryRow(ctx, "SELECT pg_advisory_unlock(4242)").Scan(&released); err != nil || !released {
		t.Fatalf("the holder could not release its lock: %v %v", released, err)
	}
	holder.Close(ctx) // the pinned server is reset, then goes back to the pool
	eventually(t, 10*time.Second, "the lock free once its holder left", func() error {
		if err := other.QueryRow(ctx, "SELECT pg_try_advisory_lock(4242)").Scan(&got); err != nil {
			return err // 53300 while the server is being reset
		}
		if !got {
			t.Fatal("the lock outlived its holder's session")
		}
		return nil
	})
}

// Drivers reset a connection they take back into their own pool (Npgsql
// sends DISCARD ALL on each reuse by default). In transaction mode the
// proxy answers it between transactions instead of pinning the client:
// its prepared statements are gone and its settings are those it logged
// in with, as on a server of its own, and other clients still share the
// server.
func TestTransactionPoolingAnswersDiscardAll(t *testing.T) {
	c := sharedCluster(t)
	p := startPooled(t, c, "transaction", "--pool-size", "1", "--query-wait-timeout", "2s")
	ctx := context.Background()
	a := appConn(t, c, p.RW)
	b := appConn(t, c, p.RW)
	simple := pgx.QueryExecModeSimpleProtocol
	settings := func() (name, tz string) {
		t.Helper()
		if err := a.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('TimeZone')", simple).Scan(&name, &tz); err != nil {
			t.Fatal(err)
		}
		return name, tz
	}
	startName, startTZ := settings()
	tz := "Asia/Tokyo"
	if startTZ == tz {
		tz = "America/Lima"
	}
	for _, q := range []string{"SET application_name = 'before-discard'", "SET TimeZone = '" + tz + "'"} {
		if _, err := a.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Prepare(ctx, "mine", "SELECT 41 + 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "DISCARD ALL"); err != nil {
		t.Fatalf("DISCARD ALL: %v", err)
	}
	// Not pinned: the pool's one server is free for b.
	if _, err := b.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("another client after DISCARD ALL: %v (pinned?)", err)
	}
	if name, gotTZ := settings(); name != startName || gotTZ != startTZ {
		t.Fatalf("after DISCARD ALL: application_name %q, TimeZone %q; want %q, %q", name, gotTZ, startName, startTZ)
	}
	if got := a.PgConn().ParameterStatus("application_name"); got != startName {
		t.Fatalf("the client was told application_name = %q, want %q", got, startName)
	}
	if _, err := a.Exec(ctx, "mine"); sqlState(err) != "26000" {
		t.Fatalf("statement prepared before DISCARD ALL: %v, want 26000", err)
	}
	if _, err := a.Prepare(ctx, "mine", "SELECT 42 + 1"); err != nil {
		t.Fatalf("preparing the name again: %v", err)
	}
	var n int
	if err := a.QueryRow(ctx, "mine").Scan(&n); err != nil || n != 43 {
		t.Fatalf("the new statement: %d, %v", n, err)
	}

	// Npgsql's reset when it holds prepared statements: the proxy's answer
	// is the server's, statement by statement.
	const npgsqlReset = "SET SESSION AUTHORIZATION DEFAULT;RESET ALL;CLOSE ALL;UNLISTEN *;" +
		"SELECT pg_advisory_unlock_all();DISCARD SEQUENCES;DISCARD TEMP"
	direct, err := pgx.Connect(ctx, c.ConnString(c.Primary(), c.AppUser, c.AppPassword, c.AppDB))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	want, err := direct.PgConn().Exec(ctx, npgsqlReset).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.PgConn().Exec(ctx, npgsqlReset).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d results through the proxy, %d from the server", len(got), len(want))
	}
	for i := range want {
		if got[i].CommandTag.String() != want[i].CommandTag.String() ||
			fmt.Sprint(got[i].FieldDescriptions, got[i].Rows) != fmt.Sprint(want[i].FieldDescriptions, want[i].Rows) {
			t.Errorf("result %d: proxy %q %v %q, server %q %v %q", i, got[i].CommandTag, got[i].FieldDescriptions, got[i].Rows,
				want[i].CommandTag, want[i].FieldDescriptions, want[i].Rows)
		}
	}
	if _, err := b.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("another client after the reset list: %v (pinned?)", err)
	}
}

// A SET of a setting the server does not report (search_path,
// statement_timeout), sent alone between transactions, is carried to
// every server the client is lent instead of pinning it: the client
// changes servers, sees its settings on each, and no other client
// inherits them.
func TestTransactionPoolingCarriesUnreportedSettings(t *testing.T) {
	c := sharedCluster(t)
	p := startPooled(t, c, "transaction", "--pool-size", "2")
	ctx := context.Background()
	a := appConn(t, c, p.RW)
	b := appConn(t, c, p.RW)
	simple := pgx.QueryExecModeSimpleProtocol
	var defaultPath string
	if err := b.QueryRow(ctx, "SHOW search_path", simple).Scan(&defaultPath); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SET search_path = pg_catalog, \"Carried\"", "SET statement_timeout TO '1500ms'"} {
		if _, err := a.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	pids := map[uint32]bool{}
	for i := range 20 {
		// b holds a server in a transaction half of the time, so a is lent
		// one or the other.
		var tx pgx.Tx
		if i%2 == 0 {
			var err error
			if tx, err = b.Begin(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
		}
		var path, timeout string
		var pid uint32
		if err := a.QueryRow(ctx, "SELECT current_setting('search_path'), current_setting('statement_timeout'), pg_backend_pid()", simple).Scan(&path, &timeout, &pid); err != nil {
			t.Fatal(err)
		}
		if path != `pg_catalog, "Carried"` || timeout != "1500ms" {
			t.Fatalf("on server %d: search_path %q, statement_timeout %q", pid, path, timeout)
		}
		pids[pid] = true
		if tx != nil {
			tx.Commit(ctx)
		}
		var bPath, bTimeout string
		if err := b.QueryRow(ctx, "SELECT current_setting('search_path'), current_setting('statement_timeout')", simple).Scan(&bPath, &bTimeout); err != nil {
			t.Fatal(err)
		}
		if bPath != defaultPath || bTimeout != "0" {
			t.Fatalf("another client inherited a's settings: search_path %q, statement_timeout %q", bPath, bTimeout)
		}
	}
	if len(pids) < 2 {
		t.Fatalf("a ran on servers %v: pinned, or never lent another", pids)
	}
	// The timeout holds wherever the statement runs.
	if _, err := a.Exec(ctx, "SELECT pg_sleep(3)"); sqlState(err) != "57014" {
		t.Fatalf("pg_sleep(3) under a 1.5s statement_timeout: %v, want 57014", err)
	}
	// RESET and SET ... TO DEFAULT are carried too.
	for _, q := range []string{"RESET search_path", "SET statement_timeout TO DEFAULT"} {
		if _, err := a.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for range 4 {
		var path, timeout string
		if err := a.QueryRow(ctx, "SELECT current_setting('search_path'), current_setting('statement_timeout')", simple).Scan(&path, &timeout); err != nil {
			t.Fatal(err)
		}
		if path != defaultPath || timeout != "0" {
			t.Fatalf("after RESET: search_path %q, statement_timeout %q", path, timeout)
		}
	}
	resp, err := http.Get("http://" + p.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(body), `pgrouter_pool_pins_total{reason="untracked_set"}`) {
		t.Fatal("a session was pinned for a SET")
	}
}

func TestPoolQueryWaitTimeoutAndCancel(t *testing.T) {
	c := sharedCluster(t)
	p := startPooled(t, c, "transaction", "--pool-size", "1", "--query-wait-timeout", "500ms")
	ctx := context.Background()
	a := appConn(t, c, p.RW)
	b := appConn(t, c, p.RW)
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	_, err = b.Exec(ctx, "SELECT 1")
	if sqlState(err) != "53300" {
		t.Fatalf("waiting client: %v, want 53300", err)
	}
	tx.Commit(ctx)
	if _, err := b.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("client unusable after the wait timeout: %v", err)
	}
	// Cancel reaches the server the client holds at that moment.
	err = sleepAndCancel(t, b)
	if sqlState(err) != "57014" {
		t.Fatalf("cancel: %v", err)
	}
}

func TestPooledAuthentication(t *testing.T) {
	c := sharedCluster(t)
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			p := startPooled(t, c, mode)
			for _, tc := range []struct{ user, pw, state string }{
				{c.AppUser, c.AppPassword, ""},
				{c.Scram2User, c.Scram2Password, ""},
				{c.MD5User, c.MD5Password, ""},
				{c.AppUser, "wrong", "28P01"},
				{"nosuchuser", "x", "28P01"},
			} {
				conn, err := connect(t, p.RW, tc.user, tc.pw, nil)
				if tc.state != "" {
					if sqlState(err) != tc.state {
						t.Fatalf("%s: %v, want %s", tc.user, err, tc.state)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", tc.user, err)
				}
				var u string
				if err := conn.QueryRow(context.Background(), "SELECT current_user").Scan(&u); err != nil || u != tc.user {
					t.Fatalf("current_user %q %v", u, err)
				}
				conn.Close(context.Background())
			}
		})
	}
}

// In transaction mode a client between transactions never sees a
// failover: its next transaction runs on the new primary.
func TestTransactionPoolingHidesFailover(t *testing.T) {
	c := pgtest.StartT(t, pgtest.Options{Standbys: 1})
	p := startPooled(t, c, "transaction", "--pool-size", "4")
	ctx := context.Background()
	var conns []*pgx.Conn
	for range 5 {
		conns = append(conns, appConn(t, c, p.RW))
	}
	if _, err := conns[0].Exec(ctx, "CREATE TABLE failover_t (v int)"); err != nil {
		t.Fatal(err)
	}
	for i, conn := range conns {
		if _, err := conn.Exec(ctx, "INSERT INTO failover_t VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitReplayed(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Nodes[0].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Promote(ctx, c.Nodes[1]); err != nil {
		t.Fatal(err)
	}
	for i, conn := range conns {
		var port int
		if err := conn.QueryRow(ctx, "INSERT INTO failover_t VALUES ($1) RETURNING inet_server_port()", 100+i).Scan(&port); err != nil {
			t.Fatalf("client %d after failover: %v", i, err)
		}
		if port != c.Nodes[1].Port {
			t.Fatalf("client %d wrote on %d, want the new primary %d", i, port, c.Nodes[1].Port)
		}
	}
}

// PAUSE waits for running transactions, holds new ones, and RESUME lets
// them go; /api/v1/pools and the pool metrics show the pools.
func TestPauseResumeAndPoolsAPI(t *testing.T) {
	c := sharedCluster(t)
	p := startPooled(t, c, "transaction", "--pool-size", "2")
	ctx := context.Background()
	a := appConn(t, c, p.RW)
	b := appConn(t, c, p.RW)
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	paused := make(chan string, 1)
	go func() {
		resp, err := http.Post("http://"+p.Admin+"/api/v1/pause", "", nil)
		if err != nil {
			paused <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		paused <- string(body)
	}()
	select {
	case got := <-paused:
		t.Fatalf("pause returned while a transaction ran: %s", got)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := <-paused; !strings.Contains(got, `"done": true`) {
		t.Fatalf("pause: %s", got)
	}
	held := make(chan error, 1)
	go func() {
		_, err := b.Exec(ctx, "SELECT 1")
		held <- err
	}()
	select {
	case err := <-held:
		t.Fatalf("transaction ran while paused: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	resp, err := http.Post("http://"+p.Admin+"/api/v1/resume", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := <-held; err != nil {
		t.Fatalf("held transaction after resume: %v", err)
	}

	resp, err = http.Get("http://" + p.Admin + "/api/v1/pools")
	if err != nil {
		t.Fatal(err)
	}
	var pools []struct {
		Key     struct{ Member, Database, User string } `json:"key"`
		Open    int                                     `json:"servers_open"`
		Lent    int                                     `json:"lent_total"`
		Clients int                                     `json:"clients_active"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&pools); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Both sessions are the pool's clients, between transactions or not.
	if len(pools) != 1 || pools[0].Key.User != c.AppUser || pools[0].Key.Member != c.Nodes[0].Addr || pools[0].Lent < 3 || pools[0].Clients != 2 {
		t.Fatalf("pools: %+v", pools)
	}
	resp, err = http.Get("http://" + p.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(m), `pgrouter_pool_servers{database="app",member="`+c.Nodes[0].Addr+`",state="idle",user="app"}`) ||
		!strings.Contains(string(m), `pgrouter_pool_clients_active{database="app",member="`+c.Nodes[0].Addr+`",user="app"} 2`) {
		t.Fatal("pool metrics missing")
	}
	// A client that leaves is no longer counted.
	b.Close(ctx)
	eventually(t, 10*time.Second, "one client left in the pool", func() error {
		resp, err := http.Get("http://" + p.Admin + "/api/v1/pools")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&pools); err != nil {
			return err
		}
		if len(pools) != 1 || pools[0].Clients != 1 {
			return fmt.Errorf("pools: %+v", pools)
		}
		return nil
	})
}

// Session mode: a client keeps one server; the next client of that server
// finds it reset (DISCARD ALL). TLS on both sides works with pooling, and
// channel_binding=require fails with the driver's own clear error.
func TestSessionPoolingResetAndTLS(t *testing.T) {
	c := sharedCluster(t)
	cert, key := writeSelfSigned(t, t.TempDir())
	p := startPooled(t, c, "session", "--pool-size", "1", "--tls-cert", cert, "--tls-key", key, "--server-sslmode", "prefer")
	ctx := context.Background()
	host, port, _ := net.SplitHostPort(p.RW)
	dial := func() *pgx.Conn {
		cfg, err := pgx.ParseConfig("host=" + host + " port=" + port + " user=app dbname=app sslmode=require")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Password = c.AppPassword
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("pooled TLS connect: %v", err)
		}
		return conn
	}
	a := dial()
	var pidA int
	a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pidA)
	if _, err := a.Exec(ctx, "SET work_mem = '7MB'"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "CREATE TEMP TABLE only_a (x int)"); err != nil {
		t.Fatal(err)
	}
	var wm string
	a.QueryRow(ctx, "SHOW work_mem").Scan(&wm)
	if wm != "7MB" {
		t.Fatalf("work_mem %s", wm)
	}
	a.Close(ctx)
	b := dial()
	defer b.Close(ctx)
	var pidB int
	b.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pidB)
	if pidB != pidA {
		t.Fatalf("pool of one gave another server (%d, %d)", pidA, pidB)
	}
	b.QueryRow(ctx, "SHOW work_mem").Scan(&wm)
	if wm == "7MB" {
		t.Fatal("setting leaked to the next session")
	}
	var n int
	if err := b.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = 'only_a'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("temp table leaked: %d %v", n, err)
	}
	cmd := exec.Command("psql", "-X", "-At", "-c", "SELECT 1", "host="+host+" port="+port+" user=app dbname=app sslmode=require channel_binding=require")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+c.AppPassword)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "channel binding") {
		t.Fatalf("channel_binding=require: %v %s", err, out)
	}
}

// A prepare between transactions (Parse and Sync, as libpq's PQprepare
// sends) is answered by the proxy and prepared at first use: a good
// statement runs, a bad one fails when it is first executed, and the
// session goes on either way.
func TestDeferredPrepare(t *testing.T) {
	conn, ctx := txPooledConn(t, "1", 20*time.Second)
	pc := conn.PgConn()
	fe := pc.Frontend()
	fe.Send(&pgproto3.Parse{Name: "good", Query: "SELECT $1::int + 1"})
	fe.Send(&pgproto3.Parse{Name: "bad", Query: "SELEC 1"})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) == 0 || got[len(got)-1] != "*pgproto3.ReadyForQuery" {
		got = append(got, receiveName(t, fe))
	}
	if want := "[*pgproto3.ParseComplete *pgproto3.ParseComplete *pgproto3.ReadyForQuery]"; fmt.Sprint(got) != want {
		t.Fatalf("prepare answered %v, want %s", got, want)
	}
	res := pc.ExecPrepared(ctx, "good", [][]byte{[]byte("41")}, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "42" {
		t.Fatalf("good statement: rows %q, err %v", res.Rows, res.Err)
	}
	res = pc.ExecPrepared(ctx, "bad", nil, nil, nil).Read()
	if sqlState(res.Err) != "42601" {
		t.Fatalf("bad statement: err = %v, want 42601 syntax_error", res.Err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT 7").Scan(&n); err != nil || n != 7 {
		t.Fatalf("session after the failed statement: %d, %v", n, err)
	}
}

// TestUnnamedStatementAcrossTransactions: a client that parses the
// unnamed statement, syncs, and binds it in a later round trip (pgx's
// QueryExecModeDescribeExec) runs its own statement, although another
// client used the only server in between and left an unnamed statement
// of its own there. On both relays.
func TestUnnamedStatementAcrossTransactions(t *testing.T) {
	onEachRelay(t, "transaction", "1", func(t *testing.T, c *pgtest.Cluster, p *proxyProc, _ string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a, b := appConn(t, c, p.RW).PgConn(), appConn(t, c, p.RW).PgConn()
		if _, err := a.Prepare(ctx, "", "SELECT $1::int + 1", nil); err != nil {
			t.Fatal(err)
		}
		// b takes the server and leaves its own unnamed statement.
		if _, err := b.Prepare(ctx, "", "SELECT $1::text || 'b'", nil); err != nil {
			t.Fatal(err)
		}
		if res := b.ExecPrepared(ctx, "", [][]byte{[]byte("x")}, nil, nil).Read(); res.Err != nil || string(res.Rows[0][0]) != "xb" {
			t.Fatalf("b: %q, %v", res.Rows, res.Err)
		}
		for i := range 3 {
			res := a.ExecPrepared(ctx, "", [][]byte{[]byte("41")}, nil, nil).Read()
			if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "42" {
				t.Fatalf("a's unnamed statement, execution %d: rows %q, err %v; want 42", i, res.Rows, res.Err)
			}
			desc, err := a.Prepare(ctx, "", "SELECT $1::int + 1", nil)
			if err != nil || len(desc.Fields) != 1 {
				t.Fatalf("a prepares again: %v, %v", desc, err)
			}
		}
		// After a simple query the unnamed statement is gone, as on a
		// server: nothing is replayed.
		if err := a.Exec(ctx, "SELECT 1").Close(); err != nil {
			t.Fatal(err)
		}
		if res := a.ExecPrepared(ctx, "", [][]byte{[]byte("41")}, nil, nil).Read(); sqlState(res.Err) != "26000" {
			t.Fatalf("bind of the unnamed statement after a simple query: %v, want 26000", res.Err)
		}
	})
}

// TestDuplicateStatementName: a second Parse of a name in use fails with
// 42P05, as on a server, and leaves the first statement as it was, here
// and on the next server.
func TestDuplicateStatementName(t *testing.T) {
	c := sharedCluster(t)
	p := startPooled(t, c, "transaction", "--pool-size", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := appConn(t, c, p.RW).PgConn(), appConn(t, c, p.RW).PgConn()
	if _, err := a.Prepare(ctx, "s", "SELECT 1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Prepare(ctx, "s", "SELECT 2", nil); sqlState(err) != "42P05" {
		t.Fatalf("second Parse of s: %v, want 42P05", err)
	}
	if err := b.Exec(ctx, "SELECT 3").Close(); err != nil { // the server changes hands
		t.Fatal(err)
	}
	if res := a.ExecPrepared(ctx, "s", nil, nil, nil).Read(); res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "1" {
		t.Fatalf("s after the refused Parse: rows %q, err %v; want 1", res.Rows, res.Err)
	}
}

// TestParsesSkippedAfterAnError: after an error the server skips the
// client's messages up to its Sync, Parses the client sent after the
// error came among them (as pgx pipelines a prepare whose Describe hit
// statement_timeout). Those statements do not exist afterwards, and the
// session's later prepares and executions get their own answers.
func TestParsesSkippedAfterAnError(t *testing.T) {
	conn, ctx := txPooledConn(t, "2", 30*time.Second)
	pc := conn.PgConn()
	// An unreported setting pins the session: the server stays held
	// between the two halves of the pipeline below.
	if err := pc.Exec(ctx, "SET statement_timeout = '10s'").Close(); err != nil {
		t.Fatal(err)
	}
	fe := pc.Frontend()
	fe.Send(&pgproto3.Parse{Name: "s1", Query: "SELEC 1"})
	fe.Send(&pgproto3.Flush{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := receiveName(t, fe); got != "Error 42601" {
		t.Fatalf("bad Parse answered %s, want Error 42601", got)
	}
	// Sent after the error arrived: the server skips it.
	fe.Send(&pgproto3.Parse{Name: "s2", Query: "SELECT 2"})
	fe.Send(&pgproto3.Describe{ObjectType: 'S', Name: "s2"})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := receiveName(t, fe); got != "*pgproto3.ReadyForQuery" {
		t.Fatalf("skipped Parse answered %s, want only ReadyForQuery", got)
	}
	// s1 and s2 never existed: preparing them is no duplicate, and they run.
	for _, st := range []struct{ name, query, want string }{{"s1", "SELECT 1", "1"}, {"s2", "SELECT 2", "2"}, {"s3", "SELECT 3", "3"}} {
		if _, err := pc.Prepare(ctx, st.name, st.query, nil); err != nil {
			t.Fatalf("prepare %s: %v", st.name, err)
		}
		res := pc.ExecPrepared(ctx, st.name, nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != st.want {
			t.Fatalf("%s: rows %q, err %v", st.name, res.Rows, res.Err)
		}
	}
}

// TestStartupSettingsReachTheServer: the client's startup parameters hold
// on the server from its first statement, in session mode and for the
// first client of a transaction-mode pool (both lend a server before the
// client is greeted).
func TestStartupSettingsReachTheServer(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			c := sharedCluster(t)
			p := startPooled(t, c, mode, "--pool-size", "2")
			conn, err := connectDB(t, p.RW, c.AppUser, c.AppPassword, c.AppDB,
				map[string]string{"application_name": "startup_app", "search_path": "startup_schema", "default_transaction_read_only": "on"})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var app, path, ro string
			if err := conn.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('search_path'), current_setting('transaction_read_only')").
				Scan(&app, &path, &ro); err != nil {
				t.Fatal(err)
			}
			if app != "startup_app" || path != "startup_schema" || ro != "on" {
				t.Fatalf("first statement saw application_name %q, search_path %q, transaction_read_only %q; want startup_app, startup_schema, on", app, path, ro)
			}
			// A client that names no application has none, as directly,
			// whatever name pgrouter logged in to the server with.
			anon, err := connectDB(t, p.RW, c.AppUser, c.AppPassword, c.AppDB, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer anon.Close(context.Background())
			if err := anon.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&app); err != nil || app != "" {
				t.Fatalf("application_name %q (%v), want none", app, err)
			}
			if got := anon.PgConn().ParameterStatus("application_name"); got != "" {
				t.Fatalf("greeted with application_name %q, want none", got)
			}
		})
	}
}

// TestClientsHoldNoGoroutine: a session without TLS, once started, is
// served by a loop thread alone, in passthrough and in transaction mode.
// In transaction mode a trust client is accepted and greeted on the
// thread; a password client is authenticated by a goroutine, which exits
// when the thread takes the session over.
func TestClientsHoldNoGoroutine(t *testing.T) {
	c := sharedCluster(t)
	for _, tc := range []struct {
		mode         string
		trust, scram int
	}{{"passthrough", 10, 10}, {"transaction", 40, 10}} {
		t.Run(tc.mode, func(t *testing.T) {
			p := startPooled(t, c, tc.mode)
			ctx := context.Background()
			open := func(user, password string) *pgx.Conn {
				conn, err := connect(t, p.RW, user, password, nil)
				if err != nil {
					t.Fatalf("connect as %s: %v", user, err)
				}
				t.Cleanup(func() { conn.Close(ctx) })
				var n int
				if err := conn.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
					t.Fatal(err)
				}
				return conn
			}
			// The pools log in first (a pool's first login runs on a goroutine).
			open(c.TrustUser, "")
			open(c.SuperUser, c.SuperPassword)
			base := metricValue(t, p.Admin, "go_goroutines")
			var conns []*pgx.Conn
			for range tc.trust {
				conns = append(conns, open(c.TrustUser, ""))
			}
			for range tc.scram {
				conns = append(conns, open(c.SuperUser, c.SuperPassword))
			}
			n := len(conns)
			eventually(t, 10*time.Second, "no goroutine per client", func() error {
				if g := metricValue(t, p.Admin, "go_goroutines"); g > base+5 {
					return fmt.Errorf("%v goroutines with %d clients open, %v before", g, n, base)
				}
				return nil
			})
			for i, conn := range conns {
				var port int
				if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
					t.Fatalf("client %d: %v", i, err)
				}
			}
			if got := metricValue(t, p.Admin, `pgrouter_relayed_sessions_total{listener="rw",relay="loop"}`); got < float64(n+2) {
				t.Fatalf("%v sessions relayed on the loop, want all %d", got, n+2)
			}
			// A passthrough session starts on the thread that accepted it,
			// its SCRAM exchange passed through there too.
			if got := metricValue(t, p.Admin, `pgrouter_loop_startups_total{listener="rw"}`); tc.mode == "passthrough" && got < float64(n+2) {
				t.Fatalf("%v passthrough sessions started on a loop thread, want all %d", got, n+2)
			}
		})
	}
}

// Session mode relays like the passthrough, on a loop thread or on
// goroutines: the client's statements keep their names on its server; a
// client that leaves its server idle hands it on, reset, to the next
// client; one that leaves it in a transaction or in the middle of an
// extended-protocol batch has it closed; cancel reaches it; a server
// that goes away ends its session and the next client gets a new one.
func TestSessionPoolingRelay(t *testing.T) {
	ctx := context.Background()
	onEachRelay(t, "session", "1", func(t *testing.T, c *pgtest.Cluster, p *proxyProc, relay string) {
		backendPID := func(conn *pgx.Conn) int {
			t.Helper()
			var pid int
			if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			return pid
		}
		dial := func() *pgx.Conn {
			t.Helper()
			conn, err := connectDB(t, p.RW, c.AppUser, c.AppPassword, c.AppDB, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close(context.Background()) })
			return conn
		}

		a := dial()
		pid := backendPID(a)
		if got := a.PgConn().PID(); got != uint32(pid) {
			t.Fatalf("BackendKeyData gave process id %d, the server's is %d", got, pid)
		}
		if _, err := a.Exec(ctx, "SET work_mem = '7MB'"); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Prepare(ctx, "mine", "SELECT $1::int + 1"); err != nil {
			t.Fatal(err)
		}
		var names []string
		rows, _ := a.Query(ctx, "SELECT name FROM pg_prepared_statements ORDER BY name")
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(names, "mine") {
			t.Fatalf("prepared statements on the server %q, want the client's own name", names)
		}
		if err := sleepAndCancel(t, a); sqlState(err) != "57014" {
			t.Fatalf("cancel: %v, want 57014", err)
		}
		a.Close(ctx) // Terminate: the server stays open and idle

		b := dial()
		if got := backendPID(b); got != pid {
			t.Fatalf("the next client got server %d, want the idle one, %d", got, pid)
		}
		var wm string
		var n int
		if err := b.QueryRow(ctx, "SELECT current_setting('work_mem'), (SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int + 1')").Scan(&wm, &n); err != nil {
			t.Fatal(err)
		}
		if wm == "7MB" || n != 0 {
			t.Fatalf("the server was not reset: work_mem %s, the last client's statement there %d times", wm, n)
		}
		// Gone in a transaction: that server is closed.
		if _, err := b.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		b.PgConn().Conn().Close()

		d := dial()
		next := backendPID(d)
		if next == pid {
			t.Fatalf("a server left in a transaction was lent again (%d)", pid)
		}
		// Gone after a Parse without its Sync: closed too.
		if _, err := d.PgConn().Conn().Write([]byte{'P', 0, 0, 0, 14, 0, 'S', 'E', 'L', 'E', 'C', 'T', 0, 0, 0}); err != nil {
			t.Fatal(err)
		}
		d.PgConn().Conn().Close()

		e := dial()
		pid = backendPID(e)
		if pid == next {
			t.Fatalf("a server left in an extended-protocol batch was lent again (%d)", pid)
		}
		// The server goes away under its client.
		admin, err := connectDB(t, c.Nodes[0].Addr, c.AppUser, c.AppPassword, c.AppDB, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { admin.Close(context.Background()) })
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Exec(ctx, "SELECT 1"); sqlState(err) != "57P01" && !e.IsClosed() {
			t.Fatalf("after its server was terminated: %v", err)
		}
		e.Close(ctx)
		f := dial()
		if got := backendPID(f); got == pid {
			t.Fatalf("a terminated server was lent again (%d)", got)
		}
		if got := metricValue(t, p.Admin, `pgrouter_relayed_sessions_total{listener="rw",relay="`+relay+`"}`); got < 5 {
			t.Fatalf("%v sessions relayed by %s, want 5", got, relay)
		}
	})
}

// In session mode a trust client whose pool has an idle server is
// accepted, greeted and relayed by a loop thread alone. The server it is
// lent gets the client's startup settings: application_name by a SET that
// follows the greeting to the server ahead of the client's first query,
// anything else by a SET answered before the greeting. A setting the
// server refuses fails the startup with a FATAL and costs that server.
func TestSessionPoolingStartsOnTheLoop(t *testing.T) {
	c := sharedCluster(t)
	p := startPooled(t, c, "session", "--pool-size", "1")
	ctx := context.Background()
	type seen struct {
		pid       int
		app, path string
	}
	session := func(params map[string]string) (seen, error) {
		t.Helper()
		conn, err := connect(t, p.RW, c.TrustUser, "", params)
		if err != nil {
			return seen{}, err
		}
		defer conn.Close(ctx)
		var s seen
		if err := conn.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('application_name'), current_setting('search_path')").
			Scan(&s.pid, &s.app, &s.path); err != nil {
			t.Fatal(err)
		}
		if got := conn.PgConn().ParameterStatus("application_name"); got != s.app {
			t.Fatalf("greeted with application_name %q, the server has %q", got, s.app)
		}
		return s, nil
	}
	// The server is back in the pool, reset, once the client has left.
	idleSeries := `pgrouter_pool_servers{database="postgres",member="` + c.Nodes[0].Addr + `",state="idle",user="` + c.TrustUser + `"} 1`
	waitIdle := func() {
		t.Helper()
		eventually(t, 10*time.Second, "the server idle in its pool", func() error {
			resp, err := http.Get("http://" + p.Admin + "/metrics")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(body), idleSeries) {
				return errors.New("no idle server")
			}
			return nil
		})
	}
	startups := `pgrouter_loop_startups_total{listener="rw"}`
	first, err := session(map[string]string{"application_name": "first"}) // the pool's login: a goroutine's
	if err != nil {
		t.Fatal(err)
	}
	defaultPath := first.path
	waitIdle()
	base := metricValue(t, p.Admin, startups)
	for _, tc := range []struct {
		params    map[string]string
		app, path string
	}{
		{map[string]string{"application_name": "second"}, "second", defaultPath},
		{map[string]string{"search_path": "loop_schema"}, "", "loop_schema"},
		{map[string]string{"application_name": "fourth"}, "fourth", defaultPath},
		{nil, "", defaultPath},
	} {
		got, err := session(tc.params)
		if err != nil {
			t.Fatalf("%v: %v", tc.params, err)
		}
		if got != (seen{first.pid, tc.app, tc.path}) {
			t.Fatalf("%v: server %d with application_name %q, search_path %q; want server %d with %q, %q",
				tc.params, got.pid, got.app, got.path, first.pid, tc.app, tc.path)
		}
		waitIdle()
	}
	if got := metricValue(t, p.Admin, startups); got != base+4 {
		t.Fatalf("%v sessions started on the loop, want %v", got, base+4)
	}
	if _, err := session(map[string]string{"options": "-c work_mem=nonsense"}); sqlState(err) != "08006" ||
		!strings.Contains(err.Error(), "could not apply the session's settings") {
		t.Fatalf("a setting the server refuses: %v, want FATAL 08006", err)
	}
	next, err := session(nil)
	if err != nil {
		t.Fatal(err)
	}
	if next.pid == first.pid {
		t.Fatalf("the server that refused a setting was lent again (%d)", next.pid)
	}
}

// Transaction-mode clients that share one server but name themselves
// differently each see their own application_name in every transaction
// (the proxy SETs it ahead of the transaction, its answer taken out of the
// stream), and a client with a setting that could fail still gets it,
// applied before its transaction.
func TestTransactionPoolingKeepsEachClientsSettings(t *testing.T) {
	onEachRelay(t, "transaction", "1", func(t *testing.T, c *pgtest.Cluster, p *proxyProc, _ string) {
		// A server answer left in the stream would hang the clients.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		type client struct {
			conn      *pgx.Conn
			app, path string
		}
		var clients []client
		for _, params := range []map[string]string{
			{"application_name": "alpha"},
			{"application_name": "beta"},
			{"application_name": "gamma", "search_path": "gamma_schema"},
			nil,
		} {
			conn, err := connect(t, p.RW, c.TrustUser, "", params)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close(context.Background()) })
			var path string
			if err := conn.QueryRow(ctx, "SELECT current_setting('search_path')").Scan(&path); err != nil {
				t.Fatal(err)
			}
			clients = append(clients, client{conn, params["application_name"], path})
		}
		if clients[2].path != "gamma_schema" {
			t.Fatalf("search_path %q, want gamma_schema", clients[2].path)
		}
		for round := range 20 {
			for _, cl := range clients {
				var app, path string
				var one int
				// Both protocols: a Query, and pgx's extended protocol.
				if _, err := cl.conn.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol); err != nil {
					t.Fatal(err)
				}
				if err := cl.conn.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('search_path'), $1::int", 1).
					Scan(&app, &path, &one); err != nil {
					t.Fatalf("round %d, %q: %v", round, cl.app, err)
				}
				if app != cl.app || path != cl.path || one != 1 {
					t.Fatalf("round %d: client %q saw application_name %q, search_path %q", round, cl.app, app, path)
				}
			}
		}
	})
}

// In transaction mode a server that ends its connection with a FATAL
// (pg_terminate_backend) costs its client the transaction, not the
// session: the client gets the server's error as an ERROR (a FATAL would
// tell its driver the session is over), once, and goes on. A client that
// leaves while its server still works on its query is told nothing more.
func TestTransactionPoolingServerFatalAndEarlyTerminate(t *testing.T) {
	ctx := context.Background()
	onEachRelay(t, "transaction", "2", func(t *testing.T, c *pgtest.Cluster, p *proxyProc, _ string) {
		a := appConn(t, c, p.RW)
		// The simple protocol, to see every message of the answer.
		anc := a.PgConn().Conn()
		if _, err := anc.Write(appendTestMessage(nil, 'Q', []byte("SELECT pg_terminate_backend(pg_backend_pid())\x00"))); err != nil {
			t.Fatal(err)
		}
		_ = anc.SetReadDeadline(time.Now().Add(10 * time.Second))
		afe := pgproto3.NewFrontend(anc, anc)
		var errs []string
		for {
			msg, err := afe.Receive()
			if err != nil {
				t.Fatalf("after %v: %v", errs, err)
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				errs = append(errs, e.Severity+" "+e.Code+" "+e.Message)
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		_ = anc.SetReadDeadline(time.Time{})
		if len(errs) != 1 || !strings.HasPrefix(errs[0], "ERROR 57P01 terminating connection") {
			t.Fatalf("terminated server: errors %q, want the server's 57P01 once, as an ERROR", errs)
		}
		var one int
		if err := a.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("the session did not go on: %v", err)
		}

		b := appConn(t, c, p.RW)
		nc := b.PgConn().Conn()
		msgs := appendTestMessage(nil, 'Q', []byte("SELECT pg_sleep(0.3)\x00"))
		msgs = appendTestMessage(msgs, 'X', nil)
		if _, err := nc.Write(msgs); err != nil {
			t.Fatal(err)
		}
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		fe := pgproto3.NewFrontend(nc, nc)
		for {
			msg, err := fe.Receive()
			if err != nil {
				break // closed, as PostgreSQL closes after a Terminate
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				t.Fatalf("a client that sent Terminate got %s %s: %s", e.Severity, e.Code, e.Message)
			}
		}
	})
}

// txPooledConn connects a client through a transaction-pooling proxy with
// a pool of size servers, and gives a context that ends after timeout.
func txPooledConn(t *testing.T, size string, timeout time.Duration) (*pgx.Conn, context.Context) {
	t.Helper()
	c := sharedCluster(t)
	p := startPooled(t, c, "transaction", "--pool-size", size)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return appConn(t, c, p.RW), ctx
}

// onEachRelay runs test once per relay (relays) against a proxy pooling
// in mode with a pool of size servers per member.
func onEachRelay(t *testing.T, mode, size string, test func(t *testing.T, c *pgtest.Cluster, p *proxyProc, relay string)) {
	c := sharedCluster(t)
	for _, relay := range relays {
		t.Run(relay.name, func(t *testing.T) {
			test(t, c, startPooled(t, c, mode, append([]string{"--pool-size", size}, relay.args...)...), relay.name)
		})
	}
}

func appendTestMessage(dst []byte, typ byte, body []byte) []byte {
	dst = append(dst, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], uint32(4+len(body)))
	return append(dst, body...)
}
