package auth

// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both sides.
//
// Why not github.com/xdg-go/scram: its server conversation checks the
// client's proof internally and exposes neither the ClientProof nor the
// AuthMessage, so it cannot give us the ClientKey (ClientProof XOR
// HMAC(StoredKey, AuthMessage)) that the proxy needs to log in to servers
// later; and its client derives everything from a password, which the
// proxy does not have. Using it would mean parsing every message a second
// time next to it. What remains, once the messages are parsed, is a few
// HMACs from crypto/hmac and PBKDF2 from crypto/pbkdf2, written out below
// and checked against the RFC 7677 example, pgx, libpq (psql) and
// PostgreSQL itself in the tests.

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/text/secure/precis"
)

const (
	scramMechanism     = "SCRAM-SHA-256"
	scramPlusMechanism = "SCRAM-SHA-256-PLUS"
	keyLen             = sha256.Size
	// nonceLen is the number of random bytes in a nonce (PostgreSQL's
	// SCRAM_RAW_NONCE_LEN), sent base64-encoded.
	nonceLen = 18
	// defaultIterations is PostgreSQL's scram_iterations default, used for
	// secrets the proxy derives itself and for mock exchanges.
	defaultIterations = 4096
)

// saltedPassword is Hi(Normalize(password), salt, i) of RFC 5802.
func saltedPassword(password string, salt []byte, iterations int) ([]byte, error) {
	k, err := pbkdf2.Key(sha256.New, normalizePassword(password), salt, iterations, keyLen)
	if err != nil {
		return nil, fmt.Errorf("scram: %w", err)
	}
	return k, nil
}

// normalizePassword applies SASLprep the way PostgreSQL does: an ASCII
// password is used as is, and a password that SASLprep refuses is used
// unchanged rather than refused. PRECIS OpaqueString (RFC 8265, the
// successor of SASLprep) stands in for SASLprep, as in pgx; the two differ
// only on code points unassigned in Unicode 3.2.
func normalizePassword(p string) string {
	for i := 0; i < len(p); i++ {
		if p[i] >= 0x80 {
			if n, err := precis.OpaqueString.String(p); err == nil {
				return n
			}
			return p
		}
	}
	return p
}

func hmacSHA256(key []byte, msg ...string) []byte {
	m := hmac.New(sha256.New, key)
	for _, s := range msg {
		m.Write([]byte(s))
	}
	return m.Sum(nil)
}

func hashSHA256(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func clientKeyOf(salted []byte) []byte { return hmacSHA256(salted, "Client Key") }
func serverKeyOf(salted []byte) []byte { return hmacSHA256(salted, "Server Key") }

func xorBytes(a, b []byte) []byte {
	out := make([]byte, len(a))
	for i := range a {
		out[i] = a[i] ^ b[i]
	}
	return out
}

func newNonce() string {
	b := make([]byte, nonceLen)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return base64.StdEncoding.EncodeToString(b)
}

// errMalformed is PostgreSQL's "malformed SCRAM message" with a detail.
func errMalformed(detail string) *Error {
	e := protocolError("malformed SCRAM message")
	e.Detail = detail
	return e
}

// validNonce reports whether n is a printable SCRAM nonce: ASCII 0x21 to
// 0x7E without commas.
func validNonce(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c < 0x21 || c > 0x7e || c == ',' {
			return false
		}
	}
	return true
}

// scramServer is the server side of one SCRAM-SHA-256 exchange: first
// answers the client-first-message, final checks the client-final-message
// and recovers the ClientKey. A doomed exchange (unknown user, unusable
// secret) runs the same steps with a mock secret and fails at the end,
// like PostgreSQL's mock authentication.
type scramServer struct {
	secret      Secret // SecretSCRAM
	doomed      bool
	serverNonce string // set by newScramServer; tests replace it

	gs2Header       string
	clientFirstBare string
	serverFirst     string
	nonce           string // client nonce + server nonce
}

func newScramServer(s Secret, doomed bool) *scramServer {
	return &scramServer{secret: s, doomed: doomed, serverNonce: newNonce()}
}

// first parses the client-first-message and returns the server-first-message.
func (s *scramServer) first(msg string) (string, error) {
	// gs2-header = cbind-flag "," [ authzid ] ","
	switch {
	case strings.HasPrefix(msg, "n,"), strings.HasPrefix(msg, "y,"):
		// n: the client does not support channel binding; y: it does but
		// thinks we do not, which is true. Both are fine.
	case strings.HasPrefix(msg, "p="):
		return "", errMalformed("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.")
	default:
		return "", errMalformed("Unexpected channel-binding flag in client-first-message.")
	}
	rest := msg[2:]
	if strings.HasPrefix(rest, "a=") {
		return "", &Error{Severity: "FATAL", Code: "0A000", Message: "client uses authorization identity, but it is not supported"}
	}
	if !strings.HasPrefix(rest, ",") {
		return "", errMalformed("Comma expected after the channel-binding flag.")
	}
	s.gs2Header = msg[:3]
	s.clientFirstBare = rest[1:]
	bare := s.clientFirstBare
	if strings.HasPrefix(bare, "m=") {
		return "", &Error{Severity: "FATAL", Code: "0A000", Message: "client requires an unsupported SCRAM extension"}
	}
	// The user name in n= is ignored, as in PostgreSQL: the user is the
	// one of the startup message (libpq and pgx send it empty).
	if !strings.HasPrefix(bare, "n=") {
		return "", errMalformed("Expected attribute \"n\" in client-first-message.")
	}
	_, afterName, ok := strings.Cut(bare, ",")
	if !ok || !strings.HasPrefix(afterName, "r=") {
		return "", errMalformed("Expected attribute \"r\" in client-first-message.")
	}
	clientNonce, _, _ := strings.Cut(afterName[2:], ",") // extensions after the nonce are ignored
	if !validNonce(clientNonce) {
		return "", errMalformed("Invalid client nonce.")
	}
	s.nonce = clientNonce + s.serverNonce
	s.serverFirst = "r=" + s.nonce + ",s=" + base64.StdEncoding.EncodeToString(s.secret.salt) +
		",i=" + strconv.Itoa(s.secret.iterations)
	return s.serverFirst, nil
}

// final checks the client-final-message. On success it returns the
// server-final-message and the ClientKey recovered from the proof: the
// proof is ClientKey XOR ClientSignature, and the ClientKey is genuine
// when its hash is the StoredKey. A wrong proof returns ErrWrongPassword.
func (s *scramServer) final(msg string) (serverFinal string, clientKey []byte, err error) {
	// client-final-message = "c=" cbind-input "," "r=" nonce ["," extensions] "," "p=" proof
	cbind, rest, ok := strings.Cut(msg, ",")
	if !ok || !strings.HasPrefix(cbind, "c=") {
		return "", nil, errMalformed("Expected attribute \"c\" in client-final-message.")
	}
	if cbind[2:] != base64.StdEncoding.EncodeToString([]byte(s.gs2Header)) {
		return "", nil, protocolError("SCRAM channel binding check failed")
	}
	nonceAttr, _, ok := strings.Cut(rest, ",")
	if !ok || !strings.HasPrefix(nonceAttr, "r=") {
		return "", nil, errMalformed("Expected attribute \"r\" in client-final-message.")
	}
	if nonceAttr[2:] != s.nonce {
		e := protocolError("invalid SCRAM response")
		e.Detail = "Nonce does not match."
		return "", nil, e
	}
	i := strings.LastIndex(msg, ",p=")
	if i < 0 {
		return "", nil, errMalformed("Expected attribute \"p\" in client-final-message.")
	}
	withoutProof := msg[:i]
	proof, err := base64.StdEncoding.DecodeString(msg[i+3:])
	if err != nil || len(proof) != keyLen {
		return "", nil, errMalformed("Malformed proof in client-final-message.")
	}
	authMessage := s.clientFirstBare + "," + s.serverFirst + "," + withoutProof
	clientKey = xorBytes(proof, hmacSHA256(s.secret.storedKey, authMessage))
	if !hmac.Equal(hashSHA256(clientKey), s.secret.storedKey) || s.doomed {
		return "", nil, ErrWrongPassword
	}
	return "v=" + base64.StdEncoding.EncodeToString(hmacSHA256(s.secret.serverKey, authMessage)), clientKey, nil
}

// scramClient is the client side of one SCRAM-SHA-256 exchange, with
// either the password or the ClientKey and the user's SCRAM secret.
type scramClient struct {
	password    string
	hasPassword bool
	clientKey   []byte
	secret      Secret

	clientNonce     string
	clientFirstBare string
	authMessage     string
	serverKey       []byte
}

// firstMessage returns the client-first-message. The gs2 header is "n":
// the proxy does not bind channels (a server that offers
// SCRAM-SHA-256-PLUS accepts plain SCRAM-SHA-256 with "n").
func (c *scramClient) firstMessage() string {
	c.clientFirstBare = "n=,r=" + c.clientNonce
	return "n,," + c.clientFirstBare
}

// finalMessage answers the server-first-message.
func (c *scramClient) finalMessage(serverFirst string) (string, error) {
	attrs := strings.Split(serverFirst, ",")
	if len(attrs) < 3 || !strings.HasPrefix(attrs[0], "r=") || !strings.HasPrefix(attrs[1], "s=") || !strings.HasPrefix(attrs[2], "i=") {
		return "", protocolError("invalid SCRAM server-first-message from the server")
	}
	nonce := attrs[0][2:]
	if !strings.HasPrefix(nonce, c.clientNonce) || len(nonce) == len(c.clientNonce) || !validNonce(nonce) {
		return "", protocolError("invalid SCRAM nonce from the server")
	}
	salt, err := base64.StdEncoding.DecodeString(attrs[1][2:])
	if err != nil || len(salt) == 0 {
		return "", protocolError("invalid SCRAM salt from the server")
	}
	iterations, err := strconv.Atoi(attrs[2][2:])
	if err != nil || iterations < 1 {
		return "", protocolError("invalid SCRAM iteration count from the server")
	}
	var clientKey, storedKey []byte
	switch {
	case c.hasPassword:
		salted, err := saltedPassword(c.password, salt, iterations)
		if err != nil {
			return "", err
		}
		clientKey = clientKeyOf(salted)
		storedKey = hashSHA256(clientKey)
		c.serverKey = serverKeyOf(salted)
	case c.clientKey != nil && c.secret.kind == SecretSCRAM:
		if iterations != c.secret.iterations || !hmac.Equal(salt, c.secret.salt) {
			return "", errSecretMismatch
		}
		clientKey, storedKey, c.serverKey = c.clientKey, c.secret.storedKey, c.secret.serverKey
	default:
		return "", errors.New("scram: no password and no client key") // callers check first
	}
	withoutProof := "c=biws,r=" + nonce // biws is base64("n,,")
	c.authMessage = c.clientFirstBare + "," + serverFirst + "," + withoutProof
	proof := xorBytes(clientKey, hmacSHA256(storedKey, c.authMessage))
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}

// errSecretMismatch: the server's salt or iteration count is not the one
// of the secret the client key was checked against, so the secret changed
// on the server (or the auth file is stale).
var errSecretMismatch = errors.New("the server's SCRAM salt or iteration count differs from the user's secret at the proxy")

// checkFinal verifies the server-final-message: the server proves that it
// knows the ServerKey.
func (c *scramClient) checkFinal(serverFinal string) error {
	if e, ok := strings.CutPrefix(serverFinal, "e="); ok {
		return protocolError("SCRAM error from the server: %s", e)
	}
	v, ok := strings.CutPrefix(serverFinal, "v=")
	if !ok {
		return protocolError("invalid SCRAM server-final-message from the server")
	}
	v, _, _ = strings.Cut(v, ",")
	sig, err := base64.StdEncoding.DecodeString(v)
	if err != nil || !hmac.Equal(sig, hmacSHA256(c.serverKey, c.authMessage)) {
		return protocolError("incorrect server signature in SCRAM exchange")
	}
	return nil
}
