package auth

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// SecretKind says what a Secret holds.
type SecretKind uint8

// The kinds of Secret.
const (
	// SecretNone is the zero Secret: no secret at all.
	SecretNone SecretKind = iota
	// SecretSCRAM is a SCRAM-SHA-256 secret as PostgreSQL stores it:
	// iterations, salt, StoredKey and ServerKey.
	SecretSCRAM
	// SecretMD5 is PostgreSQL's md5 hash: "md5" + hex(md5(password+user)).
	SecretMD5
	// SecretPlain is a password in clear text.
	SecretPlain
)

// String names the kind.
func (k SecretKind) String() string {
	switch k {
	case SecretSCRAM:
		return "SCRAM-SHA-256"
	case SecretMD5:
		return "md5"
	case SecretPlain:
		return "plaintext"
	}
	return "none"
}

// Secret is what the proxy knows of a user's password: a SCRAM-SHA-256
// secret, an md5 hash or the password itself. It is immutable once made
// (its byte slices are never written), so it may be shared between
// goroutines. The zero value holds no secret. String and GoString never
// show the secret material, so a Secret may be logged.
type Secret struct {
	kind SecretKind

	// SecretSCRAM
	iterations int
	salt       []byte
	storedKey  []byte // H(ClientKey)
	serverKey  []byte

	md5      string // SecretMD5: "md5" + 32 lowercase hex digits
	password string // SecretPlain
}

// Equal reports whether s and o are the same secret.
func (s Secret) Equal(o Secret) bool {
	return s.kind == o.kind && s.iterations == o.iterations && bytes.Equal(s.salt, o.salt) &&
		bytes.Equal(s.storedKey, o.storedKey) && bytes.Equal(s.serverKey, o.serverKey) &&
		s.md5 == o.md5 && s.password == o.password
}

// Kind says what the secret holds.
func (s Secret) Kind() SecretKind { return s.kind }

// String describes the secret without revealing it.
func (s Secret) String() string {
	if s.kind == SecretSCRAM {
		return fmt.Sprintf("SCRAM-SHA-256 secret (%d iterations)", s.iterations)
	}
	return s.kind.String() + " secret"
}

// GoString is String, so that %#v does not print the secret either.
func (s Secret) GoString() string { return "auth.Secret(" + s.String() + ")" }

// scramPrefix starts a SCRAM-SHA-256 secret in PostgreSQL's text form.
const scramPrefix = "SCRAM-SHA-256$"

// ParseSecret reads a secret in the form PostgreSQL keeps in
// pg_authid.rolpassword and PgBouncer in userlist.txt:
//
//	SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>  (base64)
//	md5<32 hex digits>
//	anything else: the password in clear text
//
// As in PostgreSQL, "md5" followed by something other than 32 lowercase
// hex digits is a clear-text password. A malformed SCRAM secret and the
// empty string are errors.
func ParseSecret(s string) (Secret, error) {
	switch {
	case s == "":
		return Secret{}, errors.New("empty secret")
	case strings.HasPrefix(s, scramPrefix):
		return parseSCRAMSecret(s)
	case isMD5Hash(s):
		return Secret{kind: SecretMD5, md5: s}, nil
	}
	return Secret{kind: SecretPlain, password: s}, nil
}

func isMD5Hash(s string) bool {
	if len(s) != 35 || !strings.HasPrefix(s, "md5") {
		return false
	}
	for _, c := range s[3:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func parseSCRAMSecret(s string) (Secret, error) {
	bad := func(why string) (Secret, error) {
		return Secret{}, fmt.Errorf("malformed SCRAM-SHA-256 secret: %s", why)
	}
	rest := s[len(scramPrefix):]
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
	}
	iterText, saltText, ok1 := strings.Cut(params, ":")
	storedText, serverText, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return bad("want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
	}
	iter, err := strconv.Atoi(iterText)
	if err != nil || iter < 1 {
		return bad("invalid iteration count " + strconv.Quote(iterText))
	}
	salt, err := base64.StdEncoding.DecodeString(saltText)
	if err != nil || len(salt) == 0 {
		return bad("invalid salt")
	}
	stored, err := base64.StdEncoding.DecodeString(storedText)
	if err != nil || len(stored) != keyLen {
		return bad("invalid StoredKey")
	}
	server, err := base64.StdEncoding.DecodeString(serverText)
	if err != nil || len(server) != keyLen {
		return bad("invalid ServerKey")
	}
	return Secret{kind: SecretSCRAM, iterations: iter, salt: salt, storedKey: stored, serverKey: server}, nil
}

// NewSCRAMSecret derives a SCRAM-SHA-256 secret from a password, as
// PostgreSQL does for password_encryption = scram-sha-256. A nil salt
// means 16 random bytes, PostgreSQL's length.
func NewSCRAMSecret(password string, salt []byte, iterations int) (Secret, error) {
	if iterations < 1 {
		return Secret{}, fmt.Errorf("SCRAM iteration count %d is below 1", iterations)
	}
	if salt == nil {
		salt = make([]byte, 16)
		_, _ = rand.Read(salt) // never fails since Go 1.24
	}
	if len(salt) == 0 {
		return Secret{}, errors.New("empty SCRAM salt")
	}
	salted, err := saltedPassword(password, salt, iterations)
	if err != nil {
		return Secret{}, err
	}
	return scramSecretFromSalted(salted, salt, iterations), nil
}

func scramSecretFromSalted(salted, salt []byte, iterations int) Secret {
	return Secret{
		kind:       SecretSCRAM,
		iterations: iterations,
		salt:       bytes.Clone(salt),
		storedKey:  hashSHA256(clientKeyOf(salted)),
		serverKey:  serverKeyOf(salted),
	}
}

// Encode returns the secret in the text form ParseSecret reads, the one
// PostgreSQL stores in pg_authid and PgBouncer reads from userlist.txt.
// The result is secret material: keep it out of logs.
func (s Secret) Encode() string {
	b64 := base64.StdEncoding.EncodeToString
	switch s.kind {
	case SecretSCRAM:
		return fmt.Sprintf("%s%d:%s$%s:%s", scramPrefix, s.iterations, b64(s.salt), b64(s.storedKey), b64(s.serverKey))
	case SecretMD5:
		return s.md5
	case SecretPlain:
		return s.password
	}
	return ""
}

// md5Hash is PostgreSQL's stored md5 hash of a password for a user.
func md5Hash(password, user string) string {
	sum := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(sum[:])
}

// md5Response is the client's answer to an md5 challenge: the stored
// hash (with its "md5" prefix) hashed again with the salt.
func md5Response(hash string, salt [4]byte) string {
	h := md5.New()
	h.Write([]byte(hash[3:]))
	h.Write(salt[:])
	return "md5" + hex.EncodeToString(h.Sum(nil))
}

// constantTimeEqual compares two strings without leaking where they differ.
func constantTimeEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// LoadAuthFile reads a PgBouncer userlist.txt: one user per line, as
//
//	"user" "secret"
//
// where a doubled quote ("") inside quotes stands for one quote, the
// secret is anything ParseSecret reads, and lines whose first non-blank
// character is ; or # are comments. A line that does not parse, or a user
// listed twice, is an error naming the line.
func LoadAuthFile(path string) (map[string]Secret, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	users, err := parseUserlist(string(data))
	if err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	return users, nil
}

func parseUserlist(data string) (map[string]Secret, error) {
	users := make(map[string]Secret)
	for i, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == ';' || line[0] == '#' {
			continue
		}
		user, rest, err := quotedField(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: user: %w", i+1, err)
		}
		if user == "" {
			return nil, fmt.Errorf("line %d: empty user name", i+1)
		}
		if rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
			return nil, fmt.Errorf("line %d: want \"user\" \"secret\"", i+1)
		}
		secretText, rest, err := quotedField(strings.TrimLeft(rest, " \t"))
		if err != nil {
			return nil, fmt.Errorf("line %d: secret of %q: %w", i+1, user, err)
		}
		if rest = strings.TrimSpace(rest); rest != "" && rest[0] != '#' && rest[0] != ';' {
			return nil, fmt.Errorf("line %d: unexpected text after the secret of %q", i+1, user)
		}
		s, err := ParseSecret(secretText)
		if err != nil {
			return nil, fmt.Errorf("line %d: secret of %q: %w", i+1, user, err)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("line %d: user %q is listed twice", i+1, user)
		}
		users[user] = s
	}
	return users, nil
}

// quotedField reads a double-quoted string at the start of s, where ""
// stands for one quote, and returns it and the text after it.
func quotedField(s string) (string, string, error) {
	if s == "" || s[0] != '"' {
		return "", "", errors.New("want a double-quoted string")
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '"' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '"' {
			b.WriteByte('"')
			i++
			continue
		}
		return b.String(), s[i+1:], nil
	}
	return "", "", errors.New("unterminated quoted string")
}
