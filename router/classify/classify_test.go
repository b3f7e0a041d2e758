package classify

import (
	"unsafe"

	"fmt"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	R = Read
	W = Write
)

// classifyCases hold each case of the issue with its expected route, and
// the tricky ones around them. Functions that are not built in are
// unknown here (no Volatility hook): they go to the primary.
var classifyCases = []struct {
	name  string
	query string
	want  Result
}{
	// Reads.
	{"pgbench select", "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", Result{Route: R, Reason: "select"}},
	{"join and aggregate", "SELECT a.id, count(*) FROM a JOIN b ON a.id = b.a_id GROUP BY 1 HAVING max(b.v) > 1 ORDER BY 2 LIMIT 10", Result{Route: R, Reason: "select"}},
	{"values", "VALUES (1, 'a'), (2, 'b')", Result{Route: R, Reason: "values"}},
	{"table", "TABLE pgbench_branches", Result{Route: R, Reason: "select"}},
	{"show", "SHOW transaction_isolation", Result{Route: R, Reason: "show"}},
	{"union", "SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3", Result{Route: R, Reason: "select"}},
	{"read builtins", "SELECT now(), random(), clock_timestamp(), pg_is_in_recovery(), inet_server_port(), pg_last_wal_replay_lsn()", Result{Route: R, Reason: "select"}},
	{"sql syntax functions", "SELECT extract(year FROM now()), position('a' IN 'abc'), trim(' x '), substring('abc' FROM 2), now() AT TIME ZONE 'utc', CURRENT_DATE, coalesce(NULL, 1)", Result{Route: R, Reason: "select"}},
	{"pg_catalog qualified", "SELECT pg_catalog.lower('A'), pg_catalog.count(*) FROM t", Result{Route: R, Reason: "select"}},
	{"sleep", "SELECT pg_sleep(0.1)", Result{Route: R, Reason: "select"}},
	{"tablesample", "SELECT * FROM t TABLESAMPLE SYSTEM (10)", Result{Route: R, Reason: "select"}},
	{"read CTE", "WITH r AS (SELECT * FROM t WHERE a > 1) SELECT * FROM r", Result{Route: R, Reason: "select"}},
	{"recursive CTE", "WITH RECURSIVE r(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", Result{Route: R, Reason: "select"}},
	{"builtin in WHERE", "SELECT * FROM t WHERE lower(name) = 'x' AND created < now() - interval '1 day'", Result{Route: R, Reason: "select"}},

	// EXPLAIN.
	{"explain select", "EXPLAIN SELECT * FROM t", Result{Route: R, Reason: "explain"}},
	{"explain insert plans only", "EXPLAIN INSERT INTO t VALUES (1)", Result{Route: R, Reason: "explain"}},
	{"explain nextval plans only", "EXPLAIN SELECT nextval('s')", Result{Route: R, Reason: "explain"}},
	{"explain analyze select", "EXPLAIN ANALYZE SELECT * FROM t", Result{Route: R, Reason: "explain_analyze"}},
	{"explain analyze insert", "EXPLAIN ANALYZE INSERT INTO t VALUES (1)", Result{Route: W, Reason: "insert"}},
	{"explain analyze option list", "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", Result{Route: W, Reason: "update"}},
	{"explain analyze on", "EXPLAIN (ANALYZE on) DELETE FROM t", Result{Route: W, Reason: "delete"}},
	{"explain analyze 1", "EXPLAIN (ANALYZE 1) DELETE FROM t", Result{Route: W, Reason: "delete"}},
	{"explain analyze false", "EXPLAIN (ANALYZE false) DELETE FROM t", Result{Route: R, Reason: "explain"}},
	{"explain analyze 0", "EXPLAIN (ANALYZE 0, COSTS off) DELETE FROM t", Result{Route: R, Reason: "explain"}},
	{"explain analyze nextval", "EXPLAIN ANALYZE SELECT nextval('s')", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"explain analyze for update", "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", Result{Route: W, Reason: "for_update"}},
	{"explain execute", "EXPLAIN EXECUTE q(1)", Result{Route: W, Reason: "execute"}},
	{"explain temp table", "EXPLAIN SELECT * FROM pg_temp.tt", Result{Route: W, Reason: "temp_table"}},

	// COPY.
	{"copy to stdout", "COPY t TO STDOUT", Result{Route: R, Reason: "copy_to"}},
	{"copy query to stdout", "COPY (SELECT * FROM t WHERE a > 1) TO STDOUT WITH (FORMAT csv)", Result{Route: R, Reason: "copy_to"}},
	{"copy insert returning", "COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", Result{Route: W, Reason: "insert"}},
	{"copy query nextval", "COPY (SELECT nextval('s')) TO STDOUT", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"copy from stdin", "COPY t (a, b) FROM STDIN WITH (FORMAT csv)", Result{Route: W, Reason: "copy_from"}},
	{"copy to server file", "COPY t TO '/tmp/t.csv'", Result{Route: W, Reason: "copy_to_file"}},
	{"copy to program", "COPY t TO PROGRAM 'gzip > /tmp/t.gz'", Result{Route: W, Reason: "copy_to_file"}},
	{"copy temp table", "COPY pg_temp.tt TO STDOUT", Result{Route: W, Reason: "temp_table", SessionWrite: true}},

	// Locking reads, SELECT INTO, writing CTEs.
	{"for update", "SELECT * FROM t WHERE id = 1 FOR UPDATE", Result{Route: W, Reason: "for_update"}},
	{"for no key update", "SELECT * FROM t FOR NO KEY UPDATE NOWAIT", Result{Route: W, Reason: "for_update"}},
	{"for share", "SELECT * FROM t FOR SHARE", Result{Route: W, Reason: "for_share"}},
	{"for key share skip locked", "SELECT * FROM t FOR KEY SHARE SKIP LOCKED", Result{Route: W, Reason: "for_share"}},
	{"for update in subquery", "SELECT * FROM (SELECT * FROM t FOR UPDATE) s", Result{Route: W, Reason: "for_update"}},
	{"for update in CTE", "WITH l AS (SELECT * FROM t FOR UPDATE) SELECT * FROM l", Result{Route: W, Reason: "for_update"}},
	{"select into", "SELECT 1 AS a INTO t2", Result{Route: W, Reason: "select_into"}},
	{"select into temp", "SELECT * INTO TEMP t2 FROM t", Result{Route: W, Reason: "select_into", SessionWrite: true}},
	{"writing CTE", "WITH d AS (DELETE FROM t WHERE a < 0 RETURNING *) SELECT count(*) FROM d", Result{Route: W, Reason: "writes_cte"}},
	{"writing CTE insert", "WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i", Result{Route: W, Reason: "writes_cte"}},
	{"nested writing CTE", "WITH a AS (WITH b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM b) SELECT * FROM a", Result{Route: W, Reason: "writes_cte"}},

	// Writes.
	{"insert", "INSERT INTO t (a) VALUES (1)", Result{Route: W, Reason: "insert"}},
	{"update", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2", Result{Route: W, Reason: "update"}},
	{"delete", "DELETE FROM t WHERE a = 1", Result{Route: W, Reason: "delete"}},
	{"merge", "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v", Result{Route: W, Reason: "merge"}},
	{"insert on conflict", "INSERT INTO t VALUES (1) ON CONFLICT (id) DO NOTHING", Result{Route: W, Reason: "insert"}},
	{"create table", "CREATE TABLE t (a int)", Result{Route: W, Reason: "create"}},
	{"create table as", "CREATE TABLE t2 AS SELECT 1", Result{Route: W, Reason: "create_table_as"}},
	{"alter table", "ALTER TABLE t ADD COLUMN b int", Result{Route: W, Reason: "alter_table"}},
	{"drop", "DROP TABLE t", Result{Route: W, Reason: "drop"}},
	{"truncate", "TRUNCATE t", Result{Route: W, Reason: "truncate"}},
	{"create index", "CREATE INDEX ON t (a)", Result{Route: W, Reason: "index"}},
	{"grant", "GRANT SELECT ON t TO app", Result{Route: W, Reason: "grant"}},
	{"vacuum", "VACUUM t", Result{Route: W, Reason: "vacuum"}},
	{"analyze", "ANALYZE t", Result{Route: W, Reason: "vacuum"}},
	{"checkpoint", "CHECKPOINT", Result{Route: W, Reason: "check_point"}},
	{"lock", "LOCK TABLE t IN ACCESS SHARE MODE", Result{Route: W, Reason: "lock"}},
	{"do", "DO $$BEGIN PERFORM 1; END$$", Result{Route: W, Reason: "do"}},
	{"call unknown procedure", "CALL p(1)", Result{Route: W, Reason: "unknown_function:p"}},
	{"refresh", "REFRESH MATERIALIZED VIEW mv", Result{Route: W, Reason: "refresh_mat_view"}},
	{"create function", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", Result{Route: W, Reason: "create_function"}},
	{"load", "LOAD 'auto_explain'", Result{Route: W, Reason: "load", SessionWrite: true}},

	// Functions that write or take locks, wherever they are.
	{"nextval", "SELECT nextval('s')", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"nextval in WHERE", "SELECT * FROM t WHERE id = nextval('s')", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"nextval in subquery", "SELECT * FROM t WHERE id IN (SELECT nextval('s'))", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"nextval in FROM", "SELECT * FROM nextval('s')", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"nextval in read CTE", "WITH s AS (SELECT nextval('seq') AS id) SELECT id FROM s", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"nextval in CASE", "SELECT CASE WHEN a > 0 THEN nextval('s') END FROM t", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"nextval in lateral", "SELECT * FROM t, LATERAL (SELECT nextval('s')) x", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"nextval in ORDER BY", "SELECT a FROM t ORDER BY nextval('s')", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"quoted nextval", `SELECT "nextval"('s')`, Result{Route: W, Reason: "volatile_function:nextval"}},
	{"qualified nextval", "SELECT pg_catalog.nextval('s')", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"setval", "SELECT setval('s', 10)", Result{Route: W, Reason: "volatile_function:setval"}},
	{"currval", "SELECT currval('s')", Result{Route: W, Reason: "volatile_function:currval"}},
	{"advisory lock", "SELECT pg_advisory_lock(1)", Result{Route: W, Reason: "volatile_function:pg_advisory_lock", SessionWrite: true}},
	{"try advisory lock", "SELECT pg_try_advisory_lock(1, 2)", Result{Route: W, Reason: "volatile_function:pg_try_advisory_lock", SessionWrite: true}},
	{"advisory xact lock", "SELECT pg_advisory_xact_lock(1)", Result{Route: W, Reason: "volatile_function:pg_advisory_xact_lock"}},
	{"advisory unlock all", "SELECT pg_advisory_unlock_all()", Result{Route: W, Reason: "volatile_function:pg_advisory_unlock_all", SessionWrite: true}},
	{"set_config", "SELECT set_config('app.user', 'x', false)", Result{Route: W, Reason: "volatile_function:set_config", SessionWrite: true}},
	{"lo_import", "SELECT lo_import('/etc/motd')", Result{Route: W, Reason: "volatile_function:lo_import"}},
	{"lo_get", "SELECT lo_get(16384)", Result{Route: W, Reason: "volatile_function:lo_get"}},
	{"loread", "SELECT loread(3, 10)", Result{Route: W, Reason: "volatile_function:loread"}},
	{"txid_current", "SELECT txid_current()", Result{Route: W, Reason: "volatile_function:txid_current"}},
	{"pg_current_xact_id", "SELECT pg_current_xact_id()", Result{Route: W, Reason: "volatile_function:pg_current_xact_id"}},
	{"pg_notify", "SELECT pg_notify('ch', 'x')", Result{Route: W, Reason: "volatile_function:pg_notify"}},
	{"current wal lsn", "SELECT pg_current_wal_lsn()", Result{Route: W, Reason: "volatile_function:pg_current_wal_lsn"}},
	{"query_to_xml runs any text", "SELECT query_to_xml('DELETE FROM t RETURNING *', true, false, '')", Result{Route: W, Reason: "volatile_function:query_to_xml"}},
	{"unknown function", "SELECT my_func(1)", Result{Route: W, Reason: "unknown_function:my_func"}},
	{"unknown qualified function", "SELECT app.my_func(1)", Result{Route: W, Reason: "unknown_function:my_func"}},
	{"unknown function in WHERE", "SELECT * FROM t WHERE app.check(a)", Result{Route: W, Reason: "unknown_function:check"}},
	{"insert with session lock", "INSERT INTO t SELECT pg_advisory_lock(1)", Result{Route: W, Reason: "insert", SessionWrite: true}},

	// Temporary tables and functions.
	{"create temp table", "CREATE TEMP TABLE tt (a int)", Result{Route: W, Reason: "temp_table", SessionWrite: true}},
	{"create temporary on commit drop", "CREATE TEMPORARY TABLE tt (a int) ON COMMIT DROP", Result{Route: W, Reason: "temp_table", SessionWrite: true}},
	{"create table in pg_temp", "CREATE TABLE pg_temp.tt (a int)", Result{Route: W, Reason: "temp_table", SessionWrite: true}},
	{"create temp table as", "CREATE TEMP TABLE tt AS SELECT 1", Result{Route: W, Reason: "temp_table", SessionWrite: true}},
	{"create temp view", "CREATE TEMP VIEW v AS SELECT 1", Result{Route: W, Reason: "temp_table", SessionWrite: true}},
	{"create temp sequence", "CREATE TEMP SEQUENCE s", Result{Route: W, Reason: "temp_table", SessionWrite: true}},
	{"create temp function", "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", Result{Route: W, Reason: "temp_function", SessionWrite: true}},
	{"select from pg_temp", "SELECT * FROM pg_temp.tt", Result{Route: W, Reason: "temp_table", SessionWrite: true}},
	{"select from pg_temp_3", "SELECT * FROM pg_temp_3.tt", Result{Route: W, Reason: "temp_table", SessionWrite: true}},
	{"join with pg_temp", "SELECT * FROM t JOIN pg_temp.tt USING (id)", Result{Route: W, Reason: "temp_table", SessionWrite: true}},
	{"insert into pg_temp", "INSERT INTO pg_temp.tt VALUES (1)", Result{Route: W, Reason: "insert", SessionWrite: true}},
	{"call pg_temp function", "SELECT pg_temp.f()", Result{Route: W, Reason: "temp_function:f", SessionWrite: true}},

	// LISTEN, NOTIFY.
	{"listen", "LISTEN ch", Result{Route: W, Reason: "listen", SessionWrite: true}},
	{"unlisten", "UNLISTEN *", Result{Route: W, Reason: "unlisten", SessionWrite: true}},
	{"notify", "NOTIFY ch, 'payload'", Result{Route: W, Reason: "notify"}},

	// Transactions.
	{"begin", "BEGIN", Result{Route: W, Reason: "begin", Begin: true}},
	{"begin read write", "BEGIN READ WRITE", Result{Route: W, Reason: "begin", Begin: true}},
	{"start transaction", "START TRANSACTION ISOLATION LEVEL REPEATABLE READ", Result{Route: W, Reason: "begin", Begin: true}},
	{"begin read only", "BEGIN READ ONLY", Result{Route: R, Reason: "begin_read_only", Begin: true, BeginReadOnly: true}},
	{"start transaction read only", "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", Result{Route: R, Reason: "begin_read_only", Begin: true, BeginReadOnly: true}},
	{"begin serializable read only", "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", Result{Route: W, Reason: "serializable", Begin: true}},
	{"commit", "COMMIT", Result{Route: R, Reason: "commit", End: true}},
	{"end", "END", Result{Route: R, Reason: "commit", End: true}},
	{"rollback", "ROLLBACK", Result{Route: R, Reason: "rollback", End: true}},
	{"abort", "ABORT", Result{Route: R, Reason: "rollback", End: true}},
	{"commit and chain", "COMMIT AND CHAIN", Result{Route: R, Reason: "commit", End: true, Begin: true}},
	{"savepoint", "SAVEPOINT a", Result{Route: R, Reason: "savepoint"}},
	{"release", "RELEASE SAVEPOINT a", Result{Route: R, Reason: "release"}},
	{"rollback to savepoint", "ROLLBACK TO SAVEPOINT a", Result{Route: R, Reason: "rollback_to"}},
	{"prepare transaction", "PREPARE TRANSACTION 'gid1'", Result{Route: W, Reason: "prepare_transaction", End: true}},
	{"commit prepared", "COMMIT PREPARED 'gid1'", Result{Route: W, Reason: "commit_prepared"}},
	{"rollback prepared", "ROLLBACK PREPARED 'gid1'", Result{Route: W, Reason: "rollback_prepared"}},
	{"set transaction read only", "SET TRANSACTION READ ONLY", Result{Route: R, Reason: "set_transaction_read_only", BeginReadOnly: true}},
	{"set transaction read write", "SET TRANSACTION READ WRITE", Result{Route: W, Reason: "set_transaction_read_write"}},
	{"set transaction isolation", "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", Result{Route: R, Reason: "set_transaction"}},
	{"set transaction serializable", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Result{Route: W, Reason: "serializable"}},
	{"set transaction_read_only", "SET transaction_read_only = on", Result{Route: R, Reason: "set_transaction_read_only", BeginReadOnly: true}},
	{"set transaction_read_only off", "SET transaction_read_only TO 'off'", Result{Route: W, Reason: "set_transaction_read_write"}},
	{"set transaction snapshot", "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", Result{Route: W, Reason: "set_transaction_snapshot"}},
	{"session characteristics", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", Result{Route: R, Reason: "set_session_characteristics", SessionWrite: true}},

	// Settings of the session.
	{"set", "SET search_path TO app, public", Result{Route: R, Reason: "set", SessionWrite: true}},
	{"set default read only", "SET default_transaction_read_only = on", Result{Route: R, Reason: "set", SessionWrite: true}},
	{"set local", "SET LOCAL statement_timeout = '1s'", Result{Route: R, Reason: "set_local"}},
	{"set role", "SET ROLE app", Result{Route: R, Reason: "set", SessionWrite: true}},
	{"set session authorization", "SET SESSION AUTHORIZATION app", Result{Route: R, Reason: "set", SessionWrite: true}},
	{"reset", "RESET search_path", Result{Route: R, Reason: "reset", SessionWrite: true}},
	{"reset all", "RESET ALL", Result{Route: R, Reason: "reset", SessionWrite: true, SetRoute: "auto"}},
	{"discard all", "DISCARD ALL", Result{Route: R, Reason: "discard", SessionWrite: true, SetRoute: "auto"}},
	{"discard temp", "DISCARD TEMP", Result{Route: R, Reason: "discard", SessionWrite: true}},
	{"set constraints", "SET CONSTRAINTS ALL DEFERRED", Result{Route: R, Reason: "set_constraints"}},

	// SET pgrouter.route.
	{"route primary", "SET pgrouter.route = 'primary'", Result{Route: R, Reason: "set_route", SetRoute: "primary"}},
	{"route primary unquoted", "SET pgrouter.route = primary", Result{Route: W, Reason: "set_route_unquoted", SetRoute: "primary"}},
	{"route primary unquoted to", "set session PGROUTER.ROUTE to PRIMARY;", Result{Route: W, Reason: "set_route_unquoted", SetRoute: "primary"}},
	{"route unquoted ignores a hint", "/* pgrouter:standby */ SET pgrouter.route = primary", Result{Route: W, Reason: "set_route_unquoted", SetRoute: "primary"}},
	{"route standby", "SET pgrouter.route TO standby", Result{Route: R, Reason: "set_route", SetRoute: "standby"}},
	{"route standby quoted", "SET pgrouter.route = 'Standby'", Result{Route: R, Reason: "set_route", SetRoute: "standby"}},
	{"route auto", "SET pgrouter.route = auto", Result{Route: R, Reason: "set_route", SetRoute: "auto"}},
	{"route reset", "RESET pgrouter.route", Result{Route: R, Reason: "set_route", SetRoute: "auto"}},
	{"route default", "SET pgrouter.route TO DEFAULT", Result{Route: R, Reason: "set_route", SetRoute: "auto"}},
	{"route invalid", "SET pgrouter.route = 'elsewhere'", Result{Route: W, Reason: "set_route_invalid"}},
	{"other pgrouter setting", "SET pgrouter.min_lsn = '0/3000060'", Result{Route: R, Reason: "set", SessionWrite: true}},
	{"not a route set", "SELECT pgrouter.route = primary", Result{Route: W, Reason: "unparsable"}},

	// Prepared statements and cursors.
	{"prepare", "PREPARE q(int) AS SELECT * FROM t WHERE id = $1", Result{Route: W, Reason: "prepare", SessionWrite: true}},
	{"execute", "EXECUTE q(1)", Result{Route: W, Reason: "execute"}},
	{"deallocate", "DEALLOCATE q", Result{Route: W, Reason: "deallocate", SessionWrite: true}},
	{"deallocate all", "DEALLOCATE ALL", Result{Route: W, Reason: "deallocate", SessionWrite: true}},
	{"declare", "DECLARE c CURSOR FOR SELECT * FROM t", Result{Route: R, Reason: "declare"}},
	{"declare with hold", "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", Result{Route: R, Reason: "declare", SessionWrite: true}},
	{"declare for update", "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", Result{Route: W, Reason: "for_update"}},
	{"declare nextval", "DECLARE c CURSOR FOR SELECT nextval('s')", Result{Route: W, Reason: "volatile_function:nextval"}},
	{"fetch", "FETCH 10 FROM c", Result{Route: R, Reason: "fetch"}},
	{"move", "MOVE NEXT IN c", Result{Route: R, Reason: "fetch"}},
	{"close", "CLOSE c", Result{Route: R, Reason: "close"}},

	// Several statements.
	{"multi read", "SELECT 1; SELECT 2;", Result{Route: R, Reason: "multi_statement_read"}},
	{"multi with write", "SELECT 1; INSERT INTO t VALUES (1)", Result{Route: W, Reason: "multi_statement_write"}},
	{"multi with nextval", "SELECT 1; SELECT nextval('s')", Result{Route: W, Reason: "multi_statement_write"}},
	{"multi whole transaction", "BEGIN; UPDATE t SET a = 1; COMMIT;", Result{Route: W, Reason: "multi_statement_write"}},
	{"multi read-write transaction of reads", "BEGIN; SELECT 1; COMMIT", Result{Route: W, Reason: "multi_statement_write"}},
	{"multi read-only transaction", "BEGIN READ ONLY; SELECT 1; COMMIT", Result{Route: R, Reason: "multi_statement_read"}},
	{"multi begins", "BEGIN; INSERT INTO t VALUES (1)", Result{Route: W, Reason: "multi_statement_write", Begin: true}},
	{"multi begins read only", "BEGIN; SET TRANSACTION READ ONLY; SELECT 1", Result{Route: R, Reason: "multi_statement_read", Begin: true, BeginReadOnly: true}},
	{"multi ends", "COMMIT; SELECT 1", Result{Route: R, Reason: "multi_statement_read", End: true}},
	{"multi ends and begins", "COMMIT; BEGIN READ ONLY", Result{Route: R, Reason: "multi_statement_read", End: true, Begin: true, BeginReadOnly: true}},
	{"multi set route", "SET pgrouter.route = 'standby'; SELECT 1", Result{Route: R, Reason: "multi_statement_read", SetRoute: "standby"}},
	{"multi listen", "SELECT 1; LISTEN ch", Result{Route: W, Reason: "multi_statement_write", SessionWrite: true}},
	{"multi prepare transaction", "BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'g'", Result{Route: W, Reason: "multi_statement_write"}},

	// Hints.
	{"hint primary", "/* pgrouter:primary */ SELECT 1", Result{Route: W, Reason: "hint", Hint: "primary"}},
	{"hint standby over function", "/* pgrouter:standby */ SELECT my_func(1)", Result{Route: R, Reason: "hint", Hint: "standby"}},
	{"hint tight and upper", "/*PGROUTER:PRIMARY*/SELECT 1", Result{Route: W, Reason: "hint", Hint: "primary"}},
	{"hint after other comments", "-- app\n/* trace=1 */ /* pgrouter:standby */ SELECT my_func(1)", Result{Route: R, Reason: "hint", Hint: "standby"}},
	{"hint keeps transaction flags", "/* pgrouter:standby */ BEGIN", Result{Route: R, Reason: "hint", Hint: "standby", Begin: true}},
	{"hint not leading", "SELECT 1 /* pgrouter:primary */", Result{Route: R, Reason: "select"}},
	{"hint in a string", "SELECT '/* pgrouter:primary */'", Result{Route: R, Reason: "select"}},
	{"not a hint", "/* pgrouter:primary please */ SELECT 1", Result{Route: R, Reason: "select"}},
	{"hint cannot send garbage to a standby", "/* pgrouter:standby */ SELEC 1", Result{Route: W, Reason: "unparsable"}},

	// Comments, quoting, and text that only looks like SQL.
	{"line comment", "-- DELETE FROM t\nSELECT 1", Result{Route: R, Reason: "select"}},
	{"block comment", "/* DELETE FROM t; */ SELECT 1", Result{Route: R, Reason: "select"}},
	{"nested comment", "/* a /* DELETE FROM t; */ b */ SELECT 1", Result{Route: R, Reason: "select"}},
	{"write in string", "SELECT 'DELETE FROM t; INSERT INTO t VALUES (1)'", Result{Route: R, Reason: "select"}},
	{"write in dollar string", "SELECT $$; DELETE FROM t; $$, $x$ nextval('s') $x$", Result{Route: R, Reason: "select"}},
	{"escape string", `SELECT E'it\'s; DELETE FROM t'`, Result{Route: R, Reason: "select"}},
	{"quoted keywords", `SELECT "select", "insert" FROM "update" WHERE "delete" = 1`, Result{Route: R, Reason: "select"}},
	{"quoted uppercase table", `SELECT * FROM "Accounts"`, Result{Route: R, Reason: "select"}},
	{"column named nextval", "SELECT nextval FROM t", Result{Route: R, Reason: "select"}},
	{"string lo_import", "SELECT 'lo_import(1)'", Result{Route: R, Reason: "select"}},
	{"unquoted reserved word", "SELECT * FROM select", Result{Route: W, Reason: "unparsable"}},

	// What does not parse goes to the primary.
	{"typo", "SELEC 1", Result{Route: W, Reason: "unparsable"}},
	{"unterminated string", "SELECT 'abc", Result{Route: W, Reason: "unparsable"}},
	{"unterminated comment", "/* SELECT 1", Result{Route: W, Reason: "unparsable"}},
	{"half a statement", "SELECT * FROM", Result{Route: W, Reason: "unparsable"}},
	{"binary junk", "\xff\xfe\x01", Result{Route: W, Reason: "unparsable"}},
	{"literal not UTF-8", "SELECT '\x85'", Result{Route: W, Reason: "unparsable"}},
	{"float precision checked by the grammar", "SELECT 1::float(0)", Result{Route: W, Reason: "unparsable"}},
	{"float precision", "SELECT 1::float(53)", Result{Route: R, Reason: "select"}},
	{"empty", "", Result{Route: R, Reason: "empty"}},
	{"only semicolons", " ; ; ", Result{Route: R, Reason: "empty"}},
	{"only a comment", "/* nothing */", Result{Route: R, Reason: "empty"}},
	{"NUL ends the text", "SELECT 1\x00; DELETE FROM t", Result{Route: R, Reason: "select"}},
}

func TestClassify(t *testing.T) {
	c := New(Config{})
	for _, tc := range classifyCases {
		t.Run(tc.name, func(t *testing.T) {
			// Twice: the second answer comes from the cache.
			for i := range 2 {
				if got := c.Classify(tc.query); got != tc.want {
					t.Errorf("Classify(%q) #%d\n got %+v\nwant %+v", tc.query, i, got, tc.want)
				}
			}
			if got := c.ClassifyParse(tc.query); got != tc.want {
				t.Errorf("ClassifyParse(%q)\n got %+v\nwant %+v", tc.query, got, tc.want)
			}
		})
	}
}

func TestClassifyFunctions(t *testing.T) {
	vol := map[string]byte{
		"app.total":     's',
		"total":         's',
		"lookup":        'i',
		"audit":         'v',
		"app.audit":     'v',
		"other.f":       'v',
		"report.f":      's',
		"dblink":        'v',
		"fresh_counter": 'v',
	}
	c := New(Config{
		ReadOnlyFunctions: []string{"dblink", "App.Reporting"},
		WriteFunctions:    []string{"lookup", "lower"},
		Volatility: func(name string) (byte, bool) {
			v, ok := vol[name]
			return v, ok
		},
	})
	cases := []struct {
		name  string
		query string
		want  Result
	}{
		{"stable user function", "SELECT total(a) FROM t", Result{Route: R, Reason: "select"}},
		{"qualified stable", "SELECT app.total(a) FROM t", Result{Route: R, Reason: "select"}},
		{"volatile user function", "SELECT audit('x')", Result{Route: W, Reason: "volatile_function:audit"}},
		{"volatile in WHERE", "SELECT * FROM t WHERE app.audit(a) > 0", Result{Route: W, Reason: "volatile_function:audit"}},
		{"qualified wins over name", "SELECT report.f()", Result{Route: R, Reason: "select"}},
		{"qualified volatile", "SELECT other.f()", Result{Route: W, Reason: "volatile_function:f"}},
		{"unknown to the hook", "SELECT nowhere(1)", Result{Route: W, Reason: "unknown_function:nowhere"}},
		{"read-only list beats volatility", "SELECT * FROM dblink('conn', 'SELECT 1') AS r(a int)", Result{Route: R, Reason: "select"}},
		{"read-only list qualified", "SELECT app.reporting()", Result{Route: R, Reason: "select"}},
		{"write list beats volatility", "SELECT lookup(1)", Result{Route: W, Reason: "write_function:lookup"}},
		{"write list beats built-in", "SELECT lower('A')", Result{Route: W, Reason: "write_function:lower"}},
		{"built-ins ignore the hook", "SELECT random(), now()", Result{Route: R, Reason: "select"}},
		{"call stable procedure", "CALL app.total(1)", Result{Route: R, Reason: "call"}},
		{"call volatile procedure", "CALL audit('x')", Result{Route: W, Reason: "volatile_function:audit"}},
		{"function in a default", "CREATE TABLE t (a int DEFAULT audit('x'))", Result{Route: W, Reason: "create"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.Classify(tc.query); got != tc.want {
				t.Errorf("Classify(%q)\n got %+v\nwant %+v", tc.query, got, tc.want)
			}
		})
	}
}

func TestInvalidateFunctions(t *testing.T) {
	var mu sync.Mutex
	vol := map[string]byte{"f": 's'}
	c := New(Config{Volatility: func(name string) (byte, bool) {
		mu.Lock()
		defer mu.Unlock()
		v, ok := vol[name]
		return v, ok
	}})
	check := func(q string, want Route) {
		t.Helper()
		for _, got := range []Result{c.Classify(q), c.ClassifyParse(q)} {
			if got.Route != want {
				t.Errorf("%q: route %v, want %v (%+v)", q, got.Route, want, got)
			}
		}
	}
	check("SELECT f(1)", Read)
	check("SELECT g(1)", Write)
	mu.Lock()
	vol["f"], vol["g"] = 'v', 'i'
	mu.Unlock()
	check("SELECT f(1)", Read) // cached until told
	c.InvalidateFunctions()
	check("SELECT f(1)", Write)
	check("SELECT g(1)", Read)
	check("SELECT 1", Read)
}

// TestClassifyNormalizedCache: texts that differ only in constants
// share one entry; texts whose meaning hangs on a literal do not.
func TestClassifyNormalizedCache(t *testing.T) {
	c := New(Config{})
	for i := range 100 {
		q := fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d AND note = 'n%d' AND x = %d.5;", i, i, i)
		if got := c.Classify(q); got.Route != Read {
			t.Fatalf("%q: %+v", q, got)
		}
	}
	if n := c.cache.len(); n != 1 {
		t.Errorf("100 texts differing in constants made %d cache entries, want 1", n)
	}
	for _, q := range []string{
		"SET pgrouter.route = 'primary'",
		"SET pgrouter.route = 'standby'",
		"SET pgrouter.route = 'primary'",
		"SET pgrouter.route = 'auto'",
	} {
		want := strings.TrimSuffix(strings.TrimPrefix(q, "SET pgrouter.route = '"), "'")
		if got := c.Classify(q); got.SetRoute != want {
			t.Errorf("%q: SetRoute %q, want %q", q, got.SetRoute, want)
		}
	}
	for q, want := range map[string]Route{
		"EXPLAIN (ANALYZE 1) DELETE FROM t": Write,
		"EXPLAIN (ANALYZE 0) DELETE FROM t": Read,
		"SET transaction_read_only = 'on'":  Read,
		"SET transaction_read_only = 'off'": Write,
	} {
		for range 2 {
			if got := c.Classify(q); got.Route != want {
				t.Errorf("%q: %+v, want route %v", q, got, want)
			}
		}
	}
}

func TestCacheBounded(t *testing.T) {
	c := New(Config{CacheSize: 64})
	for i := range 1000 {
		c.ClassifyParse(fmt.Sprintf("SELECT c%d FROM t", i))
	}
	if n := c.cache.len(); n > 64 {
		t.Errorf("cache holds %d entries, bound 64", n)
	}
	if got := c.ClassifyParse("SELECT c1 FROM t"); got.Route != Read {
		t.Errorf("after eviction: %+v", got)
	}
	off := New(Config{CacheSize: -1})
	if got := off.Classify("SELECT nextval('s')"); got.Route != Write {
		t.Errorf("no cache: %+v", got)
	}
	if off.cache != nil {
		t.Error("CacheSize -1 made a cache")
	}
}

func TestClassifyConcurrent(t *testing.T) {
	c := New(Config{CacheSize: 32})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				tc := classifyCases[(g*7+i)%len(classifyCases)]
				if got := c.Classify(tc.query); got != tc.want {
					t.Errorf("Classify(%q) = %+v, want %+v", tc.query, got, tc.want)
					return
				}
				if i%50 == 0 {
					c.InvalidateFunctions()
				}
			}
		}()
	}
	wg.Wait()
}

func TestBuiltins(t *testing.T) {
	b := builtins()
	if len(b) < 2500 {
		t.Fatalf("only %d built-in functions", len(b))
	}
	for _, name := range []string{"count", "lower", "now", "extract", "btrim", "timezone", "pg_collation_for", "is_normalized", "system_user"} {
		if _, ok := b[name]; !ok {
			t.Errorf("%s is not a built-in", name)
		}
	}
	for name := range volatileReadOnly {
		if v, ok := b[name]; !ok || v != 'v' {
			t.Errorf("volatileReadOnly lists %s, which is not a volatile built-in (%q)", name, v)
		}
	}
}

// TestClassifySharedCacheMatchesFresh runs every case, and variants with
// other constants, through one cached classifier and checks each answer
// against a classifier without a cache: texts that share a normalized
// key must share their classification.
func TestClassifySharedCacheMatchesFresh(t *testing.T) {
	shared := New(Config{})
	fresh := New(Config{CacheSize: -1})
	variants := func(q string) []string {
		digits := []byte(q)
		for i, b := range digits {
			if isDigit(b) {
				digits[i] = '0' + (b-'0'+7)%10
			}
		}
		return []string{
			q,
			string(digits),
			strings.ReplaceAll(q, "'", "''''"),
			strings.ReplaceAll(q, "1", "1.5"),
			strings.ReplaceAll(q, "0", "2147483648"),
			strings.ReplaceAll(q, " ", "\n-- c\n"),
			strings.ToUpper(q),
		}
	}
	for _, tc := range classifyCases {
		for _, q := range variants(tc.query) {
			if got, want := shared.Classify(q), fresh.Classify(q); got != want {
				t.Errorf("Classify(%q) from the cache\n got %+v\nwant %+v", q, got, want)
			}
		}
	}
}

// TestClassifyKeepsNoViewOfTheText: the proxy passes texts that are views
// of a read buffer it reuses; what a miss caches must not change with it.
func TestClassifyKeepsNoViewOfTheText(t *testing.T) {
	c := New(Config{})
	for _, text := range []string{"SET pgrouter.route = primary", "SET pgrouter.route = 'standby'"} {
		buf := []byte(text)
		first := c.Classify(unsafe.String(&buf[0], len(buf)))
		for i := range buf {
			buf[i] = 'x'
		}
		if again := c.Classify(text); again != first || again.SetRoute == "" || again.SetRoute[0] == 'x' {
			t.Errorf("%q: cached %+v after its buffer was reused, first %+v", text, again, first)
		}
	}
}
