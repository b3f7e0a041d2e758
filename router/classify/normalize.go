package classify

import (
	"hash/maphash"
	"strings"
	"unicode/utf8"
)

// Placeholders stand for literal constants in the normalized text. They
// start with a NUL byte, which a query text never holds (the protocol
// ends it there), so no verbatim text can look like one. The class keeps
// apart constants the grammar tells apart: an integer that fits int32
// (ICONST), any other number (FCONST), a quoted string, a dollar-quoted
// string. The empty string is a class of its own: pg_query's tree gives
// COPY to an empty file name the same empty name as COPY ... TO STDOUT,
// so its classification differs from that of any other file name.
const (
	classInt         = 'i'
	classFloat       = 'f'
	classString      = 's'
	classEmptyString = 'e'
	classDollar      = 'd'
)

// normalizedKey hashes the text as PostgreSQL's lexer would see it with
// every numeric and string literal replaced by a placeholder, runs of
// whitespace and comments by one space, and unquoted words folded to
// lower case. Two texts with the same key differ only in the values of
// their literals, in spacing, comments and the case of keywords and
// unquoted identifiers, so they parse to the same tree shape.
//
// That promise holds only where the scanner sees token boundaries exactly
// as the server's lexer does, and where no literal's value decides whether
// the text parses. Where either might fail, it gives up (ok is false) and
// the caller keys by the exact text: an unterminated quote or comment, an
// escape string (E'...') holding a backslash, a Unicode string
// (U&'...'), a bit string with a doubled quote, a string followed by
// another string (the lexer may join them), a string that is not UTF-8
// (pg_query's parse tree cannot hold it). A run it cannot replace safely,
// such as a malformed number or the precision in float(p), which the
// grammar checks, it hashes verbatim, which is always sound.
//
// It allocates nothing.
func normalizedKey(seed maphash.Seed, q string) (key uint64, ok bool) {
	var h maphash.Hash
	h.SetSeed(seed)
	n := len(q)
	sep, wrote := false, false
	wordStart, wordEnd := -1, -1 // the last bare word, for string prefixes
	// The grammar checks one constant's value itself: the precision in
	// float(p). After "float (" a number is hashed verbatim.
	floatWord, floatParen := false, false
	for i := 0; i < n; {
		c := q[i]
		switch {
		case isSpace(c):
			sep = true
			i++
			continue
		case c == '-' && i+1 < n && q[i+1] == '-':
			i = skipLineComment(q, i)
			sep = true
			continue
		case c == '/' && i+1 < n && q[i+1] == '*':
			if i = skipBlockComment(q, i); i < 0 {
				return 0, false
			}
			sep = true
			continue
		}
		if sep && wrote {
			h.WriteByte(' ')
		}
		sep, wrote = false, true
		afterFloatParen := floatParen
		floatParen = floatWord && c == '('
		floatWord = false
		switch {
		case c == '\'':
			j := scanString(q, i, wordStart, wordEnd)
			if j < 0 {
				return 0, false
			}
			h.WriteByte(0)
			if j == i+2 {
				h.WriteByte(classEmptyString)
			} else {
				h.WriteByte(classString)
			}
			i = j
		case c == '"':
			j := scanQuoted(q, i, '"')
			if j < 0 {
				return 0, false
			}
			h.WriteString(q[i:j])
			i = j
		case c == '$':
			j, dollar := scanDollar(q, i)
			if j < 0 {
				return 0, false
			}
			if dollar {
				h.WriteByte(0)
				h.WriteByte(classDollar)
			} else {
				h.WriteString(q[i:j])
			}
			i = j
		case isDigit(c) || c == '.' && i+1 < n && isDigit(q[i+1]):
			j, class := scanNumber(q, i)
			if class != 0 && !afterFloatParen {
				h.WriteByte(0)
				h.WriteByte(class)
			} else {
				h.WriteString(q[i:j])
			}
			i = j
		case isIdentStart(c):
			j := i + 1
			for j < n && isIdentCont(q[j]) {
				j++
			}
			writeFolded(&h, q[i:j])
			wordStart, wordEnd = i, j
			floatWord = j-i == 5 && strings.EqualFold(q[i:j], "float")
			i = j
		default:
			h.WriteByte(c)
			i++
		}
	}
	return h.Sum64(), true
}

// writeFolded writes an unquoted word folded to lower case, as the
// server folds it (ASCII letters only).
func writeFolded(h *maphash.Hash, w string) {
	for k := 0; k < len(w); k++ {
		if 'A' <= w[k] && w[k] <= 'Z' {
			h.WriteString(w[:k])
			for ; k < len(w); k++ {
				b := w[k]
				if 'A' <= b && b <= 'Z' {
					b += 'a' - 'A'
				}
				h.WriteByte(b)
			}
			return
		}
	}
	h.WriteString(w)
}

// scanString returns the end of the string literal whose opening quote is
// q[i], or -1 where the scanner must give up. A one-letter word right
// before the quote is its prefix: E (escapes), B or X (bit strings), N.
func scanString(q string, i, wordStart, wordEnd int) int {
	var prefix byte
	if wordEnd == i && wordEnd-wordStart == 1 {
		prefix = q[wordStart] | 0x20
	}
	if i > 0 && q[i-1] == '&' {
		return -1 // U&'...' UESCAPE '.': its escapes depend on a literal
	}
	j := i + 1
	for {
		k := strings.IndexByte(q[j:], '\'')
		if k < 0 {
			return -1
		}
		if prefix == 'e' && strings.IndexByte(q[j:j+k], '\\') >= 0 {
			return -1 // escapes can end or break the literal
		}
		if !utf8.ValidString(q[j : j+k]) {
			return -1 // the parse tree must be UTF-8: the text will not parse
		}
		j += k + 1
		if j < len(q) && q[j] == '\'' {
			if prefix == 'b' || prefix == 'x' {
				return -1 // a bit string has no doubled quotes: two tokens
			}
			j++
			continue
		}
		break
	}
	// 'a'<newline>'b' is one literal; 'a' 'b' is two. Give up on both.
	if k := skipSpaceAndComments(q, j); k < 0 || k < len(q) && q[k] == '\'' {
		return -1
	}
	return j
}

// scanQuoted returns the end of a quoted identifier (doubled quotes
// inside), or -1 when it is not closed.
func scanQuoted(q string, i int, quote byte) int {
	j := i + 1
	for {
		k := strings.IndexByte(q[j:], quote)
		if k < 0 {
			return -1
		}
		j += k + 1
		if j < len(q) && q[j] == quote {
			j++
			continue
		}
		return j
	}
}

// scanDollar handles a '$' that starts a token: a parameter ($1), a
// dollar-quoted string ($$...$$, $tag$...$tag$), or a lone '$'. It
// returns the token's end (-1 for an unterminated string) and whether it
// was a dollar-quoted string.
func scanDollar(q string, i int) (end int, dollar bool) {
	n := len(q)
	j := i + 1
	if j < n && isDigit(q[j]) {
		for j < n && isDigit(q[j]) {
			j++
		}
		return j, false
	}
	if j < n && isDolqStart(q[j]) {
		for j++; j < n && isDolqCont(q[j]); j++ {
		}
	}
	if j >= n || q[j] != '$' {
		return i + 1, false
	}
	delim := q[i : j+1]
	k := strings.Index(q[j+1:], delim)
	if k < 0 || !utf8.ValidString(q[j+1:j+1+k]) {
		return -1, false
	}
	return j + 1 + k + len(delim), true
}

// scanNumber returns the end of the run that starts a number at q[i] and
// its placeholder class, or 0 when the run is not exactly one decimal
// number token (hex, junk such as 1abc, 1..2): such a run is hashed
// verbatim.
func scanNumber(q string, i int) (end int, class byte) {
	n := len(q)
	j := i
	for j < n {
		c := q[j]
		switch {
		case isDigit(c) || isLetter(c) || c == '_' || c == '.':
			j++
		case (c == '+' || c == '-') && j > i && q[j-1]|0x20 == 'e' && j+1 < n && isDigit(q[j+1]):
			j++
		default:
			return j, numberClass(q[i:j])
		}
	}
	return j, numberClass(q[i:j])
}

// numberClass checks a run against the lexer's decimal number forms,
// digits with single underscores between them, then an optional fraction
// and exponent, and says whether it is an int32 integer (ICONST) or any
// other number (FCONST).
func numberClass(s string) byte {
	k := 0
	intDigits, v, big := 0, uint64(0), false
	digits := func() int {
		start := k
		for k < len(s) {
			switch {
			case isDigit(s[k]):
				if !big {
					v = v*10 + uint64(s[k]-'0')
					big = v > 1<<31-1
				}
				k++
			case s[k] == '_' && k > start && k+1 < len(s) && isDigit(s[k+1]):
				k++
			default:
				return k - start
			}
		}
		return k - start
	}
	intDigits = digits()
	if k == len(s) {
		if intDigits == 0 {
			return 0
		}
		if big {
			return classFloat
		}
		return classInt
	}
	if s[k] == '.' {
		k++
		if digits() == 0 && intDigits == 0 {
			return 0
		}
	} else if intDigits == 0 {
		return 0
	}
	if k < len(s) && s[k]|0x20 == 'e' {
		k++
		if k < len(s) && (s[k] == '+' || s[k] == '-') {
			k++
		}
		if digits() == 0 {
			return 0
		}
	}
	if k != len(s) {
		return 0
	}
	return classFloat
}

// skipSpaceAndComments returns the index of the next token at or after i,
// len(q) at the end, or -1 inside an unterminated comment.
func skipSpaceAndComments(q string, i int) int {
	for i < len(q) {
		switch c := q[i]; {
		case isSpace(c):
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			i = skipLineComment(q, i)
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			if i = skipBlockComment(q, i); i < 0 {
				return -1
			}
		default:
			return i
		}
	}
	return i
}

// skipLineComment returns the index after the "--" comment at q[i].
func skipLineComment(q string, i int) int {
	for i < len(q) && q[i] != '\n' && q[i] != '\r' {
		i++
	}
	return i
}

// skipBlockComment returns the index after the "/*" comment at q[i],
// which nests as the server's does, or -1 when it is not closed.
func skipBlockComment(q string, i int) int {
	depth := 0
	for i+1 < len(q) {
		switch {
		case q[i] == '/' && q[i+1] == '*':
			depth++
			i += 2
		case q[i] == '*' && q[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return -1
}

// leadingHint reads a routing hint from the comments before the first
// token: /* pgrouter:primary */ or /* pgrouter:standby */, in any case,
// with spaces around it.
func leadingHint(q string) string {
	for i := 0; i < len(q); {
		switch c := q[i]; {
		case isSpace(c):
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			i = skipLineComment(q, i)
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			j := skipBlockComment(q, i)
			if j < 0 {
				return ""
			}
			switch body := strings.TrimSpace(q[i+2 : j-2]); {
			case strings.EqualFold(body, "pgrouter:primary"):
				return "primary"
			case strings.EqualFold(body, "pgrouter:standby"):
				return "standby"
			}
			i = j
		default:
			return ""
		}
	}
	return ""
}

// The lexer's character classes (scan.l); bytes from 0x80 up are letters.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
func isDigit(c byte) bool      { return '0' <= c && c <= '9' }
func isLetter(c byte) bool     { return 'a' <= c|0x20 && c|0x20 <= 'z' }
func isIdentStart(c byte) bool { return isLetter(c) || c == '_' || c >= 0x80 }
func isIdentCont(c byte) bool  { return isIdentStart(c) || isDigit(c) || c == '$' }
func isDolqStart(c byte) bool  { return isLetter(c) || c == '_' || c >= 0x80 }
func isDolqCont(c byte) bool   { return isDolqStart(c) || isDigit(c) }
