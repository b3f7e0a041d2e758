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

// verbatimMark starts a desired value that is SQL text from the client's
// own SET (`a, "B"`, `'5s'`), applied as written, not quoted as a startup
// parameter's value is. No value from the protocol holds a NUL.
const verbatimMark = "\x00"

// settingChange is a SET or RESET of an unreported setting waiting for
// the server's answer.
type settingChange struct {
	name  string // lower case
	value string // verbatimMark and the SQL text; "" for RESET
}

// untrackable are settings whose SET keeps pinning: they change who the
// session is, or belong to a transaction.
var untrackable = map[string]bool{
	"role": true, "session_authorization": true, "seed": true,
	"transaction_isolation": true, "transaction_read_only": true, "transaction_deferrable": true,
}

// trackableSet reads q as one SET or RESET of an unreported setting that
// the proxy can carry: SET [SESSION] name {= | TO} value, SET name TO
// DEFAULT, RESET name. The name must be a plain identifier (with dots for
// custom settings); the value plain SQL without comments, dollar quotes
// or backslashes, so that it can be written again after other statements.
func trackableSet(q string) (settingChange, bool) {
	w, i := word(q, skipBlanks(q, 0, false))
	reset := strings.EqualFold(w, "reset")
	if !reset && !strings.EqualFold(w, "set") {
		return settingChange{}, false
	}
	i = skipBlanks(q, i, false)
	if w2, j := word(q, i); !reset && strings.EqualFold(w2, "session") {
		i = skipBlanks(q, j, false)
	}
	start := i
	for i < len(q) && (q[i] == '.' || isIdentByte(q[i])) {
		i++
	}
	name := strings.ToLower(q[start:i])
	if name == "" || name == "all" || reportedParams[name] || untrackable[name] {
		return settingChange{}, false
	}
	change := settingChange{name: strings.Clone(name)} // q is the client's buffer
	i = skipBlanks(q, i, false)
	if !reset {
		if i < len(q) && q[i] == '=' {
			i++
		} else if w3, j := word(q, i); strings.EqualFold(w3, "to") {
			i = j
		} else {
			return settingChange{}, false // FROM CURRENT, or not a SET of a value
		}
		if strings.IndexByte(q[i:], '\\') >= 0 {
			// A backslash may escape a quote (E'...', or any string with
			// standard_conforming_strings off), which the scan below
			// would not see: where the statement ends is then unsure.
			return settingChange{}, false
		}
		i = skipBlanks(q, i, false)
		vstart := i
		for i < len(q) && q[i] != ';' {
			switch c := q[i]; {
			case c == '\'' || c == '"':
				i = skipQuoted(q, i, c)
			case c == '$', c == '-' && i+1 < len(q) && q[i+1] == '-', c == '/' && i+1 < len(q) && q[i+1] == '*':
				return settingChange{}, false
			default:
				i++
			}
		}
		value := strings.TrimRight(q[vstart:i], " \t\r\n\f")
		if value == "" {
			return settingChange{}, false
		}
		if !strings.EqualFold(value, "default") {
			change.value = verbatimMark + value
		}
	}
	for ; i < len(q); i++ {
		if i = skipBlanks(q, i, false); i < len(q) && q[i] != ';' {
			return settingChange{}, false // a second statement
		}
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
