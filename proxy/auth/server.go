package auth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Credentials are what the proxy learned about a client that
// authenticated, enough to log in to servers as that client with Login.
// ClientKey and Password are secret material: String and GoString hide
// them.
type Credentials struct {
	// User is the role name the client authenticated as.
	User string
	// ClientKey is the SCRAM ClientKey, recovered from the client's proof
	// (or derived from a clear-text password). With a SCRAM Secret of the
	// same salt and iteration count it answers a server's SCRAM challenge.
	ClientKey []byte
	// Secret is the user's secret at the proxy; an md5 hash in it answers
	// a server's md5 challenge.
	Secret Secret
	// Password is the password in clear, when the client sent it (method
	// password) or the secret is one. It answers any challenge.
	Password string
}

// String describes the credentials without revealing secrets.
func (c Credentials) String() string {
	return fmt.Sprintf("credentials of %q (%s, client key: %t, password: %t)",
		c.User, c.Secret, c.ClientKey != nil, c.password() != "")
}

// GoString is String, so that %#v hides the secrets too.
func (c Credentials) GoString() string { return "auth." + c.String() }

// Equal reports whether c and o log in the same way.
func (c Credentials) Equal(o Credentials) bool {
	return c.User == o.User && bytes.Equal(c.ClientKey, o.ClientKey) && c.Password == o.Password && c.Secret.Equal(o.Secret)
}

// password returns the clear-text password, if the credentials hold one.
func (c Credentials) password() string {
	if c.Password != "" {
		return c.Password
	}
	if c.Secret.kind == SecretPlain {
		return c.Secret.password
	}
	return ""
}

// mockKey makes mock SCRAM secrets for unknown users. It is random per
// process, so the mock salt of a name is stable for the process's life
// (asking twice does not tell a real user from an unknown one) and cannot
// be computed from outside. PostgreSQL uses its cluster-wide mock nonce
// the same way.
var mockKey = func() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return b
}()

// mockSecret is a SCRAM secret for a user the proxy cannot authenticate:
// it looks like a real one (16-byte salt, 4096 iterations) and no proof
// matches it, since the exchange is doomed anyway.
func mockSecret(user string) Secret {
	return Secret{
		kind:       SecretSCRAM,
		iterations: defaultIterations,
		salt:       hmacSHA256(mockKey, "salt\x00", user)[:16],
		storedKey:  hmacSHA256(mockKey, "stored\x00", user),
		serverKey:  hmacSHA256(mockKey, "server\x00", user),
	}
}

// Authenticate verifies the client at the proxy with method m against the
// user's secret s. lookupErr is the error the secret lookup returned, if
// any: Authenticate then still runs the exchange, with a mock secret, and
// fails it, so that an unknown user or a broken auth query cannot be told
// from a wrong password by the messages exchanged.
//
// rw carries backend messages out and frontend messages in; the caller
// has read the StartupMessage. Authenticate reads exactly the messages of
// the exchange and does not send AuthenticationOk: the caller sends it
// with the rest of the startup. When rw is a net.Conn, ctx bounds the
// exchange through its deadline, which is cleared on return.
//
// By method:
//   - scram-sha-256: AuthenticationSASL offering only SCRAM-SHA-256, never
//     SCRAM-SHA-256-PLUS, since the proxy terminates TLS: a client that
//     requires channel binding fails with its driver's own error. Credentials
//     get the ClientKey.
//   - md5: an md5 challenge with a random salt when the secret is an md5
//     hash or a password; SCRAM otherwise, as PostgreSQL does (an unknown
//     user, too, gets SCRAM, PostgreSQL's default password_encryption).
//   - password: AuthenticationCleartextPassword; the password is checked
//     against any kind of secret and returned in the Credentials.
//   - trust: nothing is exchanged.
//   - reject, or an unknown method: 28000.
//
// A failed verification returns an *Error with SQLSTATE 28P01 and
// PostgreSQL's message, "password authentication failed for user ...",
// whose cause (errors.Unwrap) says why for the log: ErrWrongPassword,
// lookupErr, or a secret unusable with the method. A malformed exchange
// returns an *Error with 08P01. A client that hangs up returns a plain
// error.
func Authenticate(ctx context.Context, rw io.ReadWriter, user string, m Method, s Secret, lookupErr error) (Credentials, error) {
	if m == MethodTrust {
		return Credentials{User: user, Secret: s}, nil // nothing read or written: nothing to watch
	}
	stop := watchContext(ctx, rw)
	defer stop()
	if lookupErr == nil && s.kind == SecretNone && m != MethodTrust && m != MethodReject {
		lookupErr = fmt.Errorf("%w: %q", ErrUnknownUser, user)
	}
	a := exchange{ctx: ctx, rw: rw, user: user}
	switch m {
	case MethodSCRAM:
		return a.scram(s, lookupErr)
	case MethodMD5:
		if lookupErr == nil && (s.kind == SecretMD5 || s.kind == SecretPlain) {
			return a.md5(s)
		}
		return a.scram(s, lookupErr)
	case MethodPassword:
		return a.cleartext(s, lookupErr)
	case MethodReject:
		return Credentials{}, &Error{Severity: "FATAL", Code: CodeInvalidAuthSpec,
			Message: `pg_hba.conf rejects connection for user "` + user + `"`}
	}
	return Credentials{}, &Error{Severity: "FATAL", Code: CodeInvalidAuthSpec,
		Message: `pg_hba.conf rejects connection for user "` + user + `"`,
		cause:   fmt.Errorf("unknown authentication method %q", m)}
}

// RejectError is the error PostgreSQL gives when pg_hba.conf rejects a
// connection, for a caller that knows the client's address and database
// (Authenticate with MethodReject knows only the user). addr nil means a
// Unix socket.
func RejectError(addr net.IP, user, database string, tls bool) *Error {
	enc := "no encryption"
	if tls {
		enc = "SSL encryption"
	}
	host := "[local]"
	if addr != nil {
		host = addr.String()
	}
	return &Error{Severity: "FATAL", Code: CodeInvalidAuthSpec,
		Message: fmt.Sprintf(`pg_hba.conf rejects connection for host "%s", user "%s", database "%s", %s`, host, user, database, enc)}
}

// exchange is one authentication exchange with a client.
type exchange struct {
	ctx  context.Context
	rw   io.ReadWriter
	user string
}

func (a *exchange) send(m encoder) error {
	if err := writeMessage(a.rw, m); err != nil {
		return ioError(a.ctx, "authenticate "+a.user, err)
	}
	return nil
}

// ask sends m and returns the client's answer to it.
func (a *exchange) ask(m encoder) ([]byte, error) {
	if err := a.send(m); err != nil {
		return nil, err
	}
	return a.receive()
}

// askPassword sends m, a request for a password (clear text or md5), and
// returns the password of the client's PasswordMessage.
func (a *exchange) askPassword(m encoder) (string, error) {
	body, err := a.ask(m)
	if err != nil {
		return "", err
	}
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(body); err != nil {
		return "", protocolError("invalid password packet size")
	}
	return pm.Password, nil
}

// receive reads the client's answer, a 'p' message (PasswordMessage,
// SASLInitialResponse or SASLResponse: which one depends on the step).
func (a *exchange) receive() ([]byte, error) {
	typ, body, err := readMessage(a.rw, maxClientAuthMessage)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return nil, e
		}
		return nil, ioError(a.ctx, "authenticate "+a.user+": client closed the connection or stopped answering", err)
	}
	switch typ {
	case 'p':
		return body, nil
	case 'X':
		return nil, fmt.Errorf("authenticate %s: client closed the connection: %w", a.user, io.EOF)
	}
	return nil, protocolError("expected password response, got message type %d", typ)
}

func (a *exchange) scram(s Secret, lookupErr error) (Credentials, error) {
	secret, doomed, cause := s, lookupErr != nil, lookupErr
	switch {
	case doomed:
		secret = mockSecret(a.user)
	case s.kind == SecretPlain:
		// A clear-text secret becomes a SCRAM secret with a salt stable
		// per user, so that repeated attempts look like a stored secret.
		salt := mockSecret(a.user).salt
		salted, err := saltedPassword(s.password, salt, defaultIterations)
		if err != nil {
			return Credentials{}, err
		}
		secret = scramSecretFromSalted(salted, salt, defaultIterations)
	case s.kind != SecretSCRAM:
		secret, doomed = mockSecret(a.user), true
		cause = fmt.Errorf("user %q does not have a valid SCRAM secret (it has an %s secret)", a.user, s.kind)
	}
	body, err := a.ask(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}})
	if err != nil {
		return Credentials{}, err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return Credentials{}, protocolError("malformed SASLInitialResponse message")
	}
	if initial.AuthMechanism != scramMechanism {
		e := protocolError("client selected an invalid SASL authentication mechanism")
		if initial.AuthMechanism == scramPlusMechanism {
			e.Detail = "pgrouter terminates TLS and cannot offer channel binding."
		}
		return Credentials{}, e
	}
	srv := newScramServer(secret, doomed)
	serverFirst, err := srv.first(string(initial.Data))
	if err != nil {
		return Credentials{}, err
	}
	if body, err = a.ask(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return Credentials{}, err
	}
	var resp pgproto3.SASLResponse
	if err := resp.Decode(body); err != nil {
		return Credentials{}, protocolError("malformed SASLResponse message")
	}
	serverFinal, clientKey, err := srv.final(string(resp.Data))
	if errors.Is(err, ErrWrongPassword) {
		if cause == nil {
			cause = ErrWrongPassword
		}
		return Credentials{}, passwordFailed(a.user, cause)
	}
	if err != nil {
		return Credentials{}, err
	}
	if err := a.send(&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)}); err != nil {
		return Credentials{}, err
	}
	return Credentials{User: a.user, ClientKey: clientKey, Secret: s, Password: s.password}, nil
}

func (a *exchange) md5(s Secret) (Credentials, error) {
	hash := s.md5
	if s.kind == SecretPlain {
		hash = md5Hash(s.password, a.user)
	}
	var salt [4]byte
	_, _ = rand.Read(salt[:]) // never fails since Go 1.24
	pw, err := a.askPassword(&pgproto3.AuthenticationMD5Password{Salt: salt})
	if err != nil {
		return Credentials{}, err
	}
	if !constantTimeEqual(pw, md5Response(hash, salt)) {
		return Credentials{}, passwordFailed(a.user, ErrWrongPassword)
	}
	return Credentials{User: a.user, Secret: s, Password: s.password}, nil
}

func (a *exchange) cleartext(s Secret, lookupErr error) (Credentials, error) {
	pw, err := a.askPassword(&pgproto3.AuthenticationCleartextPassword{})
	if err != nil {
		return Credentials{}, err
	}
	if lookupErr != nil {
		// Spend the time a SCRAM secret would cost, then fail.
		_, _ = saltedPassword(pw, mockSecret(a.user).salt, defaultIterations)
		return Credentials{}, passwordFailed(a.user, lookupErr)
	}
	if pw == "" {
		return Credentials{}, passwordFailed(a.user, errors.New("empty password returned by client"))
	}
	creds := Credentials{User: a.user, Secret: s, Password: pw}
	ok := false
	switch s.kind {
	case SecretSCRAM:
		salted, err := saltedPassword(pw, s.salt, s.iterations)
		if err != nil {
			return Credentials{}, err
		}
		creds.ClientKey = clientKeyOf(salted)
		ok = hmac.Equal(hashSHA256(creds.ClientKey), s.storedKey)
	case SecretMD5:
		ok = constantTimeEqual(md5Hash(pw, a.user), s.md5)
	case SecretPlain:
		ok = constantTimeEqual(pw, s.password)
	}
	if !ok {
		return Credentials{}, passwordFailed(a.user, ErrWrongPassword)
	}
	return creds, nil
}
