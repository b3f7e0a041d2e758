package proxy

import (
	"strings"

	"github.com/pgrouter/pgrouter/proxy/pool"
)

// Settings the server does not report. A SET of search_path,
// statement_timeout and the like changes the server the client holds and
// says nothing in ParameterStatus, so the proxy cannot learn the value
// from the server. When the client sends it alone, between transactions,
// the proxy reads it from the statement instead: once the server has
// accepted it (ReadyForQuery with no error), the setting joins the
// client's desired settings and is applied on every server the client is
// lent, as startup parameters are. Anything else that sets an unreported
// setting pins the client (pinUntrackedSet).

// settingChange is a SET or RESET of an unreported setting waiting for
// the server's answer.
type settingChange struct {
	name  string // lower case
	value string // the SQL text, as the client wrote it; "" for RESET
}

// untrackable are settings whose SET keeps pinning: they change who the
// session is, or belong to a transaction.
var untrackable = map[string]bool{
	"role": true, "session_authorization": true, "seed": true,
	"transaction_isolation": true, "transaction_read_only": true, "transaction_deferrable": true,
}

// setStmt is a SET or RESET of one setting, read in place by parseSet.
type setStmt struct {
	name  string // as written
	value string // the value's SQL text, blanks trimmed; "" for RESET
	reset bool
	end   int  // where the statement ends: at its ';', or the end of the text
	plain bool // the value holds no comment, dollar quote or backslash
}

// parseSet reads the statement at the start of q as SET [SESSION] name
// {= | TO} value or RESET name, the name a plain identifier (with dots
// for custom settings), without copying anything of q.
func parseSet(q string) (setStmt, bool) {
	var st setStmt
	w, i := word(q, skipBlanks(q, 0, false))
	st.reset = strings.EqualFold(w, "reset")
	if !st.reset && !strings.EqualFold(w, "set") {
		return st, false
	}
	i = skipBlanks(q, i, false)
	if w2, j := word(q, i); !st.reset && strings.EqualFold(w2, "session") {
		i = skipBlanks(q, j, false)
	}
	start := i
	for i < len(q) && (q[i] == '.' || isIdentByte(q[i])) {
		i++
	}
	if st.name = q[start:i]; st.name == "" {
		return st, false
	}
	i = skipBlanks(q, i, false)
	st.plain = true
	if !st.reset {
		if i < len(q) && q[i] == '=' {
			i++
		} else if w3, j := word(q, i); strings.EqualFold(w3, "to") {
			i = j
		} else {
			return st, false // FROM CURRENT, or not a SET of a value
		}
		i = skipBlanks(q, i, false)
		vstart := i
		for i < len(q) && q[i] != ';' {
			switch c := q[i]; {
			case c == '\'' || c == '"':
				i = skipQuoted(q, i, c)
			case c == '$', c == '\\', c == '-' && i+1 < len(q) && q[i+1] == '-', c == '/' && i+1 < len(q) && q[i+1] == '*':
				st.plain = false
				i++
			default:
				i++
			}
		}
		st.value = strings.TrimRight(q[vstart:i], " \t\r\n\f")
		// A backslash may escape a quote (E'...', or any string with
		// standard_conforming_strings off) where the scan above would not
		// see it: where the statement ends is then unsure.
		st.plain = st.plain && strings.IndexByte(st.value, '\\') < 0
	}
	st.end = i
	return st, true
}

// trackableSet reads q as one SET or RESET of an unreported setting that
// the proxy can carry: SET [SESSION] name {= | TO} value, SET name TO
// DEFAULT, RESET name. The value must be plain SQL (parseSet), so that it
// can be written again after other statements, and nothing may follow it.
func trackableSet(q string) (settingChange, bool) {
	st, ok := parseSet(q)
	if !ok || !st.plain || (!st.reset && st.value == "") {
		return settingChange{}, false
	}
	name := strings.ToLower(st.name)
	if name == "all" || reportedParams[name] || untrackable[name] {
		return settingChange{}, false
	}
	for i := st.end; i < len(q); i++ {
		if i = skipBlanks(q, i, false); i < len(q) && q[i] != ';' {
			return settingChange{}, false // a second statement
		}
	}
	change := settingChange{name: strings.Clone(name)} // q is the client's buffer
	if !st.reset && !strings.EqualFold(st.value, "default") {
		change.value = strings.Clone(st.value)
	}
	return change, true
}

// trackSet decides, for a client's simple query that would pin it for an
// unreported setting, whether the proxy can carry the setting instead; it
// keeps the change until the server answers. Only between transactions,
// with nothing else in flight: inside a transaction the SET would be
// undone by a rollback. mu held.
func (ps *pooled) trackSet(q string) bool {
	if ps.mode != PoolTransaction || ps.pendingSet != nil || !ps.quietLocked() {
		return false
	}
	change, ok := trackableSet(q)
	if !ok {
		return false
	}
	ps.pendingSet = &change
	return true
}

// settleSet records the pending change once the server has run it: ok is
// false when it answered with an error, or the change ended inside a
// transaction. sc is the server it ran on. mu held.
func (ps *pooled) settleSet(sc *pool.ServerConn, ok bool) {
	change := ps.pendingSet
	ps.pendingSet = nil
	if change == nil || !ok {
		return
	}
	ps.settingChanging()
	matches := true // whether sc has the client's settings afterwards
	if change.value != "" {
		ps.desired[change.name] = change.value
		sc.Applied[change.name] = change.value
	} else {
		// RESET: the server is back to its own default; the client to
		// the value it logged in with, if it gave one.
		delete(sc.Applied, change.name)
		if v, ok := ps.started[change.name]; ok {
			ps.desired[change.name] = v
			matches = false
		} else {
			delete(ps.desired, change.name)
		}
	}
	ps.desiredFP = settingsFingerprint(ps.desired)
	sc.SettingsFP = 0
	if matches {
		sc.SettingsFP = ps.desiredFP
	}
}
