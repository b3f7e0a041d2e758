package auth

import (
	"fmt"
	"net"
	"strings"
)

// HBA is a list of rules in the style of pg_hba.conf that choose how a
// client authenticates at the proxy. The first rule that matches the
// connection type, database, user and client address wins; a connection
// no rule matches is rejected. An HBA never changes after ParseHBA, so it
// is safe for concurrent use; a reload makes a new one.
type HBA struct {
	rules []hbaRule
}

type connType uint8

const (
	connLocal     connType = iota // Unix socket: addr == nil in Match
	connHost                      // TCP, with or without TLS
	connHostSSL                   // TCP with TLS
	connHostNoSSL                 // TCP without TLS
)

type hbaRule struct {
	line      int // 1-based, for errors and logs
	conn      connType
	databases []hbaName  // nil means all
	users     []hbaName  // nil means all
	network   *net.IPNet // nil means all addresses
	method    Method
}

// hbaName is one item of a database or user list. A keyword is a bare
// sameuser or replication; a quoted "all" is a plain name.
type hbaName struct {
	name    string
	keyword bool
}

// ParseHBA parses pg_hba.conf lines:
//
//	host|hostssl|hostnossl DATABASE USER ADDRESS [MASK] METHOD
//	local DATABASE USER METHOD
//
// DATABASE and USER are "all" or comma-separated lists of names (double
// quotes keep a name with spaces or commas, or one spelled like a
// keyword); DATABASE may also hold sameuser, and replication, which never
// matches since the proxy takes no replication connections. ADDRESS is
// "all" or a CIDR block, or an address followed by a mask. METHOD is one
// of the Method constants. Blank lines and # comments are skipped. What
// the proxy cannot do (host names, samehost/samenet, +groups, @files,
// other methods, options after the method) is an error that names the
// line, never a rule silently dropped.
func ParseHBA(lines []string) (*HBA, error) {
	h := &HBA{}
	for i, text := range lines {
		fields, err := hbaFields(text)
		if err != nil {
			return nil, fmt.Errorf("hba line %d: %w", i+1, err)
		}
		if len(fields) == 0 {
			continue
		}
		r, err := parseRule(fields)
		if err != nil {
			return nil, fmt.Errorf("hba line %d: %w", i+1, err)
		}
		r.line = i + 1
		h.rules = append(h.rules, r)
	}
	return h, nil
}

// hbaToken is one comma-separated item of a field.
type hbaToken struct {
	text   string
	quoted bool
}

// hbaFields splits a line into whitespace-separated fields, each a list of
// comma-separated tokens, honouring double quotes and # comments.
func hbaFields(line string) ([][]hbaToken, error) {
	var fields [][]hbaToken
	var field []hbaToken
	var cur strings.Builder
	quoted, inQuote, inToken := false, false, false
	endToken := func() {
		if inToken {
			field = append(field, hbaToken{text: cur.String(), quoted: quoted})
		}
		cur.Reset()
		quoted, inToken = false, false
	}
	endField := func() {
		endToken()
		if len(field) > 0 {
			fields = append(fields, field)
		}
		field = nil
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote:
			if c == '"' {
				inQuote = false
			} else {
				cur.WriteByte(c)
			}
		case c == '"':
			inQuote, quoted, inToken = true, true, true
		case c == '#':
			endField()
			return fields, nil
		case c == ',':
			if !inToken {
				return nil, fmt.Errorf("empty item in list")
			}
			endToken()
			// As in PostgreSQL, blanks may follow a comma: "db1, db2".
			for i+1 < len(line) && (line[i+1] == ' ' || line[i+1] == '\t') {
				i++
			}
			if i+1 >= len(line) || line[i+1] == '#' || line[i+1] == ',' {
				return nil, fmt.Errorf("list ends with a comma")
			}
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			endField()
		default:
			cur.WriteByte(c)
			inToken = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quoted string")
	}
	endField()
	return fields, nil
}

// single returns the only token of a field, or an error naming what.
func single(field []hbaToken, what string) (hbaToken, error) {
	if len(field) != 1 {
		return hbaToken{}, fmt.Errorf("%s cannot be a list", what)
	}
	return field[0], nil
}

func parseRule(fields [][]hbaToken) (hbaRule, error) {
	var r hbaRule
	typ, err := single(fields[0], "connection type")
	if err != nil {
		return r, err
	}
	switch typ.text {
	case "local":
		r.conn = connLocal
	case "host":
		r.conn = connHost
	case "hostssl":
		r.conn = connHostSSL
	case "hostnossl":
		r.conn = connHostNoSSL
	case "hostgssenc", "hostnogssenc":
		return r, fmt.Errorf("connection type %q is not supported: the proxy does not do GSSAPI encryption", typ.text)
	default:
		return r, fmt.Errorf("invalid connection type %q", typ.text)
	}
	rest := fields[1:]
	if len(rest) < 2 {
		return r, fmt.Errorf("end of line before the user field")
	}
	if r.databases, err = parseNames(rest[0], "database"); err != nil {
		return r, err
	}
	if r.users, err = parseNames(rest[1], "user"); err != nil {
		return r, err
	}
	rest = rest[2:]
	if r.conn != connLocal {
		if len(rest) == 0 {
			return r, fmt.Errorf("end of line before the address field")
		}
		var n int
		if r.network, n, err = parseAddress(rest); err != nil {
			return r, err
		}
		rest = rest[n:]
	}
	if len(rest) == 0 {
		return r, fmt.Errorf("end of line before the authentication method")
	}
	m, err := single(rest[0], "authentication method")
	if err != nil {
		return r, err
	}
	var ok bool
	if r.method, ok = parseMethod(m.text); !ok {
		return r, fmt.Errorf("authentication method %q is not supported (want scram-sha-256, md5, password, trust or reject)", m.text)
	}
	if len(rest) > 1 {
		return r, fmt.Errorf("authentication options are not supported: %q", rest[1][0].text)
	}
	return r, nil
}

// parseNames parses a database or user list; nil means all.
func parseNames(field []hbaToken, what string) ([]hbaName, error) {
	var names []hbaName
	for _, t := range field {
		if t.quoted {
			names = append(names, hbaName{name: t.text})
			continue
		}
		switch {
		case t.text == "all":
			if len(field) > 1 {
				return nil, fmt.Errorf("%s list mixes \"all\" with names", what)
			}
			return nil, nil
		case what == "database" && (t.text == "sameuser" || t.text == "replication"):
			names = append(names, hbaName{name: t.text, keyword: true})
		case what == "database" && (t.text == "samerole" || t.text == "samegroup"):
			return nil, fmt.Errorf("database keyword %q is not supported: the proxy does not know role memberships", t.text)
		case strings.HasPrefix(t.text, "+"):
			return nil, fmt.Errorf("group %q is not supported: the proxy does not know role memberships", t.text)
		case strings.HasPrefix(t.text, "@"):
			return nil, fmt.Errorf("file inclusion %q is not supported", t.text)
		case t.text == "":
			return nil, fmt.Errorf("empty %s name", what)
		default:
			names = append(names, hbaName{name: t.text})
		}
	}
	return names, nil
}

// parseAddress parses "all", a CIDR block, or an address and a mask in
// the next field. It returns the network (nil for all) and how many
// fields it used.
func parseAddress(fields [][]hbaToken) (*net.IPNet, int, error) {
	a, err := single(fields[0], "address")
	if err != nil {
		return nil, 0, err
	}
	switch a.text {
	case "all":
		return nil, 1, nil
	case "samehost", "samenet":
		return nil, 0, fmt.Errorf("address %q is not supported: give a CIDR block", a.text)
	}
	if strings.Contains(a.text, "/") {
		_, n, err := net.ParseCIDR(a.text)
		if err != nil {
			return nil, 0, fmt.Errorf("invalid CIDR block %q", a.text)
		}
		return n, 1, nil
	}
	ip := net.ParseIP(a.text)
	if ip == nil {
		return nil, 0, fmt.Errorf("invalid address %q: host names are not supported, give a CIDR block", a.text)
	}
	if len(fields) < 3 { // address, mask, method
		return nil, 0, fmt.Errorf("address %q needs a /prefix or a mask", a.text)
	}
	m, err := single(fields[1], "mask")
	if err != nil {
		return nil, 0, err
	}
	maskIP := net.ParseIP(m.text)
	if maskIP == nil {
		return nil, 0, fmt.Errorf("invalid mask %q", m.text)
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
		if maskIP = maskIP.To4(); maskIP == nil {
			return nil, 0, fmt.Errorf("mask %q does not match address %q", m.text, a.text)
		}
	} else if maskIP.To4() != nil {
		return nil, 0, fmt.Errorf("mask %q does not match address %q", m.text, a.text)
	}
	mask := net.IPMask(maskIP)
	if ones, bits := mask.Size(); ones == 0 && bits == 0 {
		return nil, 0, fmt.Errorf("invalid mask %q: not a prefix", m.text)
	}
	return &net.IPNet{IP: ip.Mask(mask), Mask: mask}, 2, nil
}

// Allows reports whether some rule chooses m for some client.
func (h *HBA) Allows(m Method) bool {
	if h == nil {
		return false
	}
	for i := range h.rules {
		if h.rules[i].method == m {
			return true
		}
	}
	return false
}

// Match returns the method of the first rule that matches a connection
// for user to database from addr, over TLS or not; nil addr means a Unix
// socket. No matching rule gives MethodReject. A nil HBA rejects
// everything.
func (h *HBA) Match(database, user string, addr net.IP, tls bool) Method {
	if h == nil {
		return MethodReject
	}
	for i := range h.rules {
		if h.rules[i].matches(database, user, addr, tls) {
			return h.rules[i].method
		}
	}
	return MethodReject
}

func (r *hbaRule) matches(database, user string, addr net.IP, tls bool) bool {
	switch r.conn {
	case connLocal:
		if addr != nil {
			return false
		}
	case connHost:
		if addr == nil {
			return false
		}
	case connHostSSL:
		if addr == nil || !tls {
			return false
		}
	case connHostNoSSL:
		if addr == nil || tls {
			return false
		}
	}
	if r.network != nil && !r.network.Contains(addr) {
		return false
	}
	return matchName(r.databases, database, user) && matchName(r.users, user, "")
}

// matchName reports whether name is in list (nil: all). sameuser matches
// a database named like the user; replication matches nothing.
func matchName(list []hbaName, name, user string) bool {
	if list == nil {
		return true
	}
	for _, n := range list {
		switch {
		case !n.keyword:
			if n.name == name {
				return true
			}
		case n.name == "sameuser":
			if name == user {
				return true
			}
		}
	}
	return false
}
