package classify

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// cursorOptHold is CURSOR_OPT_HOLD in DeclareCursorStmt.options.
const cursorOptHold = 0x0020

// deps records what a classification depended on besides the statement's
// shape, which decides how it may be cached.
type deps struct {
	// literal: the result depends on the value of a literal constant
	// (SET pgrouter.route = 'standby', EXPLAIN (ANALYZE 0)), so it must
	// not be shared between texts that differ only in constants.
	literal bool
	// catalog: the result depends on the Volatility hook, so it is stale
	// after InvalidateFunctions.
	catalog bool
}

// facts are what a walk over a statement's whole parse tree found.
type facts struct {
	dml      bool   // an INSERT, UPDATE, DELETE or MERGE inside (a writing CTE)
	into     bool   // SELECT ... INTO
	lock     bool   // a locking clause (FOR UPDATE, FOR SHARE, ...)
	lockKind string // "for_update" or "for_share"
	temp     bool   // a temporary relation or function
	fnWrite  string // reason of the first call that writes
	fnSess   bool   // a call leaves session state behind
}

// walk visits every message under m, whatever its type: the parse tree
// has hundreds of node types and a function call may sit in any
// expression (select list, WHERE, FROM, CTEs, subqueries, defaults).
func (c *Classifier) walk(m protoreflect.Message, f *facts, d *deps) {
	switch x := m.Interface().(type) {
	case *pg_query.FuncCall:
		v := c.function(x.Funcname)
		d.catalog = d.catalog || v.catalog
		f.fnSess = f.fnSess || v.session
		if v.write && f.fnWrite == "" {
			f.fnWrite = v.reason
		}
	case *pg_query.RangeVar:
		if x.Relpersistence == "t" || isTempSchema(x.Schemaname) {
			f.temp = true
		}
	case *pg_query.LockingClause:
		f.lock = true
		if f.lockKind != "for_update" {
			f.lockKind = "for_share"
			if x.Strength == pg_query.LockClauseStrength_LCS_FORUPDATE ||
				x.Strength == pg_query.LockClauseStrength_LCS_FORNOKEYUPDATE {
				f.lockKind = "for_update"
			}
		}
	case *pg_query.IntoClause:
		f.into = true
	case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
		f.dml = true
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind:
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				c.walk(l.Get(i).Message(), f, d)
			}
		case fd.IsMap():
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					c.walk(mv.Message(), f, d)
				}
				return true
			})
		default:
			c.walk(v.Message(), f, d)
		}
		return true
	})
}

func (c *Classifier) factsOf(n *pg_query.Node, d *deps) facts {
	var f facts
	if n != nil {
		c.walk(n.ProtoReflect(), &f, d)
	}
	return f
}

// statement classifies one statement of a parse tree.
func (c *Classifier) statement(n *pg_query.Node, d *deps) Result {
	switch s := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		return c.query(n, d)
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		f := c.factsOf(n, d)
		return Result{Route: Write, Reason: nodeReason(n), SessionWrite: f.fnSess || f.temp}
	case *pg_query.Node_ExplainStmt:
		return c.explain(s.ExplainStmt, d)
	case *pg_query.Node_CopyStmt:
		return c.copy(s.CopyStmt, d)
	case *pg_query.Node_DeclareCursorStmt:
		r := c.statement(s.DeclareCursorStmt.Query, d)
		if r.Route == Read {
			r.Reason = "declare"
		}
		if s.DeclareCursorStmt.Options&cursorOptHold != 0 {
			r.SessionWrite = true
		}
		return r
	case *pg_query.Node_CallStmt:
		f := c.factsOf(n, d)
		r := Result{Route: Read, Reason: "call", SessionWrite: f.fnSess || f.temp}
		if f.fnWrite != "" {
			r.Route, r.Reason = Write, f.fnWrite
		}
		return r
	case *pg_query.Node_TransactionStmt:
		return transaction(s.TransactionStmt)
	case *pg_query.Node_VariableSetStmt:
		return set(s.VariableSetStmt, d)
	case *pg_query.Node_VariableShowStmt:
		return Result{Route: Read, Reason: "show"}
	case *pg_query.Node_FetchStmt:
		return Result{Route: Read, Reason: "fetch"}
	case *pg_query.Node_ClosePortalStmt:
		return Result{Route: Read, Reason: "close"}
	case *pg_query.Node_ConstraintsSetStmt:
		return Result{Route: Read, Reason: "set_constraints"}
	case *pg_query.Node_DiscardStmt:
		r := Result{Route: Read, Reason: "discard", SessionWrite: true}
		if s.DiscardStmt.Target == pg_query.DiscardMode_DISCARD_ALL {
			r.SetRoute = "auto"
		}
		return r
	case *pg_query.Node_ListenStmt, *pg_query.Node_UnlistenStmt, *pg_query.Node_LoadStmt,
		*pg_query.Node_PrepareStmt, *pg_query.Node_DeallocateStmt:
		return Result{Route: Write, Reason: nodeReason(n), SessionWrite: true}
	case *pg_query.Node_CreateFunctionStmt:
		r := Result{Route: Write, Reason: "create_function"}
		if fn := s.CreateFunctionStmt.Funcname; len(fn) > 1 && isTempSchema(stringNode(fn[len(fn)-2])) {
			r.Reason, r.SessionWrite = "temp_function", true
		}
		return r
	case nil:
		return Result{Route: Write, Reason: "unparsable"}
	default:
		// Everything else writes, or must run where the session's writes
		// run: DDL, NOTIFY, EXECUTE, DO, LOCK, VACUUM, CHECKPOINT, ...
		r := Result{Route: Write, Reason: nodeReason(n)}
		if f := c.factsOf(n, d); f.temp {
			r.Reason, r.SessionWrite = "temp_table", true
		}
		return r
	}
}

// query classifies a SELECT (or VALUES, TABLE) by everything inside it.
func (c *Classifier) query(n *pg_query.Node, d *deps) Result {
	f := c.factsOf(n, d)
	r := Result{Route: Write, SessionWrite: f.fnSess || f.temp}
	switch {
	case f.dml:
		r.Reason = "writes_cte"
	case f.into:
		r.Reason = "select_into"
	case f.lock:
		r.Reason = f.lockKind
	case f.temp:
		r.Reason = "temp_table"
	case f.fnWrite != "":
		r.Reason = f.fnWrite
	default:
		r.Route, r.Reason = Read, "select"
		if s := n.GetSelectStmt(); s != nil && len(s.ValuesLists) > 0 {
			r.Reason = "values"
		}
	}
	return r
}

// explain: EXPLAIN only plans, so it reads, unless the plan needs what
// only the primary has (a temporary table, a prepared statement). EXPLAIN
// ANALYZE runs the statement, so it routes as the statement does.
func (c *Classifier) explain(s *pg_query.ExplainStmt, d *deps) Result {
	analyze := false
	for _, o := range s.Options {
		de := o.GetDefElem()
		if de == nil || de.Defname != "analyze" {
			continue
		}
		if de.Arg != nil {
			d.literal = true
		}
		// An option value that is not a clear "false" counts as true:
		// the server rejects it, and the primary is the safe place.
		b, ok := defBool(de.Arg)
		analyze = !ok || b
	}
	if analyze {
		r := c.statement(s.Query, d)
		if r.Route == Read {
			r.Reason = "explain_analyze"
		}
		return r
	}
	if _, ok := s.Query.GetNode().(*pg_query.Node_ExecuteStmt); ok {
		return Result{Route: Write, Reason: "execute"}
	}
	if f := c.factsOf(s.Query, d); f.temp {
		return Result{Route: Write, Reason: "temp_table"}
	}
	return Result{Route: Read, Reason: "explain"}
}

// copy: COPY FROM writes; COPY TO a server file or program has a side
// effect on the server, which belongs to the primary; COPY TO STDOUT
// reads, as its query does.
func (c *Classifier) copy(s *pg_query.CopyStmt, d *deps) Result {
	switch {
	case s.IsFrom:
		return Result{Route: Write, Reason: "copy_from"}
	case s.IsProgram || s.Filename != "":
		return Result{Route: Write, Reason: "copy_to_file"}
	case s.Query != nil:
		r := c.statement(s.Query, d)
		if r.Route == Read {
			r.Reason = "copy_to"
		}
		return r
	case s.Relation != nil && (s.Relation.Relpersistence == "t" || isTempSchema(s.Relation.Schemaname)):
		return Result{Route: Write, Reason: "temp_table", SessionWrite: true}
	}
	return Result{Route: Read, Reason: "copy_to"}
}

// txOptions reads BEGIN and SET TRANSACTION options.
type txOptions struct {
	readOnly, readWrite, serializable bool
}

func transactionOptions(opts []*pg_query.Node) txOptions {
	var o txOptions
	for _, n := range opts {
		de := n.GetDefElem()
		if de == nil {
			continue
		}
		switch de.Defname {
		case "transaction_read_only":
			b, ok := defBool(de.Arg)
			o.readOnly = ok && b
			o.readWrite = ok && !b
		case "transaction_isolation":
			o.serializable = strings.EqualFold(constString(de.Arg), "serializable")
		}
	}
	return o
}

// transaction classifies transaction control. BEGIN routes where the
// transaction belongs: a read-write one on the primary, a read-only one
// on a standby, except a SERIALIZABLE one, which hot standbys refuse.
func transaction(s *pg_query.TransactionStmt) Result {
	switch s.Kind {
	case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN, pg_query.TransactionStmtKind_TRANS_STMT_START:
		o := transactionOptions(s.Options)
		switch {
		case o.serializable:
			return Result{Route: Write, Reason: "serializable", Begin: true}
		case o.readOnly:
			return Result{Route: Read, Reason: "begin_read_only", Begin: true, BeginReadOnly: true}
		}
		return Result{Route: Write, Reason: "begin", Begin: true}
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT:
		return Result{Route: Read, Reason: "commit", End: true, Begin: s.Chain}
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
		return Result{Route: Read, Reason: "rollback", End: true, Begin: s.Chain}
	case pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
		return Result{Route: Read, Reason: "savepoint"}
	case pg_query.TransactionStmtKind_TRANS_STMT_RELEASE:
		return Result{Route: Read, Reason: "release"}
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		return Result{Route: Read, Reason: "rollback_to"}
	case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
		return Result{Route: Write, Reason: "prepare_transaction", End: true}
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
		return Result{Route: Write, Reason: "commit_prepared"}
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		return Result{Route: Write, Reason: "rollback_prepared"}
	}
	return Result{Route: Write, Reason: "transaction"}
}

// set classifies SET and RESET: pgrouter.route for the proxy, the
// transaction's own characteristics, and settings of the session.
func set(s *pg_query.VariableSetStmt, d *deps) Result {
	name := strings.ToLower(s.Name)
	if s.Kind == pg_query.VariableSetKind_VAR_SET_MULTI {
		switch name {
		case "transaction":
			return setTransaction(transactionOptions(s.Args))
		case "session characteristics":
			return Result{Route: Read, Reason: "set_session_characteristics", SessionWrite: true}
		}
		return Result{Route: Write, Reason: "set_transaction_snapshot"}
	}
	reset := s.Kind == pg_query.VariableSetKind_VAR_RESET || s.Kind == pg_query.VariableSetKind_VAR_RESET_ALL ||
		s.Kind == pg_query.VariableSetKind_VAR_SET_DEFAULT
	switch {
	case s.Kind == pg_query.VariableSetKind_VAR_RESET_ALL:
		return Result{Route: Read, Reason: "reset", SessionWrite: true, SetRoute: "auto"}
	case name == "pgrouter.route":
		d.literal = true
		if reset {
			return Result{Route: Read, Reason: "set_route", SetRoute: "auto"}
		}
		if len(s.Args) == 1 {
			if v := routeValue(constString(s.Args[0])); v != "" {
				return Result{Route: Read, Reason: "set_route", SetRoute: v}
			}
		}
		return Result{Route: Write, Reason: "set_route_invalid"}
	case name == "transaction_read_only" && !reset && len(s.Args) == 1:
		d.literal = true
		b, ok := defBool(s.Args[0])
		return setTransaction(txOptions{readOnly: ok && b, readWrite: !ok || !b})
	case name == "transaction_isolation" && !reset && len(s.Args) == 1:
		d.literal = true
		return setTransaction(txOptions{serializable: strings.EqualFold(constString(s.Args[0]), "serializable")})
	case s.IsLocal:
		return Result{Route: Read, Reason: "set_local"}
	case reset:
		return Result{Route: Read, Reason: "reset", SessionWrite: true}
	}
	return Result{Route: Read, Reason: "set", SessionWrite: true}
}

// setTransaction: SET TRANSACTION inside an open transaction. READ ONLY
// reports BeginReadOnly; READ WRITE and SERIALIZABLE need the primary.
func setTransaction(o txOptions) Result {
	switch {
	case o.serializable:
		return Result{Route: Write, Reason: "serializable"}
	case o.readOnly:
		return Result{Route: Read, Reason: "set_transaction_read_only", BeginReadOnly: true}
	case o.readWrite:
		return Result{Route: Write, Reason: "set_transaction_read_write"}
	}
	return Result{Route: Read, Reason: "set_transaction"}
}

func routeValue(v string) string {
	switch strings.ToLower(v) {
	case "primary":
		return "primary"
	case "standby":
		return "standby"
	case "auto":
		return "auto"
	}
	return ""
}

// defBool reads a boolean option value the way the server's
// defGetBoolean does; a missing value means true. ok is false for a value
// that is not a boolean.
func defBool(n *pg_query.Node) (b, ok bool) {
	if n == nil {
		return true, true
	}
	ival := n.GetInteger()
	if a := n.GetAConst(); a != nil {
		ival = a.GetIval()
		if b := a.GetBoolval(); b != nil {
			return b.Boolval, true
		}
	}
	if b := n.GetBoolean(); b != nil {
		return b.Boolval, true
	}
	if ival != nil {
		switch ival.Ival {
		case 0:
			return false, true
		case 1:
			return true, true
		}
		return false, false
	}
	switch strings.ToLower(constString(n)) {
	case "true", "on":
		return true, true
	case "false", "off":
		return false, true
	}
	return false, false
}

// constString is the text of a string constant or bare word, "" for
// anything else.
func constString(n *pg_query.Node) string {
	if n == nil {
		return ""
	}
	if a := n.GetAConst(); a != nil {
		if s := a.GetSval(); s != nil {
			return s.Sval
		}
		if b := a.GetBoolval(); b != nil {
			if b.Boolval {
				return "true"
			}
			return "false"
		}
		return ""
	}
	return stringNode(n)
}

// nodeReason names a statement by its parse node: "insert" for
// InsertStmt, "create_table_as" for CreateTableAsStmt. The names are the
// descriptor's, so this allocates nothing.
func nodeReason(n *pg_query.Node) string {
	m := n.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("node"))
	if fd == nil {
		return "unknown"
	}
	return strings.TrimSuffix(string(fd.Name()), "_stmt")
}
