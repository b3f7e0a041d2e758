package proxy

import (
	"maps"
	"strings"
)

// Session resets in transaction pooling. Sent to a shared server, DISCARD
// ALL and DEALLOCATE ALL would drop the statements the proxy prepared
// there for other clients, and RESET ALL would reset settings it cannot
// see, so each pins the client (pin.go). But drivers send them when they
// hand a connection back to their own pool (Npgsql's DISCARD ALL, by
// default, on every reuse), which would pin nearly every such client.
// Between transactions the client's whole session state is the proxy's
// (anything else would have pinned it), so the proxy answers these itself
// and resets that state.

// resetKind is which session reset a query asks for.
type resetKind uint8

const (
	resetNone       resetKind = iota
	resetDiscardAll           // DISCARD ALL: statements and settings
	resetDeallocate           // DEALLOCATE [PREPARE] ALL: statements
	resetAll                  // RESET ALL: settings
)

// tag is the command tag PostgreSQL answers with.
func (k resetKind) tag() string {
	switch k {
	case resetDiscardAll:
		return "DISCARD ALL"
	case resetDeallocate:
		return "DEALLOCATE ALL"
	}
	return "RESET"
}

// sessionReset reads a simple query's text: a single DISCARD ALL,
// DEALLOCATE [PREPARE] ALL or RESET ALL, in any case, with comments,
// spaces and semicolons around it.
func sessionReset(q string) resetKind {
	w1, n := word(q, skipSpaceAndComments(q, 0))
	var k resetKind
	switch {
	case strings.EqualFold(w1, "discard"):
		k = resetDiscardAll
	case strings.EqualFold(w1, "deallocate"):
		k = resetDeallocate
	case strings.EqualFold(w1, "reset"):
		k = resetAll
	default:
		return resetNone
	}
	w2, n := word(q, skipSpaceAndComments(q, n))
	if k == resetDeallocate && strings.EqualFold(w2, "prepare") {
		w2, n = word(q, skipSpaceAndComments(q, n))
	}
	if !strings.EqualFold(w2, "all") {
		return resetNone
	}
	for i := n; i < len(q); i++ {
		if i = skipSpaceAndComments(q, i); i < len(q) && q[i] != ';' {
			return resetNone // more than one statement: the server runs it
		}
	}
	return k
}

// canonicalNames are the settings the proxy carries (settable) as the
// server spells them in ParameterStatus.
var canonicalNames = map[string]string{
	"application_name": "application_name", "client_encoding": "client_encoding",
	"datestyle": "DateStyle", "intervalstyle": "IntervalStyle", "timezone": "TimeZone",
	"standard_conforming_strings":   "standard_conforming_strings",
	"default_transaction_read_only": "default_transaction_read_only",
}

// answerReset answers, between transactions in transaction mode, a
// simple query that resets the session (sessionReset) as the server
// would: the client's prepared statements are forgotten, its settings go
// back to those it started with (each one that changes reported with
// ParameterStatus), then CommandComplete and ReadyForQuery. It returns
// the answer and how many bytes of msgs it consumed; 0 when msgs starts
// with anything else or the session is not between transactions.
func (ps *pooled) answerReset(msgs []byte) ([]byte, int) {
	if ps.mode != PoolTransaction || len(msgs) < 6 || msgs[0] != 'Q' {
		return nil, 0
	}
	l := int(getUint32(msgs[1:5]))
	if l < 5 || len(msgs) < 1+l {
		return nil, 0
	}
	k := sessionReset(transientString(msgs[5:l])) // without the terminating NUL
	if k == resetNone {
		return nil, 0
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.server != nil || ps.pinned != "" || len(ps.fifo) > 0 || ps.dirty || (ps.txStatus != 'I' && ps.txStatus != 0) {
		return nil, 0
	}
	ps.unnamedOn = nil // a simple query replaces the unnamed statement
	if k != resetAll {
		ps.stmts = nil
	}
	resp := appendMessage(nil, 'C', append([]byte(k.tag()), 0))
	if k != resetDeallocate {
		// The split's own settings (SET pgrouter.route, pgrouter.min_lsn)
		// are reset too; the session's last write still binds its reads.
		ps.split.force, ps.split.minLSN = "", 0
	}
	if k != resetDeallocate && ps.started != nil {
		for name, want := range ps.started {
			if ps.desired[name] == want {
				continue
			}
			if canon, ok := canonicalNames[name]; ok {
				resp = appendParameterStatus(resp, canon, want)
			}
		}
		ps.desired = maps.Clone(ps.started)
		ps.desiredFP = settingsFingerprint(ps.desired)
	}
	return appendMessage(resp, 'Z', []byte{'I'}), 1 + l
}

// settingChanging keeps the settings the client started with before the
// first change to them, for answerReset. Called with mu held.
func (ps *pooled) settingChanging() {
	if ps.started == nil {
		ps.started = maps.Clone(ps.desired)
	}
}
