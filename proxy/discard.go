package proxy

import (
	"maps"
	"strings"
)

// Session resets in transaction pooling. Sent to a shared server, DISCARD
// ALL and DEALLOCATE ALL would drop the statements the proxy prepared
// there for other clients, and RESET ALL or SET SESSION AUTHORIZATION
// would change settings it cannot see, so each pins the client (pin.go).
// But drivers send them when they take a connection back into their own
// pool (Npgsql by default, on every reuse: DISCARD ALL, or a list of
// resets when it holds prepared statements), which would pin nearly every
// such client. Between transactions the client's whole session state is
// the proxy's (anything else would have pinned it), so the proxy answers
// these itself, as the server would, and resets that state.

// resetStmt is what a statement of a session reset does to the state the
// proxy keeps for the client.
type resetStmt uint8

const (
	resetNothing           resetStmt = iota // nothing the proxy keeps (CLOSE ALL, UNLISTEN *, ...)
	resetDiscardAll                         // statements and settings
	resetDeallocateAll                      // statements
	resetAll                                // settings (RESET ALL)
	resetAdvisoryUnlockAll                  // nothing, but answered with a row
)

// resetForms are the statements answered, as tokens (words, and single
// characters of punctuation), with the command tag the server answers.
var resetForms = []struct {
	tokens []string
	stmt   resetStmt
	tag    string
}{
	{[]string{"discard", "all"}, resetDiscardAll, "DISCARD ALL"},
	{[]string{"discard", "sequences"}, resetNothing, "DISCARD SEQUENCES"},
	{[]string{"discard", "temp"}, resetNothing, "DISCARD TEMP"},
	{[]string{"discard", "temporary"}, resetNothing, "DISCARD TEMP"},
	{[]string{"discard", "plans"}, resetNothing, "DISCARD PLANS"},
	{[]string{"deallocate", "all"}, resetDeallocateAll, "DEALLOCATE ALL"},
	{[]string{"deallocate", "prepare", "all"}, resetDeallocateAll, "DEALLOCATE ALL"},
	{[]string{"reset", "all"}, resetAll, "RESET"},
	{[]string{"reset", "session", "authorization"}, resetNothing, "RESET"},
	{[]string{"set", "session", "authorization", "default"}, resetNothing, "SET"},
	{[]string{"close", "all"}, resetNothing, "CLOSE CURSOR ALL"},
	{[]string{"unlisten", "*"}, resetNothing, "UNLISTEN"},
	{[]string{"select", "pg_advisory_unlock_all", "(", ")"}, resetAdvisoryUnlockAll, "SELECT 1"},
}

// maxResetStmts bounds a reset list (Npgsql's has seven statements).
const maxResetStmts = 12

// sessionReset reads a simple query's text as a list of session resets
// (resetForms), in any case, with comments and spaces, separated by
// semicolons. It returns the index in resetForms of each, or nil when the
// text holds anything else. DISCARD ALL must be alone: the server refuses
// it inside the implicit transaction of a list.
func sessionReset(q string, dst []int) []int {
	i := 0
	for {
		i = skipBlanks(q, i, false)
		for i < len(q) && q[i] == ';' {
			i = skipBlanks(q, i+1, false)
		}
		if i >= len(q) {
			break
		}
		f, next := matchReset(q, i)
		if f < 0 || len(dst) == maxResetStmts {
			return nil
		}
		dst = append(dst, f)
		if i = skipBlanks(q, next, false); i < len(q) && q[i] != ';' {
			return nil
		}
	}
	if len(dst) > 1 {
		for _, f := range dst {
			if resetForms[f].stmt == resetDiscardAll {
				return nil
			}
		}
	}
	return dst
}

// matchReset matches the statement at q[i:] against resetForms; it
// returns the form's index (-1 for none) and where the form ends.
func matchReset(q string, i int) (int, int) {
	first, _ := resetToken(q, i)
	for f, form := range resetForms {
		// The length first: most queries stop there, without comparing text.
		if len(first) != len(form.tokens[0]) || !strings.EqualFold(first, form.tokens[0]) {
			continue
		}
		if end, ok := matchTokens(q, i, form.tokens); ok {
			return f, end
		}
	}
	return -1, i
}

// matchTokens matches q[i:] against tokens, in any case, and returns where
// the match ends.
func matchTokens(q string, i int, tokens []string) (int, bool) {
	for _, want := range tokens {
		var tok string
		tok, i = resetToken(q, skipBlanks(q, i, false))
		if !strings.EqualFold(tok, want) {
			return i, false
		}
	}
	return i, true
}

// resetToken is the word or punctuation character at q[i:].
func resetToken(q string, i int) (string, int) {
	if i >= len(q) {
		return "", i
	}
	if w, n := word(q, i); n > i {
		return w, n
	}
	return q[i : i+1], i + 1
}

// answerReset answers, between transactions in transaction mode, a
// simple query made of session resets (sessionReset) as the server would:
// the client's prepared statements are forgotten (DISCARD ALL, DEALLOCATE
// ALL), its settings go back to those it logged in with (DISCARD ALL,
// RESET ALL; each one that changes is reported with ParameterStatus), and
// each statement gets the server's answer, then ReadyForQuery. The other
// resets have nothing to undo: a client that had created what they reset
// (cursors WITH HOLD, LISTEN, a session lock, temporary tables, a session
// authorization) is pinned and holds its server. It returns the answer
// and how many bytes of msgs it consumed; 0 when msgs starts with
// anything else or the session is not between transactions.
func (ps *pooled) answerReset(msgs []byte) ([]byte, int) {
	if ps.mode != PoolTransaction || len(msgs) < 6 || msgs[0] != 'Q' {
		return nil, 0
	}
	l := int(getUint32(msgs[1:5]))
	if l < 5 || len(msgs) < 1+l {
		return nil, 0
	}
	var buf [maxResetStmts]int
	forms := sessionReset(transientString(msgs[5:l]), buf[:0]) // without the terminating NUL
	if len(forms) == 0 {
		return nil, 0
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.server != nil || ps.pinned != "" || !ps.quietLocked() {
		return nil, 0
	}
	ps.unnamedOn = nil // a simple query replaces the unnamed statement
	var resp []byte
	settings := false
	for _, f := range forms {
		form := resetForms[f]
		switch form.stmt {
		case resetDiscardAll:
			ps.stmts = nil
			settings = true
		case resetDeallocateAll:
			ps.stmts = nil
		case resetAll:
			settings = true
		case resetAdvisoryUnlockAll:
			resp = appendVoidRow(resp, "pg_advisory_unlock_all")
		}
		resp = appendMessage(resp, 'C', append([]byte(form.tag), 0))
	}
	if settings {
		// The split's own settings (SET pgrouter.route, pgrouter.min_lsn)
		// are reset too; the session's last write still binds its reads.
		ps.split.force, ps.split.minLSN = "", 0
		if ps.started != nil {
			for name, want := range ps.started {
				if ps.desired[name] == want {
					continue
				}
				if canon, ok := settable[name]; ok {
					resp = appendParameterStatus(resp, canon, want)
				}
			}
			ps.desired = maps.Clone(ps.started)
			ps.desiredFP = settingsFingerprint(ps.desired)
		}
	}
	return appendMessage(resp, 'Z', []byte{'I'}), 1 + l
}

// appendVoidRow appends the RowDescription and DataRow of a SELECT of one
// function returning void, as the server sends them: one text column of
// type void (OID 2278, 4 bytes), its value the empty string.
func appendVoidRow(dst []byte, column string) []byte {
	desc := make([]byte, 0, 2+len(column)+1+18)
	desc = append(desc, 0, 1)
	desc = append(desc, column...)
	desc = append(desc, 0,
		0, 0, 0, 0, // table OID
		0, 0, // column number
		0, 0, 0x08, 0xe6, // type OID 2278
		0, 4, // type size
		0xff, 0xff, 0xff, 0xff, // type modifier -1
		0, 0) // text format
	dst = appendMessage(dst, 'T', desc)
	return appendMessage(dst, 'D', []byte{0, 1, 0, 0, 0, 0})
}

// settingChanging keeps the settings the client started with before the
// first change to them, for answerReset. Called with mu held.
func (ps *pooled) settingChanging() {
	if ps.started == nil {
		ps.started = maps.Clone(ps.desired)
	}
}
