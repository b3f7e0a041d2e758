package proxy

import (
	"encoding/binary"
	"io"
	"strings"
)

// Request codes sent in place of a protocol version in the first packet.
const (
	cancelRequestCode = 80877102
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104

	protocolMajor3 = 3
	// maxCancelKeyLen is the longest secret key protocol 3.2 allows.
	maxCancelKeyLen = 256
)

type packetKind uint8

const (
	packetStartup packetKind = iota
	packetSSLRequest
	packetGSSENCRequest
	packetCancel
)

// startupPacket is a decoded first packet of a connection: a startup
// message, an encryption request or a cancel request.
type startupPacket struct {
	kind    packetKind
	version uint32  // protocol version of a startup message
	params  []param // startup parameters in the client's order

	cancelPID uint32
	cancelKey []byte
}

type param struct{ name, value string }

func (p *startupPacket) param(name string) (string, bool) {
	for _, kv := range p.params {
		if kv.name == name {
			return kv.value, true
		}
	}
	return "", false
}

// readStartupPacket reads one length-prefixed startup-phase packet. Packets
// longer than maxLen are refused before their body is read, so a hostile
// client cannot make the proxy allocate what it claims.
func readStartupPacket(r io.Reader, maxLen int) (startupPacket, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return startupPacket{}, err
	}
	n := int(getUint32(hdr[:]))
	if n < 8 || n > maxLen {
		e := fatalf(codeProtocolViolation, "invalid length of startup packet")
		e.Quiet = true
		return startupPacket{}, e
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return startupPacket{}, err
	}
	return parseStartupPacket(body)
}

// parseStartupPacket decodes a packet body (everything after the length).
func parseStartupPacket(b []byte) (startupPacket, error) {
	if len(b) < 4 {
		return startupPacket{}, fatalf(codeProtocolViolation, "invalid length of startup packet")
	}
	code := getUint32(b)
	rest := b[4:]
	switch code {
	case sslRequestCode, gssEncRequestCode:
		if len(rest) != 0 {
			return startupPacket{}, fatalf(codeProtocolViolation, "invalid length of encryption request")
		}
		if code == sslRequestCode {
			return startupPacket{kind: packetSSLRequest}, nil
		}
		return startupPacket{kind: packetGSSENCRequest}, nil
	case cancelRequestCode:
		if len(rest) < 8 || len(rest)-4 > maxCancelKeyLen {
			return startupPacket{}, fatalf(codeProtocolViolation, "invalid length of cancel request")
		}
		key := make([]byte, len(rest)-4)
		copy(key, rest[4:])
		return startupPacket{kind: packetCancel, cancelPID: getUint32(rest), cancelKey: key}, nil
	}
	major, minor := code>>16, code&0xffff
	if major != protocolMajor3 {
		return startupPacket{}, fatalf(codeFeatureNotSupported,
			"unsupported frontend protocol %d.%d: server supports 3.0 to 3.%d", major, minor, minor)
	}
	p := startupPacket{kind: packetStartup, version: code}
	// One copy of the parameters as a string, which every name and value
	// slices, and the slice sized by counting terminators: two
	// allocations per startup instead of two per parameter.
	all := string(rest)
	p.params = make([]param, 0, strings.Count(all, "\x00")/2)
	for {
		i := strings.IndexByte(all, 0)
		if i < 0 {
			return startupPacket{}, fatalf(codeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		if i == 0 {
			if len(all) != 1 {
				return startupPacket{}, fatalf(codeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
			}
			break
		}
		name := all[:i]
		all = all[i+1:]
		j := strings.IndexByte(all, 0)
		if j < 0 {
			return startupPacket{}, fatalf(codeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
		}
		p.params = append(p.params, param{name: name, value: all[:j]})
		all = all[j+1:]
	}
	if v, _ := p.param("user"); v == "" {
		return startupPacket{}, fatalf(codeInvalidAuthSpec, "no PostgreSQL user name specified in startup packet")
	}
	return p, nil
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// encodeStartup encodes a startup message with the given version and params.
func encodeStartup(version uint32, params []param) []byte {
	n := 8 + 1
	for _, kv := range params {
		n += len(kv.name) + len(kv.value) + 2
	}
	b := make([]byte, 8, n)
	binary.BigEndian.PutUint32(b, uint32(n))
	binary.BigEndian.PutUint32(b[4:], version)
	for _, kv := range params {
		b = append(b, kv.name...)
		b = append(b, 0)
		b = append(b, kv.value...)
		b = append(b, 0)
	}
	return append(b, 0)
}

func encodeCancel(pid uint32, key []byte) []byte {
	b := make([]byte, 12, 12+len(key))
	binary.BigEndian.PutUint32(b, uint32(12+len(key)))
	binary.BigEndian.PutUint32(b[4:], cancelRequestCode)
	binary.BigEndian.PutUint32(b[8:], pid)
	return append(b, key...)
}

// sessionIntent is what the startup packet says about where a session
// may run.
type sessionIntent struct {
	readOnly     bool // default_transaction_read_only or target_session_attrs asks for it
	standbyOnly  bool // target_session_attrs=standby: no fallback to the primary
	primaryOnly  bool // target_session_attrs=read-write|primary
	user, dbname string
}

// proxyOnlyParams are startup parameters that steer the proxy and that
// PostgreSQL would refuse ("unrecognized configuration parameter").
var proxyOnlyParams = map[string]bool{"target_session_attrs": true}

// prepareStartup extracts the session's intent from its startup parameters
// and returns the parameters to send to the server, without the ones only
// the proxy understands (also inside options=-c ...).
func prepareStartup(p *startupPacket) (sessionIntent, []param, error) {
	in := sessionIntent{}
	out := make([]param, 0, len(p.params))
	var tsa string
	for _, kv := range p.params {
		switch kv.name {
		case "user":
			in.user = kv.value
		case "database":
			in.dbname = kv.value
		case "default_transaction_read_only":
			in.readOnly = in.readOnly || isTrue(kv.value)
		case "options":
			settings, rest := splitOptions(kv.value, proxyOnlyParams)
			for _, s := range settings {
				switch s.name {
				case "target_session_attrs":
					tsa = s.value
				case "default_transaction_read_only":
					in.readOnly = in.readOnly || isTrue(s.value)
				}
			}
			if rest != "" {
				out = append(out, param{name: "options", value: rest})
			}
			continue
		}
		if proxyOnlyParams[kv.name] {
			if kv.name == "target_session_attrs" {
				tsa = kv.value
			}
			continue
		}
		out = append(out, kv)
	}
	if in.dbname == "" {
		in.dbname = in.user
	}
	switch strings.ToLower(tsa) {
	case "", "any":
	case "read-write", "primary":
		in.primaryOnly = true
	case "read-only", "prefer-standby":
		in.readOnly = true
	case "standby":
		in.readOnly, in.standbyOnly = true, true
	default:
		return in, nil, fatalf(codeProtocolViolation, "invalid value for parameter \"target_session_attrs\": %q", tsa)
	}
	if in.primaryOnly {
		in.readOnly = false
	}
	return in, out, nil
}

func isTrue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "on", "true", "yes", "1", "t", "y":
		return true
	}
	return false
}

// splitOptions parses a libpq "options" value the way the server does
// (whitespace separates arguments, backslash escapes the next byte) and
// returns every -c / -- setting in it, plus the options text without the
// settings named in strip, with its original escaping.
func splitOptions(opts string, strip map[string]bool) ([]param, string) {
	type token struct{ raw, val string }
	var toks []token
	for i := 0; i < len(opts); {
		for i < len(opts) && isSpace(opts[i]) {
			i++
		}
		if i >= len(opts) {
			break
		}
		start := i
		var val strings.Builder
		for i < len(opts) && !isSpace(opts[i]) {
			if opts[i] == '\\' && i+1 < len(opts) {
				i++
			}
			val.WriteByte(opts[i])
			i++
		}
		toks = append(toks, token{raw: opts[start:i], val: val.String()})
	}
	var settings []param
	var kept []string
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		var setting string
		raw := []string{t.raw}
		switch {
		case t.val == "-c" && i+1 < len(toks):
			setting = toks[i+1].val
			raw = append(raw, toks[i+1].raw)
			i++
		case strings.HasPrefix(t.val, "-c") && len(t.val) > 2:
			setting = t.val[2:]
		case strings.HasPrefix(t.val, "--") && len(t.val) > 2:
			setting = t.val[2:]
		}
		if setting != "" {
			name, value, _ := strings.Cut(setting, "=")
			name = strings.ReplaceAll(name, "-", "_")
			settings = append(settings, param{name: name, value: value})
			if strip[name] {
				continue
			}
		}
		kept = append(kept, raw...)
	}
	return settings, strings.Join(kept, " ")
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
