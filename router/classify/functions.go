package classify

import (
	_ "embed"
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// builtinFunctionsText lists pg_catalog's functions with their volatility
// ('i', 's' or 'v'), one "name v" a line; gen_builtins.go writes it.
//
//go:embed builtin_functions.txt
var builtinFunctionsText string

// newerBuiltins are pg_catalog functions added after the release the
// embedded list comes from, that are safe on a standby. A newer function
// missing here is unknown: it goes to the Volatility hook, then to the
// primary.
var newerBuiltins = map[string]byte{
	"any_value": 'i', "array_sample": 'v', "array_shuffle": 'v',
	"date_add": 's', "date_subtract": 's', "erf": 'i', "erfc": 'i',
	"has_largeobject_privilege": 's', "pg_basetype": 's',
	"pg_input_error_info": 's', "pg_input_is_valid": 's',
	"pg_split_walfile_name": 'i', "random_normal": 'v', "system_user": 's',
	"to_bin": 'i', "to_oct": 'i',
}

// builtins maps each built-in function name to its volatility, the most
// volatile of its overloads. Built once, on first use.
var builtins = sync.OnceValue(func() map[string]byte {
	m := make(map[string]byte, 2800)
	for line := range strings.SplitSeq(builtinFunctionsText, "\n") {
		name, v, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") || len(v) != 1 {
			continue
		}
		m[name] = v[0]
	}
	for name, v := range newerBuiltins {
		m[name] = v
	}
	return m
})

// volatileReadOnly are built-in volatile functions that neither write nor
// take locks, so a standby runs them as the primary would: clocks, random
// numbers, sleeps, sizes and the state of the server (pg_is_in_recovery,
// replay positions), reading server files and statistics.
var volatileReadOnly = setOf(
	"array_sample", "array_shuffle", "bernoulli", "clock_timestamp",
	"current_query", "cursor_to_xml", "cursor_to_xmlschema",
	"gen_random_uuid", "pg_blocking_pids", "pg_collation_actual_version",
	"pg_control_checkpoint", "pg_control_init", "pg_control_recovery",
	"pg_control_system", "pg_current_logfile",
	"pg_database_collation_actual_version", "pg_database_size",
	"pg_get_backend_memory_contexts", "pg_get_multixact_members",
	"pg_get_shmem_allocations", "pg_get_wal_replay_pause_state",
	"pg_get_wal_resource_managers", "pg_hba_file_rules",
	"pg_ident_file_mappings", "pg_indexes_size", "pg_is_in_recovery",
	"pg_is_wal_replay_paused", "pg_isolation_test_session_is_blocked",
	"pg_jit_available", "pg_last_committed_xact", "pg_last_wal_receive_lsn",
	"pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp",
	"pg_lock_status", "pg_ls_archive_statusdir", "pg_ls_dir", "pg_ls_logdir",
	"pg_ls_logicalmapdir", "pg_ls_logicalsnapdir", "pg_ls_replslotdir",
	"pg_ls_tmpdir", "pg_ls_waldir", "pg_notification_queue_usage",
	"pg_partition_ancestors", "pg_partition_tree", "pg_prepared_xact",
	"pg_read_binary_file", "pg_read_file", "pg_read_file_old",
	"pg_relation_size", "pg_safe_snapshot_blocking_pids",
	"pg_sequence_last_value", "pg_show_all_file_settings",
	"pg_show_replication_origin_status", "pg_sleep", "pg_sleep_for",
	"pg_sleep_until", "pg_stat_clear_snapshot", "pg_stat_file",
	"pg_stat_force_next_flush", "pg_stat_get_recovery_prefetch",
	"pg_stat_get_xact_blocks_fetched", "pg_stat_get_xact_blocks_hit",
	"pg_stat_get_xact_function_calls", "pg_stat_get_xact_function_self_time",
	"pg_stat_get_xact_function_total_time", "pg_stat_get_xact_numscans",
	"pg_stat_get_xact_tuples_deleted", "pg_stat_get_xact_tuples_fetched",
	"pg_stat_get_xact_tuples_hot_updated", "pg_stat_get_xact_tuples_inserted",
	"pg_stat_get_xact_tuples_returned", "pg_stat_get_xact_tuples_updated",
	"pg_stat_have_stats", "pg_table_size", "pg_tablespace_size",
	"pg_total_relation_size", "pg_xact_commit_timestamp",
	"pg_xact_commit_timestamp_origin", "pg_xact_status", "random",
	"random_normal", "timeofday", "txid_status",
)

// writeBuiltins must run on the primary whatever their volatility says:
// they assign a transaction id (txid_current, pg_current_xact_id), write,
// signal, or fail during recovery (pg_walfile_name).
var writeBuiltins = setOf(
	"currval", "lastval", "loread", "lowrite", "nextval", "pg_notify",
	"pg_current_xact_id", "pg_current_xact_id_if_assigned",
	"pg_log_standby_snapshot", "pg_sync_replication_slots",
	"pg_walfile_name", "pg_walfile_name_offset", "set_config", "setseed",
	"setval", "txid_current", "txid_current_if_assigned",
)

// writePrefixes name families of built-in functions that write or take
// locks, including members newer than the embedded list.
var writePrefixes = []string{"lo_", "pg_advisory_", "pg_try_advisory_"}

// sessionBuiltins leave state in the session beyond the transaction: a
// session-level advisory lock, a setting, the random seed, a backup.
var sessionBuiltins = setOf(
	"pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_unlock",
	"pg_advisory_unlock_all", "pg_advisory_unlock_shared",
	"pg_backup_start", "pg_backup_stop", "pg_replication_origin_session_reset",
	"pg_replication_origin_session_setup", "pg_try_advisory_lock",
	"pg_try_advisory_lock_shared", "set_config", "setseed",
)

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// funcVerdict is what a call of one function means for routing.
type funcVerdict struct {
	write   bool
	reason  string // set when write
	session bool   // the call leaves session state behind
	catalog bool   // the verdict came from the Volatility hook (or its absence)
}

// function decides a call of the function named by a FuncCall's funcname
// list (name, schema.name or catalog.schema.name). In order: the
// configured lists (write first), temporary functions, the built-ins
// (unqualified or pg_catalog), then the Volatility hook; a function none
// of these knows is a write.
func (c *Classifier) function(funcname []*pg_query.Node) funcVerdict {
	var schema, name string
	switch len(funcname) {
	case 0:
		return funcVerdict{write: true, reason: "unknown_function"}
	case 1:
		name = stringNode(funcname[0])
	default:
		schema = stringNode(funcname[len(funcname)-2])
		name = stringNode(funcname[len(funcname)-1])
	}
	lower := strings.ToLower(name)
	qualified := lower
	if schema != "" {
		qualified = strings.ToLower(schema) + "." + lower
	}
	if c.writeFuncs[qualified] || c.writeFuncs[lower] {
		return funcVerdict{write: true, reason: "write_function:" + lower}
	}
	if c.readFuncs[qualified] || c.readFuncs[lower] {
		return funcVerdict{}
	}
	if isTempSchema(schema) {
		return funcVerdict{write: true, reason: "temp_function:" + lower, session: true}
	}
	if schema == "" || schema == "pg_catalog" {
		if v, known := builtinVerdict(lower); known {
			return v
		}
	}
	v := funcVerdict{catalog: true}
	vol, ok := byte(0), false
	if c.volatility != nil {
		if schema != "" {
			vol, ok = c.volatility(qualified)
		}
		if !ok {
			vol, ok = c.volatility(lower)
		}
	}
	switch {
	case !ok:
		v.write, v.reason = true, "unknown_function:"+lower
	case vol != 'i' && vol != 's':
		v.write, v.reason = true, "volatile_function:"+lower
	}
	return v
}

// builtinVerdict decides a call of a pg_catalog function by name; known
// is false for a name that is not built in.
func builtinVerdict(name string) (v funcVerdict, known bool) {
	v.session = sessionBuiltins[name]
	if writeBuiltins[name] {
		v.write, v.reason = true, "volatile_function:"+name
		return v, true
	}
	for _, p := range writePrefixes {
		if strings.HasPrefix(name, p) {
			v.write, v.reason = true, "volatile_function:"+name
			return v, true
		}
	}
	vol, ok := builtins()[name]
	if !ok {
		return funcVerdict{}, false
	}
	if vol == 'v' && !volatileReadOnly[name] {
		v.write, v.reason = true, "volatile_function:"+name
	}
	return v, true
}

// isTempSchema reports whether a schema name is the session's temporary
// schema: pg_temp, or its real name pg_temp_N.
func isTempSchema(schema string) bool {
	return schema == "pg_temp" || strings.HasPrefix(schema, "pg_temp_")
}

func stringNode(n *pg_query.Node) string {
	if s := n.GetString_(); s != nil {
		return s.Sval
	}
	return ""
}
