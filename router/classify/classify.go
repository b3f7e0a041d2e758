// Package classify decides, statement by statement, whether a query may
// run on a hot standby or must run on the primary, and reports the
// transaction control and session state the proxy must follow. It parses
// with PostgreSQL's own grammar (pg_query) and caches what it decides, so
// the hot path does not parse a statement it has seen. It does no I/O.
//
// What it cannot see, it cannot route: a function called through a view,
// an operator, a cast or a trigger, or a temporary table named without
// pg_temp (the proxy pins the session that created one, as SessionWrite
// reports). A standby refuses such a write with SQLSTATE 25006, and the
// proxy runs it again on the primary. A text that does not parse goes to
// the primary; so does a literal that is not UTF-8 (the parse tree holds
// only UTF-8), as from a client_encoding such as LATIN1.
//
// Cache keys are 64-bit hashes with a per-process random seed, of the
// normalized text (Classify) or of the exact text (ClassifyParse); the
// texts themselves are not kept.
package classify

import (
	"hash/maphash"
	"strings"
	"sync/atomic"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Route says where a statement may run.
type Route uint8

const (
	// Read statements may run on a standby.
	Read Route = iota
	// Write statements must run on the primary.
	Write
)

// String returns "read" or "write".
func (r Route) String() string {
	if r == Read {
		return "read"
	}
	return "write"
}

// Result is the classification of one query text.
//
// For a text of several statements (simple protocol), Route is Write when
// any statement needs the primary; Begin reports that the text leaves
// open a transaction it began (BEGIN; INSERT ...), End that it ends a
// transaction open before it (COMMIT; SELECT ...); BEGIN; ...; COMMIT
// sets neither. SessionWrite is set when any statement sets it, and
// SetRoute is the last SET pgrouter.route.
type Result struct {
	Route Route
	// Reason is short, for logs and metrics: "select", "insert",
	// "for_update", "writes_cte", "select_into",
	// "volatile_function:nextval", "unknown_function:f", "temp_table",
	// "listen", "multi_statement_write", "unparsable", "hint", ...
	Reason string

	// Begin: BEGIN or START TRANSACTION (also COMMIT AND CHAIN, with
	// End). Its Route is where the transaction belongs: Write for a
	// read-write one, Read for READ ONLY.
	Begin bool
	// BeginReadOnly: the transaction begun, or the one open (SET
	// TRANSACTION READ ONLY), is read-only. It is false for SERIALIZABLE,
	// which hot standbys refuse.
	BeginReadOnly bool
	// End: COMMIT, ROLLBACK, END, ABORT and PREPARE TRANSACTION, which
	// is also a write. Not ROLLBACK TO SAVEPOINT.
	End bool
	// SetRoute is "primary", "standby" or "auto" for SET pgrouter.route
	// ("auto" for RESET, RESET ALL and DISCARD ALL); "" otherwise.
	SetRoute string
	// Hint is "primary" or "standby" from a leading /* pgrouter:primary */
	// or /* pgrouter:standby */ comment; it decides Route (Reason "hint").
	// A text that does not parse takes no hint: it goes to the primary.
	Hint string
	// SessionWrite: the statement changes session state that the proxy
	// must carry to other servers or pin the session for: SET of a
	// setting, RESET, DISCARD, PREPARE, DEALLOCATE, DECLARE ... WITH
	// HOLD, LISTEN, LOAD, a temporary table or function, a session-level
	// advisory lock, set_config. It reports; the proxy decides.
	SessionWrite bool
}

// Config configures a Classifier. The zero value works: built-in
// functions are known, and every other function goes to the primary.
type Config struct {
	// ReadOnlyFunctions are always safe on a standby
	// (--read-only-functions), by name or schema.name, in any case.
	ReadOnlyFunctions []string
	// WriteFunctions always go to the primary (--write-functions); they
	// win over ReadOnlyFunctions.
	WriteFunctions []string
	// Volatility returns the volatility ('i', 's' or 'v') of a function
	// that is not built in, as pg_proc.provolatile says, by lower-case
	// name: asked first for "schema.name" when the call is qualified,
	// then for "name". A volatile function goes to the primary. It is
	// not asked about pg_catalog's functions, which the classifier knows
	// (a volatile built-in such as random() or pg_is_in_recovery() is
	// safe on a standby). Nil treats every function that is not built in
	// as a write. It must be safe for concurrent use; after its answers
	// change, call InvalidateFunctions.
	Volatility func(name string) (byte, bool)
	// CacheSize bounds the cached classifications; 0 means 10000, a
	// negative size disables the cache.
	CacheSize int
}

// Classifier classifies query texts. It is safe for concurrent use.
type Classifier struct {
	readFuncs, writeFuncs map[string]bool
	volatility            func(string) (byte, bool)
	normSeed, exactSeed   maphash.Seed
	gen                   atomic.Uint64 // function generation, from 1
	cache                 *cache        // nil: no caching
}

// New returns a Classifier for cfg.
func New(cfg Config) *Classifier {
	c := &Classifier{
		readFuncs:  lowerSet(cfg.ReadOnlyFunctions),
		writeFuncs: lowerSet(cfg.WriteFunctions),
		volatility: cfg.Volatility,
		normSeed:   maphash.MakeSeed(),
		exactSeed:  maphash.MakeSeed(),
	}
	c.gen.Store(1)
	switch {
	case cfg.CacheSize == 0:
		c.cache = newCache(10000)
	case cfg.CacheSize > 0:
		c.cache = newCache(cfg.CacheSize)
	}
	return c
}

func lowerSet(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[strings.ToLower(strings.TrimSpace(n))] = true
	}
	return m
}

// Classify classifies a simple-protocol query text, which may hold
// several statements. Texts that differ only in constants share a cache
// entry, so a statement seen before with other constants costs a lexical
// scan and no parse, and allocates nothing.
func (c *Classifier) Classify(query string) Result {
	query = cutNUL(query)
	hint := leadingHint(query)
	if c.cache == nil {
		res, _ := c.classify(query)
		return withHint(res, hint)
	}
	key, normalized := normalizedKey(c.normSeed, query)
	if !normalized {
		key = maphash.String(c.exactSeed, query)
	}
	e, ok := c.lookup(key)
	if ok && !e.exactOnly {
		return withHint(e.res, hint)
	}
	if ok {
		// The statement depends on a literal: the exact text decides.
		return withHint(c.exact(query), hint)
	}
	gen := c.gen.Load()
	res, d := c.classify(query)
	switch {
	case d.literal && normalized:
		c.cache.put(key, entry{exactOnly: true})
		c.cache.put(maphash.String(c.exactSeed, query), newEntry(res, d, gen))
	default:
		c.cache.put(key, newEntry(res, d, gen))
	}
	return withHint(res, hint)
}

// ClassifyParse classifies the query text of an extended-protocol Parse
// message, a single statement, cached by its exact text.
func (c *Classifier) ClassifyParse(query string) Result {
	query = cutNUL(query)
	hint := leadingHint(query)
	if c.cache == nil {
		res, _ := c.classify(query)
		return withHint(res, hint)
	}
	return withHint(c.exact(query), hint)
}

// exact returns the classification of a text cached under its exact key.
func (c *Classifier) exact(query string) Result {
	key := maphash.String(c.exactSeed, query)
	if e, ok := c.lookup(key); ok && !e.exactOnly {
		return e.res
	}
	gen := c.gen.Load()
	res, d := c.classify(query)
	c.cache.put(key, newEntry(res, d, gen))
	return res
}

// InvalidateFunctions drops the cached results that depended on the
// Volatility hook, after the proxy reloads pg_proc.
func (c *Classifier) InvalidateFunctions() {
	c.gen.Add(1)
}

func (c *Classifier) lookup(key uint64) (entry, bool) {
	e, ok := c.cache.get(key)
	if ok && e.gen != 0 && e.gen != c.gen.Load() {
		return entry{}, false
	}
	return e, ok
}

func newEntry(res Result, d deps, gen uint64) entry {
	e := entry{res: res}
	if d.catalog {
		e.gen = gen
	}
	return e
}

// withHint lets a leading hint comment decide the route, except for a
// text that does not parse, which always goes to the primary: there the
// hint is ignored and not reported.
func withHint(r Result, hint string) Result {
	if r.Reason == "unparsable" || r.Reason == "set_route_unquoted" {
		return r
	}
	switch hint {
	case "primary":
		r.Route, r.Reason, r.Hint = Write, "hint", hint
	case "standby":
		r.Route, r.Reason, r.Hint = Read, "hint", hint
	}
	return r
}

// cutNUL cuts the text at a NUL byte, where the server stops reading it.
func cutNUL(q string) string {
	if i := strings.IndexByte(q, 0); i >= 0 {
		return q[:i]
	}
	return q
}

// classify parses the text and classifies it, with no cache. The text is
// copied first: callers may pass a view of a buffer they reuse (the
// proxy's split classifies statements where they lie in its read buffer),
// and what a miss computes (a SET's value, for one) outlives the call in
// the cache. A hit reads the text only during the call.
func (c *Classifier) classify(query string) (Result, deps) {
	query = strings.Clone(query)
	var d deps
	tree, err := pg_query.Parse(query)
	if err != nil {
		if v, ok := unquotedRoute(query); ok {
			// Still a write: no server accepts this text.
			return Result{Route: Write, Reason: "set_route_unquoted", SetRoute: v}, d
		}
		return Result{Route: Write, Reason: "unparsable"}, d
	}
	if len(tree.Stmts) == 0 {
		return Result{Route: Read, Reason: "empty"}, d
	}
	if len(tree.Stmts) == 1 {
		return c.statement(tree.Stmts[0].GetStmt(), &d), d
	}
	return c.multi(tree.Stmts, &d), d
}

// multi combines the statements of one simple-protocol text, following
// the transaction state through them. A plain BEGIN makes the text a
// write only if its transaction stays read-write: BEGIN; SET TRANSACTION
// READ ONLY; SELECT ... reads.
func (c *Classifier) multi(stmts []*pg_query.RawStmt, d *deps) Result {
	out := Result{Route: Read, Reason: "multi_statement_read"}
	open := false     // a transaction this text began is still open
	readOnly := false // ... and it is read-only
	beginRW := false  // ... and it began with a plain (read-write) BEGIN
	write := func() { out.Route, out.Reason = Write, "multi_statement_write" }
	for _, s := range stmts {
		r := c.statement(s.GetStmt(), d)
		plainBegin := r.Begin && !r.End && r.Reason == "begin"
		if r.Route == Write && !plainBegin {
			write()
		}
		out.SessionWrite = out.SessionWrite || r.SessionWrite
		if r.SetRoute != "" {
			out.SetRoute = r.SetRoute
		}
		if r.End {
			if !open {
				out.End = true
			}
			if beginRW {
				write()
			}
			open, readOnly, beginRW = false, false, false
		}
		switch {
		case r.Begin:
			open, readOnly, beginRW = true, r.BeginReadOnly, plainBegin
		case r.BeginReadOnly && open:
			readOnly, beginRW = true, false
		case r.BeginReadOnly:
			out.BeginReadOnly = true // SET TRANSACTION READ ONLY in a transaction open before
		}
	}
	if beginRW {
		write()
	}
	if open {
		out.Begin, out.BeginReadOnly = true, readOnly
	}
	return out
}

// unquotedRoute recognizes SET pgrouter.route = primary written without
// quotes, which the grammar rejects because PRIMARY is a reserved word,
// so that a proxy that answers SET pgrouter.route itself can act on what
// the user meant.
func unquotedRoute(q string) (string, bool) {
	var words [8]string
	n := 0
	for i := 0; i < len(q); {
		i = skipSpaceAndComments(q, i)
		if i < 0 || i >= len(q) {
			break
		}
		j := i + 1
		if isIdentStart(q[i]) {
			for j < len(q) && isIdentCont(q[j]) {
				j++
			}
		}
		if n == len(words) {
			return "", false
		}
		words[n] = strings.ToLower(q[i:j])
		n++
		i = j
	}
	w := words[:n]
	if n > 0 && w[n-1] == ";" {
		w = w[:n-1]
	}
	if len(w) == 0 || w[0] != "set" {
		return "", false
	}
	w = w[1:]
	if len(w) > 0 && (w[0] == "session" || w[0] == "local") {
		w = w[1:]
	}
	if len(w) != 5 || w[0] != "pgrouter" || w[1] != "." || w[2] != "route" || (w[3] != "=" && w[3] != "to") {
		return "", false
	}
	v := routeValue(w[4])
	return v, v != ""
}
