package proxy

import "testing"

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
		{"SELECT pg_advisory_lock(1)", pinAdvisoryLock},
		{"SELECT pg_advisory_xact_lock(1)", pinNone},
		{"SELECT 'pg_advisory_lock(1)'", pinNone},
		{"SELECT $$ ; listen x $$, 'prepare'", pinNone},
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
