package proxy

import (
	"strings"
	"testing"
)

func TestPinReason(t *testing.T) {
	tests := []struct{ q, want string }{
		{"SELECT 1", pinNone},
		{"UPDATE t SET x = 1 WHERE id = 2", pinNone},
		{"BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3; END;", pinNone},
		{"SET application_name = 'x'", pinNone},
		{"SET LOCAL work_mem = '1MB'", pinNone},
		{"set transaction isolation level serializable", pinNone},
		{"SET search_path = a, b", pinUntrackedSet},
		{"select 1; set statement_timeout = 5", pinUntrackedSet},
		{"SET SESSION work_mem = '64MB'", pinUntrackedSet},
		{"SET SESSION TimeZone = 'UTC'", pinNone},
		{"RESET ALL", pinUntrackedSet},
		{"PREPARE p AS SELECT 1", pinSQLPrepare},
		{"  /* hint */ -- c\n listen chan", pinListen},
		{"CREATE TEMP TABLE x (a int)", pinTempTable},
		{"create local temporary table x (a int)", pinTempTable},
		{"CREATE TABLE x (a int)", pinNone},
		{"SELECT * INTO TEMP t FROM pgbench_accounts", pinTempTable},
		{"select aid into local temporary table t from a", pinTempTable},
		{"WITH x AS (SELECT 1 AS a) SELECT a INTO TEMPORARY t FROM x", pinTempTable},
		{"SELECT * INTO t FROM a", pinNone},
		{"INSERT INTO temp VALUES (1)", pinNone},
		{"SELECT pointo, 'into temp' FROM a", pinNone},
		{"SELECT pg_advisory_lock(1)", pinAdvisoryLock},
		{"SELECT pg_advisory_xact_lock(1)", pinNone},
		{"SELECT pg_try_advisory_lock(42)", pinAdvisoryLock},
		{"select PG_TRY_ADVISORY_LOCK_SHARED(1, 2)", pinAdvisoryLock},
		{"SELECT pg_catalog.pg_advisory_lock_shared(7)", pinAdvisoryLock},
		{"SELECT pg_try_advisory_xact_lock(1)", pinNone},
		{"SELECT pg_advisory_unlock(1)", pinNone},
		{"SELECT set_config('search_path', 'app, public', false)", pinUntrackedSet},
		{"select pg_catalog.set_config('statement_timeout', '5s', FALSE)", pinUntrackedSet},
		{"SELECT set_config('search_path', 'app', true)", pinNone},
		{"SELECT set_config('application_name', 'x' || $1, false)", pinNone},
		{"SELECT set_config('TimeZone', 'UTC', false)", pinNone},
		{"SELECT set_config($1, $2, $3)", pinUntrackedSet},
		{"SELECT set_config('work_mem', (SELECT '64MB'), is_local)", pinUntrackedSet},
		{"SELECT set_config('search_path', format('%s,public', 'a'), true)", pinNone},
		{"SELECT 'set_config(''x'', ''y'', false)'", pinNone},
		{"SELECT reset_config_count FROM t", pinNone},
		{"SELECT 'pg_advisory_lock(1)'", pinNone},
		{"SELECT $$ ; listen x $$, 'prepare'", pinNone},
		{"SELECT E'\\''; LISTEN x; --'", pinListen}, // E'\\'' is one quote: LISTEN is a statement
		{"SELECT e'\\\\'; LISTEN x", pinListen},
		{"SELECT E'it\\'s; LISTEN x'", pinNone},
		{"SELECT 'a\\'; LISTEN x", pinListen}, // standard strings: the backslash is a character
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", pinHoldCursor},
		{"DECLARE c CURSOR FOR SELECT 1", pinNone},
		{"SELECT \"listen\" FROM t; SELECT $1", pinNone},
		{"(SELECT 1)", pinNone},
		{"create type pg_temp.text_bounds_range as range (subtype = text)", pinTempTable},
		{"CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'select 1'", pinTempTable},
		{"CREATE TABLE my_pg_temp_notes (a int)", pinNone},
		{"CREATE TABLE t (a text DEFAULT 'pg_temp.x')", pinNone},
		{"DEALLOCATE ALL", pinDeallocate},
		{"deallocate prepare ps", pinDeallocate},
		{"DISCARD ALL", pinDeallocate},
		{"DISCARD TEMP", pinNone},
		{"SELECT 'deallocate all'", pinNone},
	}
	for _, tc := range tests {
		t.Run(tc.q, func(t *testing.T) {
			if got := pinReason(tc.q); got != tc.want {
				t.Fatalf("pinReason(%q) = %q, want %q", tc.q, got, tc.want)
			}
		})
	}
}

func BenchmarkPinReason(b *testing.B) {
	q := "UPDATE pgbench_accounts SET abalance = abalance + -4207 WHERE aid = 841290;"
	b.ReportAllocs()
	for range b.N {
		if pinReason(q) != pinNone {
			b.Fatal("pinned")
		}
	}
}

// FuzzPinReason: the scanner reads every client's statement text on the
// relay's thread, so no text may make it panic or loop, and it names only
// its own reasons.
func FuzzPinReason(f *testing.F) {
	for _, s := range []string{
		"SELECT 1", "SET search_path = a", "select set_config('a', 'b', false)",
		"SELECT set_config(", "set_config((((", "SELECT pg_try_advisory_lock(1); LISTEN x",
		"/* unterminated", "'unterminated", "$tag$ never closed", "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
		"CREATE TEMP TABLE t (a int)", "DISCARD ALL", "SELECT $1, $$x$$", "SELECT E'\\'' ; LISTEN x", "SELECT E'\\",
	} {
		f.Add(s)
	}
	reasons := map[string]bool{pinNone: true, pinSQLPrepare: true, pinTempTable: true, pinListen: true,
		pinAdvisoryLock: true, pinHoldCursor: true, pinUntrackedSet: true, pinLoad: true, pinDeallocate: true}
	f.Fuzz(func(t *testing.T, q string) {
		if r := pinReason(q); !reasons[r] {
			t.Fatalf("pinReason(%q) = %q", q, r)
		}
		// The other scans of a client's text on the relay's thread.
		if c, ok := trackableSet(q); ok && strings.ContainsAny(c.value, "\\$") {
			t.Fatalf("trackableSet(%q) carries %q", q, c.value)
		}
		for _, f := range sessionReset(q, nil) {
			if f < 0 || f >= len(resetForms) {
				t.Fatalf("sessionReset(%q): form %d", q, f)
			}
		}
	})
}
