package proxy

import (
	"strings"
	"unsafe"
)

// transientString views b as a string without copying, for a scan that
// keeps nothing of it (pinReason returns only its own constants): the
// relay's hot path allocates nothing per statement. The caller must not
// change b while the string is in use, nor keep the string.
func transientString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// Session state that transaction pooling cannot carry from one server to
// the next. A client that creates any of it is pinned to its server for
// the rest of its session: never silently broken.
const (
	pinNone         = ""
	pinSQLPrepare   = "sql_prepare"
	pinTempTable    = "temp_table"
	pinListen       = "listen"
	pinAdvisoryLock = "advisory_lock"
	pinHoldCursor   = "cursor_with_hold"
	pinUntrackedSet = "untracked_set"
	pinLoad         = "load"
	// DEALLOCATE and DISCARD ALL drop prepared statements on the server,
	// the proxy's own for other clients among them (it prepares their
	// statements under its names and remembers which server has which).
	// Pinned, the server stays the client's until the session ends and
	// the server is reset.
	pinDeallocate = "deallocate"
)

// reportedParams are the settings PostgreSQL reports with ParameterStatus
// whenever they change; the proxy follows these through SET and re-applies
// them on the next server, so a SET of one of them needs no pin.
var reportedParams = map[string]bool{
	"application_name": true, "client_encoding": true, "datestyle": true,
	"default_transaction_read_only": true, "in_hot_standby": true,
	"integer_datetimes": true, "intervalstyle": true, "is_superuser": true,
	"server_encoding": true, "server_version": true, "session_authorization": true,
	"standard_conforming_strings": true, "timezone": true,
}

// pinReason scans a query text the way the server's lexer would for the
// statements that create session state, and names the first it finds. It
// skips comments, quoted strings and identifiers, and dollar quotes, and
// looks at the first words of each statement, so "UPDATE t SET x = 1" is
// not a SET. It allocates nothing for ordinary statements.
func pinReason(q string) string {
	i := 0
	for i < len(q) {
		i = skipSpaceAndComments(q, i)
		if i >= len(q) {
			break
		}
		w1, next := word(q, i)
		if reason := statementPin(q, w1, next); reason != pinNone {
			return reason
		}
		// SELECT ... INTO TEMP creates a temporary table too.
		selects := strings.EqualFold(w1, "select") || strings.EqualFold(w1, "with")
		// Advance to the end of the statement.
		for i = next; i < len(q); {
			c := q[i]
			switch {
			case c == ';':
				i++
				goto nextStatement
			case c == '\'' || c == '"':
				i = skipQuoted(q, i, c)
			case c == '$':
				i = skipDollar(q, i)
			case c == '-' && i+1 < len(q) && q[i+1] == '-', c == '/' && i+1 < len(q) && q[i+1] == '*':
				i = skipSpaceAndComments(q, i)
			case selects && (c == 'i' || c == 'I') && !isIdentByte(q[i-1]) && intoTemp(q[i:]):
				return pinTempTable
			case (c == 'p' || c == 'P') && takesSessionLock(q[i:]):
				return pinAdvisoryLock
			case (c == 's' || c == 'S') && hasFoldPrefix(q[i:], "set_config") && (i == 0 || !isIdentByte(q[i-1])):
				if setConfigPins(q[i+len("set_config"):]) {
					return pinUntrackedSet
				}
				i += len("set_config")
			default:
				i++
			}
		}
	nextStatement:
	}
	return pinNone
}

func statementPin(q, w1 string, next int) string {
	// The lengths of the words below (create and listen, prepare, discard
	// and declare share theirs): most statements stop here.
	switch len(w1) {
	case len("set"), len("load"), len("reset"), len("listen"), len("prepare"), len("deallocate"):
	default:
		return pinNone
	}
	switch {
	case strings.EqualFold(w1, "prepare"):
		return pinSQLPrepare
	case strings.EqualFold(w1, "listen"):
		return pinListen
	case strings.EqualFold(w1, "load"):
		return pinLoad
	case strings.EqualFold(w1, "deallocate"):
		return pinDeallocate
	case strings.EqualFold(w1, "discard"):
		if w2, _ := word(q, skipSpaceAndComments(q, next)); strings.EqualFold(w2, "all") {
			return pinDeallocate
		}
	case strings.EqualFold(w1, "declare"):
		if containsFoldWords(q[next:], "with", "hold") {
			return pinHoldCursor
		}
	case strings.EqualFold(w1, "create"):
		w2, n2 := word(q, skipSpaceAndComments(q, next))
		if strings.EqualFold(w2, "temp") || strings.EqualFold(w2, "temporary") {
			return pinTempTable
		}
		if strings.EqualFold(w2, "local") || strings.EqualFold(w2, "global") {
			w3, _ := word(q, skipSpaceAndComments(q, n2))
			if strings.EqualFold(w3, "temp") || strings.EqualFold(w3, "temporary") {
				return pinTempTable
			}
		}
		if namesTempSchema(q[next:]) { // CREATE TYPE pg_temp.t, CREATE FUNCTION pg_temp.f, ...
			return pinTempTable
		}
	case strings.EqualFold(w1, "set"):
		w2, n2 := word(q, skipSpaceAndComments(q, next))
		switch {
		case strings.EqualFold(w2, "local"), strings.EqualFold(w2, "transaction"):
			return pinNone // ends with the transaction
		case strings.EqualFold(w2, "session"):
			w3, _ := word(q, skipSpaceAndComments(q, n2))
			if strings.EqualFold(w3, "characteristics") {
				return pinUntrackedSet
			}
			w2 = w3
		}
		if !reportedParams[strings.ToLower(w2)] {
			return pinUntrackedSet
		}
	case strings.EqualFold(w1, "reset"):
		w2, _ := word(q, skipSpaceAndComments(q, next))
		if !reportedParams[strings.ToLower(w2)] {
			return pinUntrackedSet
		}
	}
	return pinNone
}

func word(q string, i int) (string, int) {
	j := i
	for j < len(q) {
		c := q[j]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || (j > i && c >= '0' && c <= '9') {
			j++
			continue
		}
		break
	}
	return q[i:j], j
}

func skipSpaceAndComments(q string, i int) int {
	return skipBlanks(q, i, true)
}

// skipBlanks skips spaces and comments, and opening parentheses too when
// parens is set.
func skipBlanks(q string, i int, parens bool) int {
	for i < len(q) {
		switch c := q[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || (parens && c == '('):
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			depth := 0
			for i < len(q) {
				if q[i] == '/' && i+1 < len(q) && q[i+1] == '*' {
					depth++
					i += 2
				} else if q[i] == '*' && i+1 < len(q) && q[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		default:
			return i
		}
	}
	return i
}

// skipQuoted skips the quoted string or identifier that starts at q[i].
// In an escape string (E'...') a backslash escapes the next character,
// a quote among them.
func skipQuoted(q string, i int, quote byte) int {
	escapes := quote == '\'' && i > 0 && (q[i-1] == 'E' || q[i-1] == 'e') && (i < 2 || !isIdentByte(q[i-2]))
	for i++; i < len(q); i++ {
		if escapes && q[i] == '\\' {
			i++
			continue
		}
		if q[i] == quote {
			if i+1 < len(q) && q[i+1] == quote {
				i++
				continue
			}
			return i + 1
		}
	}
	return i
}

// skipDollar skips a dollar-quoted string ($$...$$ or $tag$...$tag$), or
// a lone $ (a parameter like $1).
func skipDollar(q string, i int) int {
	j := i + 1
	for j < len(q) && (q[j] == '_' || q[j] >= 'a' && q[j] <= 'z' || q[j] >= 'A' && q[j] <= 'Z' || q[j] >= '0' && q[j] <= '9' && j > i+1) {
		j++
	}
	if j >= len(q) || q[j] != '$' {
		return i + 1
	}
	tag := q[i : j+1]
	if end := strings.Index(q[j+1:], tag); end >= 0 {
		return j + 1 + end + len(tag)
	}
	return len(q)
}

// intoTemp reports whether s starts with INTO [LOCAL|GLOBAL] TEMP or
// TEMPORARY (SELECT INTO's temporary table).
func intoTemp(s string) bool {
	w, n := word(s, 0)
	if !strings.EqualFold(w, "into") {
		return false
	}
	w, n = word(s, skipSpaceAndComments(s, n))
	if strings.EqualFold(w, "local") || strings.EqualFold(w, "global") {
		w, _ = word(s, skipSpaceAndComments(s, n))
	}
	return strings.EqualFold(w, "temp") || strings.EqualFold(w, "temporary")
}

// takesSessionLock reports whether s starts with the name of a function
// that takes a session-level advisory lock: pg_advisory_lock and
// pg_try_advisory_lock, with their _shared forms (the _xact_ ones end with
// the transaction). Rails and many migration tools take theirs with the
// try form.
func takesSessionLock(s string) bool {
	return hasFoldPrefix(s, "pg_advisory_lock") || hasFoldPrefix(s, "pg_try_advisory_lock")
}

// setConfigPins reports whether the call of set_config whose argument
// list starts s changes a session setting the proxy cannot carry to the
// next server: one it does not learn from ParameterStatus, set for the
// session (is_local not literally true). Anything it cannot read for sure
// (a name or flag given as a parameter or an expression) pins.
func setConfigPins(s string) bool {
	i := skipSpaceAndComments(s, 0) // also steps over the '('
	if i == 0 || s[i-1] != '(' {
		return false // set_config not called here (a column or a name)
	}
	var args [3]string
	n := 0
	start, depth := i, 0
	for i < len(s) && n < 3 {
		switch c := s[i]; {
		case c == '\'' || c == '"':
			i = skipQuoted(s, i, c)
		case c == '$':
			i = skipDollar(s, i)
		case c == '(':
			depth++
			i++
		case c == ')' && depth > 0:
			depth--
			i++
		case c == ')' || c == ',' && depth == 0:
			args[n] = strings.TrimSpace(s[start:i])
			n++
			if c == ')' {
				i = len(s)
			} else {
				i++
				start = i
			}
		case c == ';':
			i = len(s)
		default:
			i++
		}
	}
	if n < 3 {
		return true
	}
	if strings.EqualFold(args[2], "true") {
		return false // ends with the transaction
	}
	name := args[0]
	if len(name) < 2 || name[0] != '\'' || name[len(name)-1] != '\'' || strings.ContainsRune(name[1:len(name)-1], '\'') {
		return true
	}
	return !reportedParams[strings.ToLower(name[1:len(name)-1])]
}

func hasFoldPrefix(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// namesTempSchema reports whether the statement that starts s (up to its
// ';') names the session's temporary schema, pg_temp, outside quotes.
func namesTempSchema(s string) bool {
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == ';':
			return false
		case c == '\'' || c == '"':
			i = skipQuoted(s, i, c)
		case c == '$':
			i = skipDollar(s, i)
		case (c == 'p' || c == 'P') && hasFoldPrefix(s[i:], "pg_temp") && (i == 0 || !isIdentByte(s[i-1])):
			return true
		default:
			i++
		}
	}
	return false
}

func isIdentByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// containsFoldWords reports whether words a and b appear one after the
// other in the statement that starts s (up to its ';').
func containsFoldWords(s, a, b string) bool {
	if end := strings.IndexByte(s, ';'); end >= 0 {
		s = s[:end]
	}
	for i := 0; i < len(s); {
		i = skipSpaceAndComments(s, i)
		w, n := word(s, i)
		if n == i {
			i++
			continue
		}
		if strings.EqualFold(w, a) {
			w2, _ := word(s, skipSpaceAndComments(s, n))
			if strings.EqualFold(w2, b) {
				return true
			}
		}
		i = n
	}
	return false
}
