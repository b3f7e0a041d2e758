package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/topology"
)

// ranOn runs a statement through conn that reports where it ran, and
// returns whether that server was in recovery.
func ranOn(t *testing.T, conn *pgx.Conn, sql string, args ...any) bool {
	t.Helper()
	var rec bool
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&rec); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return rec
}

func TestStatementSplit(t *testing.T) {
	c := sharedCluster(t)
	ctx := context.Background()
	setup, err := pgx.Connect(ctx, c.ConnString(c.Primary(), c.AppUser, c.AppPassword, c.AppDB))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE IF NOT EXISTS split_t (id serial PRIMARY KEY, v int)",
		"CREATE SEQUENCE IF NOT EXISTS split_seq",
		"INSERT INTO split_t (v) VALUES (0)",
		`CREATE OR REPLACE FUNCTION split_stable(int) RETURNS int STABLE LANGUAGE sql AS 'SELECT $1 + 1'`,
		`CREATE OR REPLACE FUNCTION split_writes(int) RETURNS bool VOLATILE LANGUAGE sql AS
		  'INSERT INTO split_t (v) VALUES ($1) RETURNING pg_is_in_recovery()'`,
		`CREATE OR REPLACE FUNCTION split_sneaky(int) RETURNS bool VOLATILE LANGUAGE sql AS
		  'INSERT INTO split_t (v) VALUES ($1) RETURNING pg_is_in_recovery()'`,
	} {
		if _, err := setup.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	setup.Close(ctx)
	if err := c.WaitReplayed(ctx); err != nil {
		t.Fatal(err)
	}
	// split_sneaky is declared read-only to the proxy although it writes:
	// the standby refuses it, and the proxy must run it again on the primary.
	// Reads after the session's own writes wait up to 2s for a standby to
	// replay them, so they still run on standbys.
	p := startPooled(t, c, "transaction", "--split", "statement", "--read-only-functions", "split_sneaky", "--ryw-max-wait", "2s")
	waitStandby(t, p, c.Nodes[1].Addr)
	waitStandby(t, p, c.Nodes[2].Addr)
	conn := appConn(t, c, p.Any)
	// User functions' volatility comes from pg_proc, loaded in the
	// background when the first session of a database arrives.
	eventually(t, 10*time.Second, "split_stable known as stable", func() error {
		if !ranOn(t, conn, "SELECT pg_is_in_recovery() WHERE split_stable(1) = 2") {
			return fmt.Errorf("still routed to the primary")
		}
		return nil
	})

	for _, tc := range []struct {
		sql     string
		standby bool
	}{
		{"SELECT pg_is_in_recovery()", true},
		{"SELECT pg_is_in_recovery() FROM split_t LIMIT 1 FOR UPDATE", false},
		{"SELECT pg_is_in_recovery() WHERE nextval('split_seq') > 0", false},
		{"SELECT pg_is_in_recovery() WHERE split_stable(1) = 2", true},
		{"SELECT split_writes(1)", false},
		{"WITH w AS (INSERT INTO split_t (v) VALUES (2) RETURNING 1) SELECT pg_is_in_recovery() FROM w", false},
		{"/* pgrouter:primary */ SELECT pg_is_in_recovery()", false},
		{"SELECT split_sneaky(3)", false},
	} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
			var rec bool
			var err error
			if mode == pgx.QueryExecModeSimpleProtocol {
				err = conn.QueryRow(ctx, tc.sql, pgx.QueryExecModeSimpleProtocol).Scan(&rec)
			} else {
				err = conn.QueryRow(ctx, tc.sql).Scan(&rec)
			}
			if err != nil {
				t.Fatalf("%s (%v): %v", tc.sql, mode, err)
			}
			if rec != tc.standby {
				t.Errorf("%s (%v): ran on standby=%v, want %v", tc.sql, mode, rec, tc.standby)
			}
		}
	}

	// A session's reads, interleaved with writes, stay on one standby: a
	// later read never sees older data than an earlier one.
	ports := map[int]int{}
	for i := range 6 {
		if _, err := conn.Exec(ctx, "INSERT INTO split_t (v) VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
		var port int
		if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			t.Fatal(err)
		}
		ports[port]++
	}
	if len(ports) != 1 {
		t.Errorf("reads between writes ran on ports %v, want one standby", ports)
	}
	// Sessions take turns over the standbys (one read each, as a script's
	// psql): routing a session and its first read take one turn.
	ports = map[int]int{}
	for range 6 {
		c2 := appConn(t, c, p.Any)
		var port int
		if err := c2.QueryRow(ctx, "SELECT inet_server_port()", pgx.QueryExecModeSimpleProtocol).Scan(&port); err != nil {
			t.Fatal(err)
		}
		c2.Close(ctx)
		ports[port]++
	}
	if len(ports) != 2 {
		t.Errorf("first reads of new sessions ran on ports %v, want both standbys", ports)
	}

	// A read-write transaction runs wholly on the primary; a read-only one
	// on a standby.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rec bool
	tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
	if rec {
		t.Fatal("read in a read-write transaction ran on a standby")
	}
	tx.Commit(ctx)
	tx, err = conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
	if !rec {
		t.Fatal("read-only transaction ran on the primary")
	}
	tx.Commit(ctx)

	// SET pgrouter.route pins the session's statements.
	if _, err := conn.Exec(ctx, "SET pgrouter.route = primary"); err != nil {
		t.Fatal(err)
	}
	if ranOn(t, conn, "SELECT pg_is_in_recovery()") {
		t.Fatal("pgrouter.route=primary ignored")
	}
	if _, err := conn.Exec(ctx, "SET pgrouter.route = auto"); err != nil {
		t.Fatal(err)
	}
	if !ranOn(t, conn, "SELECT pg_is_in_recovery()") {
		t.Fatal("pgrouter.route=auto did not go back to standbys")
	}
}

// A session's read right after its own write sees it, every time, under
// concurrent writes: read-your-writes by LSN. On both relays: the epoll
// loop (the default) and goroutines (--relay-threads 0, as TLS sessions).
func TestStatementSplitReadYourWrites(t *testing.T) {
	for _, relay := range relays {
		t.Run(relay.name, func(t *testing.T) {
			p := testSplitReadYourWrites(t, relay.args)
			want := `pgrouter_relayed_sessions_total{listener="any",relay="` + relay.name + `"}`
			if n := metricValue(t, p.Admin, want); n < 3 {
				t.Fatalf("%s = %v, want every session (at least 3)", want, n)
			}
		})
	}
}

func testSplitReadYourWrites(t *testing.T, extra []string) *proxyProc {
	c := sharedCluster(t)
	ctx := context.Background()
	setup, err := pgx.Connect(ctx, c.ConnString(c.Primary(), c.AppUser, c.AppPassword, c.AppDB))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Exec(ctx, "CREATE TABLE IF NOT EXISTS ryw_t (id bigserial PRIMARY KEY, client int)"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)
	p := startPooled(t, c, "transaction", append([]string{"--split", "statement"}, extra...)...)
	waitStandby(t, p, c.Nodes[1].Addr)

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	var standbyReads, reads int64
	var mu sync.Mutex
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := connectDB(t, p.Any, c.AppUser, c.AppPassword, c.AppDB, nil)
			if err != nil {
				errc <- err
				return
			}
			defer conn.Close(ctx)
			for i := range 150 {
				var id int64
				if err := conn.QueryRow(ctx, "INSERT INTO ryw_t (client) VALUES ($1) RETURNING id", w).Scan(&id); err != nil {
					errc <- err
					return
				}
				var n int
				var rec bool
				if err := conn.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM ryw_t WHERE id = $1", id).Scan(&n, &rec); err != nil {
					errc <- err
					return
				}
				if n != 1 {
					errc <- fmt.Errorf("writer %d iteration %d: own write %d not visible (standby=%v)", w, i, id, rec)
					return
				}
				mu.Lock()
				reads++
				if rec {
					standbyReads++
				}
				mu.Unlock()
			}
			lsn := conn.PgConn().ParameterStatus("pgrouter.last_write_lsn")
			if !strings.Contains(lsn, "/") {
				errc <- fmt.Errorf("pgrouter.last_write_lsn not reported: %q", lsn)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	t.Logf("%d reads after own writes, %d of them on a standby", reads, standbyReads)

	// Causality across sessions: a writer's pgrouter.last_write_lsn, set
	// as pgrouter.min_lsn in another session, makes that session's reads
	// see the write. The SET does not pin the reader: its reads still go
	// to standbys.
	writer, err := connectDB(t, p.Any, c.AppUser, c.AppPassword, c.AppDB, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(ctx)
	reader, err := connectDB(t, p.Any, c.AppUser, c.AppPassword, c.AppDB, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close(ctx)
	onStandby := 0
	for i := range 30 {
		var id int64
		var inTx string // where the WAL was before the commit
		if err := writer.QueryRow(ctx, "INSERT INTO ryw_t (client) VALUES (-1) RETURNING id, pg_current_wal_insert_lsn()::text").Scan(&id, &inTx); err != nil {
			t.Fatal(err)
		}
		// Reported with the write's own ReadyForQuery, not after it: the
		// position is past the write's, not an earlier write's.
		lsn := writer.PgConn().ParameterStatus("pgrouter.last_write_lsn")
		reported, err := topology.ParseLSN(lsn)
		before, err2 := topology.ParseLSN(inTx)
		if err != nil || err2 != nil || reported <= before {
			t.Fatalf("iteration %d: pgrouter.last_write_lsn %q after the write returned, the write at %s (%v, %v)", i, lsn, inTx, err, err2)
		}
		if _, err := reader.Exec(ctx, "SET pgrouter.min_lsn = '"+lsn+"'"); err != nil {
			t.Fatalf("SET pgrouter.min_lsn: %v", err)
		}
		var n int
		var rec bool
		if err := reader.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM ryw_t WHERE id = $1", id).Scan(&n, &rec); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Fatalf("iteration %d: another session's write %d at %s not visible (standby=%v)", i, id, lsn, rec)
		}
		if rec {
			onStandby++
		}
	}
	t.Logf("30 reads after another session's write, %d on a standby", onStandby)
	// Once a standby has replayed the last write, the reader's reads go
	// there: SET pgrouter.min_lsn did not pin it to a server.
	eventually(t, 10*time.Second, "a read on a standby after SET pgrouter.min_lsn", func() error {
		var rec bool
		if err := reader.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
			return err
		}
		if !rec {
			return fmt.Errorf("ran on the primary")
		}
		return nil
	})
	return p
}
