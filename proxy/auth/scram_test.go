package auth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestSCRAMRFC7677 runs both sides of the exchange on the example of RFC
// 7677 section 3 (user "user", password "pencil").
func TestSCRAMRFC7677(t *testing.T) {
	const (
		clientNonce = "rOprNGfwEbeRWgbNEkqO"
		serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
		clientFirst = "n,,n=user,r=" + clientNonce
		serverFirst = "r=" + clientNonce + serverNonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
		clientFinal = "c=biws,r=" + clientNonce + serverNonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
		serverFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
	)
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	secret, err := NewSCRAMSecret("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	salted, _ := saltedPassword("pencil", salt, 4096)
	wantClientKey := clientKeyOf(salted)

	t.Run("server", func(t *testing.T) {
		srv := newScramServer(secret, false)
		srv.serverNonce = serverNonce
		got, err := srv.first(clientFirst)
		if err != nil || got != serverFirst {
			t.Fatalf("server-first = %q, %v; want %q", got, err, serverFirst)
		}
		final, clientKey, err := srv.final(clientFinal)
		if err != nil || final != serverFinal {
			t.Fatalf("server-final = %q, %v; want %q", final, err, serverFinal)
		}
		if !bytes.Equal(clientKey, wantClientKey) {
			t.Fatalf("recovered ClientKey %x, want %x", clientKey, wantClientKey)
		}
	})
	for _, tc := range []struct {
		name string
		c    scramClient
	}{
		{"client with password", scramClient{password: "pencil", hasPassword: true}},
		{"client with ClientKey", scramClient{clientKey: wantClientKey, secret: secret}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.clientNonce = clientNonce
			c.firstMessage()
			c.clientFirstBare = "n=user,r=" + clientNonce // the RFC names the user; PostgreSQL clients do not
			got, err := c.finalMessage(serverFirst)
			if err != nil || got != clientFinal {
				t.Fatalf("client-final = %q, %v; want %q", got, err, clientFinal)
			}
			if err := c.checkFinal(serverFinal); err != nil {
				t.Fatal(err)
			}
			if err := c.checkFinal("v=" + base64.StdEncoding.EncodeToString(make([]byte, 32))); err == nil {
				t.Fatal("a forged server signature was accepted")
			}
		})
	}
}

// msg is one message as sent on the wire.
type msg struct {
	typ  byte
	body []byte
}

func splitMessages(t *testing.T, b []byte) []msg {
	t.Helper()
	var out []msg
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("truncated message: %q", b)
		}
		n := int(binary.BigEndian.Uint32(b[1:]))
		out = append(out, msg{typ: b[0], body: b[5 : 1+n]})
		b = b[1+n:]
	}
	return out
}

// authCode is the request code of an Authentication message, or -1.
func (m msg) authCode() int {
	if m.typ != 'R' || len(m.body) < 4 {
		return -1
	}
	return int(binary.BigEndian.Uint32(m.body))
}

// errorMessage is the ErrorResponse the proxy sends for an *Error.
func errorMessage(e *Error) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: e.Severity, SeverityUnlocalized: e.Severity,
		Code: e.Code, Message: e.Message, Detail: e.Detail, Hint: e.Hint}
}

// exchangeResult is what both sides of runExchange saw.
type exchangeResult struct {
	creds    Credentials
	authErr  error // Authenticate's
	loginErr error // Login's
	sent     []msg // what the server side sent
}

// runExchange runs Authenticate on one end of a pipe and Login with
// client on the other. Like the proxy, the server side then sends
// AuthenticationOk or the ErrorResponse of the failure.
func runExchange(t *testing.T, user string, m Method, s Secret, lookupErr error, client Credentials) exchangeResult {
	t.Helper()
	cc, sc := net.Pipe()
	deadline := time.Now().Add(20 * time.Second)
	_ = cc.SetDeadline(deadline)
	_ = sc.SetDeadline(deadline)
	var rec bytes.Buffer
	var res exchangeResult
	var wg sync.WaitGroup
	wg.Go(func() {
		defer sc.Close()
		w := io.MultiWriter(sc, &rec)
		rw := struct {
			io.Reader
			io.Writer
		}{sc, w}
		res.creds, res.authErr = Authenticate(context.Background(), rw, user, m, s, lookupErr)
		var e *Error
		switch {
		case res.authErr == nil:
			_ = writeMessage(w, &pgproto3.AuthenticationOk{})
		case errors.As(res.authErr, &e):
			_ = writeMessage(w, errorMessage(e))
		}
	})
	res.loginErr = Login(cc, client)
	cc.Close()
	wg.Wait()
	res.sent = splitMessages(t, rec.Bytes())
	return res
}

func mustSCRAM(t *testing.T, password string, saltLen, iterations int) Secret {
	t.Helper()
	salt := bytes.Repeat([]byte{byte(saltLen)}, saltLen)
	s, err := NewSCRAMSecret(password, salt, iterations)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustParse(t *testing.T, text string) Secret {
	t.Helper()
	s, err := ParseSecret(text)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAuthenticateLoginRoundTrip authenticates Login (holding the
// password, as a driver does) at Authenticate, for secrets of every kind,
// salts and iteration counts, and then logs in a second time with only the
// Credentials Authenticate returned, as the proxy does towards a server.
func TestAuthenticateLoginRoundTrip(t *testing.T) {
	const user, pw = "alice", "correct horse battery staple"
	for _, tc := range []struct {
		name       string
		method     Method
		secret     Secret
		wantCodes  []int // authentication requests the server sends, AuthenticationOk included
		wantKey    bool  // Credentials carry a ClientKey
		wantPasswd bool  // Credentials carry the password
	}{
		{"scram 4096 iterations 16-byte salt", MethodSCRAM, mustSCRAM(t, pw, 16, 4096), []int{10, 11, 12, 0}, true, false},
		{"scram 10000 iterations 8-byte salt", MethodSCRAM, mustSCRAM(t, pw, 8, 10000), []int{10, 11, 12, 0}, true, false},
		{"scram 1 iteration 32-byte salt", MethodSCRAM, mustSCRAM(t, pw, 32, 1), []int{10, 11, 12, 0}, true, false},
		{"scram with plaintext secret", MethodSCRAM, mustParse(t, pw), []int{10, 11, 12, 0}, true, true},
		{"md5 rule with scram secret runs scram", MethodMD5, mustSCRAM(t, pw, 16, 4096), []int{10, 11, 12, 0}, true, false},
		{"md5", MethodMD5, mustParse(t, md5Hash(pw, user)), []int{5, 0}, false, false},
		{"md5 with plaintext secret", MethodMD5, mustParse(t, pw), []int{5, 0}, false, true},
		{"password with scram secret", MethodPassword, mustSCRAM(t, pw, 16, 4096), []int{3, 0}, true, true},
		{"password with md5 secret", MethodPassword, mustParse(t, md5Hash(pw, user)), []int{3, 0}, false, true},
		{"password with plaintext secret", MethodPassword, mustParse(t, pw), []int{3, 0}, false, true},
		{"trust", MethodTrust, Secret{}, []int{0}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := runExchange(t, user, tc.method, tc.secret, nil, Credentials{User: user, Password: pw})
			if res.authErr != nil || res.loginErr != nil {
				t.Fatalf("Authenticate: %v; Login: %v", res.authErr, res.loginErr)
			}
			var codes []int
			for _, m := range res.sent {
				codes = append(codes, m.authCode())
			}
			if !equalInts(codes, tc.wantCodes) {
				t.Fatalf("server sent authentication codes %v, want %v", codes, tc.wantCodes)
			}
			creds := res.creds
			if creds.User != user || (creds.ClientKey != nil) != tc.wantKey || (creds.Password != "") != tc.wantPasswd {
				t.Fatalf("credentials %v: want client key %t, password %t", creds, tc.wantKey, tc.wantPasswd)
			}
			if tc.wantKey && tc.secret.Kind() == SecretSCRAM {
				salted, _ := saltedPassword(pw, tc.secret.salt, tc.secret.iterations)
				if !bytes.Equal(creds.ClientKey, clientKeyOf(salted)) {
					t.Fatalf("ClientKey %x, want %x", creds.ClientKey, clientKeyOf(salted))
				}
			}
			if tc.method == MethodTrust {
				return
			}
			// The proxy logging in elsewhere with what it learned: without
			// the password, unless the client gave it in clear.
			if tc.method != MethodPassword {
				creds.Password = ""
			}
			again := runExchange(t, user, tc.method, tc.secret, nil, creds)
			if again.authErr != nil || again.loginErr != nil {
				t.Fatalf("login with the recovered credentials: Authenticate: %v; Login: %v", again.authErr, again.loginErr)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFailuresLookAlike checks that a wrong password, an unknown user, a
// failed auth query and a secret unusable with SCRAM give the client the
// same messages (count, types, salt length, iteration count) and the same
// error, while the cause stays in the chain for the log.
func TestFailuresLookAlike(t *testing.T) {
	const user = "alice"
	secret := mustSCRAM(t, "right", 16, 4096)
	queryErr := errors.Join(ErrAuthQuery, errors.New(`relation "pgrouter.user_lookup" does not exist`))
	cases := []struct {
		name      string
		method    Method
		secret    Secret
		lookupErr error
		cause     error
	}{
		{"wrong password", MethodSCRAM, secret, nil, ErrWrongPassword},
		{"unknown user", MethodSCRAM, Secret{}, ErrUnknownUser, ErrUnknownUser},
		{"unknown user without lookup error", MethodSCRAM, Secret{}, nil, ErrUnknownUser},
		{"auth query failed", MethodSCRAM, Secret{}, queryErr, ErrAuthQuery},
		{"md5 secret under scram rule", MethodSCRAM, mustParse(t, md5Hash("right", user)), nil, nil},
		{"unknown user under md5 rule", MethodMD5, Secret{}, ErrUnknownUser, ErrUnknownUser},
	}
	var first []msg
	var firstSalt string
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := runExchange(t, user, tc.method, tc.secret, tc.lookupErr, Credentials{User: user, Password: "wrong"})
			var e *Error
			if !errors.As(res.authErr, &e) || e.Code != CodeInvalidPassword || e.Message != `password authentication failed for user "alice"` || e.Detail != "" || e.Hint != "" {
				t.Fatalf("Authenticate: %v, want 28P01 password authentication failed", res.authErr)
			}
			if tc.cause != nil && !errors.Is(res.authErr, tc.cause) {
				t.Fatalf("Authenticate: %v does not wrap %v", res.authErr, tc.cause)
			}
			var le *Error
			if !errors.As(res.loginErr, &le) || le.Code != CodeInvalidPassword || le.Message != e.Message || len(le.Fields) != 4 {
				t.Fatalf("client saw %v, want the same 28P01 with severity, code and message only", res.loginErr)
			}
			if len(res.sent) != 3 || res.sent[0].authCode() != 10 || res.sent[1].authCode() != 11 || res.sent[2].typ != 'E' {
				t.Fatalf("server sent %d messages %v, want SASL, SASLContinue, ErrorResponse", len(res.sent), res.sent)
			}
			attrs := strings.Split(string(res.sent[1].body[4:]), ",")
			salt, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(attrs[1], "s="))
			if len(salt) != 16 || attrs[2] != "i=4096" {
				t.Fatalf("server-first %v: want a 16-byte salt and 4096 iterations", attrs)
			}
			if i == 0 {
				first, firstSalt = res.sent, attrs[1]
				return
			}
			if !bytes.Equal(res.sent[0].body, first[0].body) || !bytes.Equal(res.sent[2].body, first[2].body) {
				t.Fatal("messages differ from the wrong-password case")
			}
			if tc.secret.Kind() == SecretNone && attrs[1] == firstSalt {
				t.Fatal("mock salt equals the real one")
			}
		})
	}
	// The mock salt of a name does not change between attempts, as a
	// stored secret's would not.
	a := runExchange(t, "nobody", MethodSCRAM, Secret{}, ErrUnknownUser, Credentials{User: "nobody", Password: "x"})
	b := runExchange(t, "nobody", MethodSCRAM, Secret{}, ErrUnknownUser, Credentials{User: "nobody", Password: "y"})
	saltOf := func(r exchangeResult) string { return strings.Split(string(r.sent[1].body[4:]), ",")[1] }
	if saltOf(a) != saltOf(b) {
		t.Fatalf("mock salt changed between attempts: %s, %s", saltOf(a), saltOf(b))
	}

	// The same holds for the other methods: the wrong password and the
	// unknown user exchange the same messages.
	for _, m := range []Method{MethodMD5, MethodPassword} {
		s := mustParse(t, md5Hash("right", user))
		wrong := runExchange(t, user, m, s, nil, Credentials{User: user, Password: "wrong"})
		var e *Error
		if !errors.As(wrong.authErr, &e) || e.Code != CodeInvalidPassword || len(wrong.sent) != 2 {
			t.Fatalf("%s wrong password: %v, %d messages", m, wrong.authErr, len(wrong.sent))
		}
	}
	unknownPw := runExchange(t, user, MethodPassword, Secret{}, ErrUnknownUser, Credentials{User: user, Password: "wrong"})
	if !errors.Is(unknownPw.authErr, ErrUnknownUser) || len(unknownPw.sent) != 2 || unknownPw.sent[0].authCode() != 3 {
		t.Fatalf("password, unknown user: %v, %d messages", unknownPw.authErr, len(unknownPw.sent))
	}
}

// scriptedClient sends raw client messages instead of running Login.
func scriptedServer(t *testing.T, m Method, s Secret, client func(rw io.ReadWriter)) error {
	t.Helper()
	cc, sc := net.Pipe()
	_ = cc.SetDeadline(time.Now().Add(10 * time.Second))
	_ = sc.SetDeadline(time.Now().Add(10 * time.Second))
	var wg sync.WaitGroup
	wg.Go(func() {
		defer cc.Close()
		client(cc)
	})
	_, err := Authenticate(context.Background(), sc, "alice", m, s, nil)
	sc.Close()
	wg.Wait()
	return err
}

func TestAuthenticateRefusals(t *testing.T) {
	secret := mustSCRAM(t, "pw", 16, 4096)
	send := func(rw io.ReadWriter, msgs ...encoder) {
		for _, m := range msgs {
			if _, _, err := readMessage(rw, 1<<20); err != nil {
				return
			}
			if err := writeMessage(rw, m); err != nil {
				return
			}
		}
	}
	for _, tc := range []struct {
		name   string
		method Method
		client func(io.ReadWriter)
		code   string
		msg    string
	}{
		{"reject", MethodReject, func(io.ReadWriter) {}, CodeInvalidAuthSpec, `pg_hba.conf rejects connection for user "alice"`},
		{"unknown method", Method("ident"), func(io.ReadWriter) {}, CodeInvalidAuthSpec, "pg_hba.conf rejects"},
		{"channel binding mechanism", MethodSCRAM, func(rw io.ReadWriter) {
			send(rw, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
		}, CodeProtocolViolation, "client selected an invalid SASL authentication mechanism"},
		{"channel binding data", MethodSCRAM, func(rw io.ReadWriter) {
			send(rw, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
		}, CodeProtocolViolation, "malformed SCRAM message"},
		{"authzid", MethodSCRAM, func(rw io.ReadWriter) {
			send(rw, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,a=bob,n=,r=abc")})
		}, "0A000", "authorization identity"},
		{"bad nonce", MethodSCRAM, func(rw io.ReadWriter) {
			send(rw, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=a b")})
		}, CodeProtocolViolation, "malformed SCRAM message"},
		{"final nonce mismatch", MethodSCRAM, func(rw io.ReadWriter) {
			send(rw, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abc")},
				&pgproto3.SASLResponse{Data: []byte("c=biws,r=abcdef,p=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))})
		}, CodeProtocolViolation, "invalid SCRAM response"},
		{"wrong message type", MethodMD5, func(rw io.ReadWriter) {
			send(rw, &pgproto3.Query{String: "SELECT 1"})
		}, CodeProtocolViolation, "expected password response"},
		{"empty password", MethodPassword, func(rw io.ReadWriter) {
			send(rw, &pgproto3.PasswordMessage{Password: ""})
		}, CodeInvalidPassword, "password authentication failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := secret
			if tc.method == MethodMD5 {
				s = mustParse(t, md5Hash("pw", "alice"))
			}
			err := scriptedServer(t, tc.method, s, tc.client)
			var e *Error
			if !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("Authenticate = %v, want %s %q", err, tc.code, tc.msg)
			}
		})
	}
	t.Run("client hangs up", func(t *testing.T) {
		err := scriptedServer(t, MethodSCRAM, secret, func(rw io.ReadWriter) { _, _, _ = readMessage(rw, 1<<20) })
		var e *Error
		if err == nil || errors.As(err, &e) {
			t.Fatalf("Authenticate = %v, want a plain error", err)
		}
	})
	t.Run("context ends a silent client", func(t *testing.T) {
		cc, sc := net.Pipe()
		defer cc.Close()
		defer sc.Close()
		go func() { _, _, _ = readMessage(cc, 1<<20) }() // reads the request, never answers
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := Authenticate(ctx, sc, "alice", MethodSCRAM, secret, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Authenticate = %v, want deadline exceeded", err)
		}
		// The deadline is cleared for the caller.
		go func() { _ = writeMessage(cc, &pgproto3.Sync{}) }()
		_ = sc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := readMessage(sc, 100); err != nil {
			t.Fatalf("conn unusable after Authenticate: %v", err)
		}
	})
	t.Run("reject error with host", func(t *testing.T) {
		e := RejectError(net.ParseIP("10.0.0.1"), "alice", "app", true)
		if e.Code != CodeInvalidAuthSpec || e.Message != `pg_hba.conf rejects connection for host "10.0.0.1", user "alice", database "app", SSL encryption` {
			t.Fatalf("RejectError = %+v", e)
		}
	})
}

// fakeBackend answers Login with canned server messages; what Login writes
// goes to sent.
type fakeBackend struct {
	io.Reader
	sent bytes.Buffer
}

func (f *fakeBackend) Write(p []byte) (int, error) { return f.sent.Write(p) }

func backendBytes(t *testing.T, msgs ...encoder) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func TestLoginCannotAnswer(t *testing.T) {
	scram := mustSCRAM(t, "pw", 16, 4096)
	md5 := mustParse(t, md5Hash("pw", "alice"))
	sasl := &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}}
	for _, tc := range []struct {
		name   string
		creds  Credentials
		server []encoder
		code   string
		msg    string
	}{
		{"scram with only an md5 hash", Credentials{User: "alice", Secret: md5}, []encoder{sasl}, CodeInvalidPassword, "holds only an md5 hash"},
		{"scram without a client key", Credentials{User: "alice", Secret: scram}, []encoder{sasl}, CodeInvalidPassword, "no SCRAM client key"},
		{"md5 with only a scram secret", Credentials{User: "alice", Secret: scram, ClientKey: []byte("k")}, []encoder{&pgproto3.AuthenticationMD5Password{}}, CodeInvalidPassword, "holds only a SCRAM secret"},
		{"cleartext without the password", Credentials{User: "alice", Secret: md5}, []encoder{&pgproto3.AuthenticationCleartextPassword{}}, CodeInvalidPassword, "in clear text"},
		{"gssapi", Credentials{User: "alice", Password: "pw"}, []encoder{&pgproto3.AuthenticationGSS{}}, CodeProtocolViolation, "request code 7"},
		{"no scram mechanism", Credentials{User: "alice", Password: "pw"}, []encoder{&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"OAUTHBEARER"}}}, CodeProtocolViolation, "no SASL mechanism"},
		{"ok before scram ends", Credentials{User: "alice", Password: "pw"}, []encoder{sasl, &pgproto3.AuthenticationOk{}}, CodeProtocolViolation, "before completing the SCRAM exchange"},
		{"server error", Credentials{User: "alice", Password: "pw"}, []encoder{&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "53300", Message: "sorry, too many clients already"}}, "53300", "sorry, too many clients already"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeBackend{Reader: bytes.NewReader(backendBytes(t, tc.server...))}
			err := Login(f, tc.creds)
			var e *Error
			if !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("Login = %v, want %s %q", err, tc.code, tc.msg)
			}
			if tc.code == "53300" && e.Fields['M'] != tc.msg {
				t.Fatalf("server fields not kept: %v", e.Fields)
			}
		})
	}
}

// TestLoginSecretMismatch: a client key checked against one secret cannot
// answer a server that holds another (the password was set again).
func TestLoginSecretMismatch(t *testing.T) {
	old := mustSCRAM(t, "pw", 16, 4096)
	res := runExchange(t, "alice", MethodSCRAM, old, nil, Credentials{User: "alice", Password: "pw"})
	if res.authErr != nil || res.loginErr != nil {
		t.Fatal(res.authErr, res.loginErr)
	}
	creds := res.creds
	creds.Password = ""
	for _, newer := range []Secret{mustSCRAM(t, "pw", 17, 4096), mustSCRAM(t, "pw", 16, 5000)} {
		again := runExchange(t, "alice", MethodSCRAM, newer, nil, creds)
		var e *Error
		if !errors.As(again.loginErr, &e) || e.Code != CodeInvalidPassword || !strings.Contains(e.Message, "does not match the server's") {
			t.Fatalf("Login = %v, want 28P01 naming the secret mismatch", again.loginErr)
		}
	}
}

// TestLoginLeavesTheRestUnread: Login stops right after AuthenticationOk.
func TestLoginLeavesTheRestUnread(t *testing.T) {
	rest := backendBytes(t,
		&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"},
		&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	r := bytes.NewReader(append(backendBytes(t, &pgproto3.NoticeResponse{Message: "hi"}, &pgproto3.AuthenticationOk{}), rest...))
	if err := Login(&fakeBackend{Reader: r}, Credentials{User: "alice"}); err != nil {
		t.Fatal(err)
	}
	left, _ := io.ReadAll(r)
	if !bytes.Equal(left, rest) {
		t.Fatalf("left %q, want %q", left, rest)
	}
}
