package auth

import (
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Authentication request codes of AuthenticationXXX messages.
const (
	authOK                = 0
	authCleartextPassword = 3
	authMD5Password       = 5
	authSASL              = 10
	authSASLContinue      = 11
	authSASLFinal         = 12
)

// Login logs in to a PostgreSQL server as creds.User without the
// client's password, on rw whose StartupMessage the caller has sent. It
// answers the server's request:
//
//   - AuthenticationSASL: SCRAM-SHA-256 (never -PLUS: the proxy binds no
//     channel), with the password if the credentials hold one, else with
//     the ClientKey and the SCRAM secret it was checked against. The
//     client proof is ClientKey XOR HMAC(StoredKey, AuthMessage), and the
//     server's signature is checked with the ServerKey.
//   - AuthenticationMD5Password: from the secret's md5 hash, or the password.
//   - AuthenticationCleartextPassword: only with the password.
//
// It returns nil once AuthenticationOk arrives, having read nothing after
// it: ParameterStatus, BackendKeyData and ReadyForQuery are the caller's
// to read. NoticeResponse and NegotiateProtocolVersion before it are
// skipped.
//
// A server that refuses the login gives an *Error with its ErrorResponse
// fields (Fields holds them all). When the credentials cannot answer what
// the server asks (SCRAM with only an md5 hash, a secret whose salt
// differs from the server's, a clear-text request without the password),
// the *Error has SQLSTATE 28P01 and a message saying why; a method the
// proxy does not speak at all (GSSAPI, SSPI) gives 08P01. I/O errors are
// returned as they are; deadlines are the caller's to set on rw.
func Login(rw io.ReadWriter, creds Credentials) error {
	var sc *scramClient
	scramDone := false
	for {
		typ, body, err := readMessage(rw, maxServerAuthMessage)
		if err != nil {
			return err
		}
		switch typ {
		case 'E':
			return errorResponse(body)
		case 'N', 'v':
			continue
		case 'R':
		default:
			return protocolError("unexpected message type %q from the server during authentication", typ)
		}
		if len(body) < 4 {
			return protocolError("invalid authentication request from the server")
		}
		switch code := binary.BigEndian.Uint32(body); code {
		case authOK:
			if sc != nil && !scramDone {
				return protocolError("server accepted the login before completing the SCRAM exchange")
			}
			return nil

		case authCleartextPassword:
			pw := creds.password()
			if pw == "" {
				return cannotLogin(creds, "the server asks for the password in clear text and pgrouter does not have it",
					"Let the server ask for scram-sha-256 or md5 in pg_hba.conf, or let clients log in to pgrouter with method password.")
			}
			if err := writeMessage(rw, &pgproto3.PasswordMessage{Password: pw}); err != nil {
				return err
			}

		case authMD5Password:
			var req pgproto3.AuthenticationMD5Password
			if err := req.Decode(body); err != nil {
				return protocolError("invalid md5 authentication request from the server")
			}
			hash := ""
			if pw := creds.password(); pw != "" {
				hash = md5Hash(pw, creds.User)
			} else if creds.Secret.kind == SecretMD5 {
				hash = creds.Secret.md5
			}
			if hash == "" {
				return cannotLogin(creds, "the server asks for an md5 password and pgrouter holds only a SCRAM secret",
					"Let the server ask for scram-sha-256 in pg_hba.conf for this user.")
			}
			if err := writeMessage(rw, &pgproto3.PasswordMessage{Password: md5Response(hash, req.Salt)}); err != nil {
				return err
			}

		case authSASL:
			var req pgproto3.AuthenticationSASL
			if err := req.Decode(body); err != nil {
				return protocolError("invalid SASL authentication request from the server")
			}
			if !slices.Contains(req.AuthMechanisms, scramMechanism) {
				return &Error{Severity: "FATAL", Code: CodeProtocolViolation,
					Message: "the server offers no SASL mechanism pgrouter supports (want SCRAM-SHA-256)"}
			}
			sc = &scramClient{clientNonce: newNonce(), secret: creds.Secret}
			switch pw := creds.password(); {
			case pw != "":
				sc.password, sc.hasPassword = pw, true
			case creds.ClientKey != nil && creds.Secret.kind == SecretSCRAM:
				sc.clientKey = creds.ClientKey
			case creds.Secret.kind == SecretMD5:
				return cannotLogin(creds, "the server asks for SCRAM-SHA-256 and pgrouter holds only an md5 hash of the password",
					"Store the password as a SCRAM secret (password_encryption = scram-sha-256) where pgrouter reads it, or let the server ask for md5.")
			default:
				return cannotLogin(creds, "the server asks for SCRAM-SHA-256 and pgrouter has no SCRAM client key: the client did not log in to pgrouter with SCRAM",
					"Use scram-sha-256 for this user in pgrouter's hba rules.")
			}
			if err := writeMessage(rw, &pgproto3.SASLInitialResponse{AuthMechanism: scramMechanism, Data: []byte(sc.firstMessage())}); err != nil {
				return err
			}

		case authSASLContinue:
			if sc == nil || sc.authMessage != "" {
				return protocolError("unexpected SASL continue message from the server")
			}
			final, err := sc.finalMessage(string(body[4:]))
			if errors.Is(err, errSecretMismatch) {
				e := cannotLogin(creds, "the user's SCRAM secret at pgrouter does not match the server's", "Update the auth file, or wait for the auth query's cache to expire.")
				e.Detail = errSecretMismatch.Error()
				return e
			}
			if err != nil {
				return err
			}
			if err := writeMessage(rw, &pgproto3.SASLResponse{Data: []byte(final)}); err != nil {
				return err
			}

		case authSASLFinal:
			if sc == nil || sc.authMessage == "" || scramDone {
				return protocolError("unexpected SASL final message from the server")
			}
			if err := sc.checkFinal(string(body[4:])); err != nil {
				return err
			}
			scramDone = true

		default:
			return &Error{Severity: "FATAL", Code: CodeProtocolViolation,
				Message: "the server asks for an authentication method pgrouter does not support (request code " + strconv.FormatUint(uint64(code), 10) + ")",
				Hint:    "pgrouter logs in to servers with scram-sha-256, md5, password or trust."}
		}
	}
}

// cannotLogin is a 28P01 for credentials that cannot answer the server.
func cannotLogin(creds Credentials, why, hint string) *Error {
	return &Error{Severity: "FATAL", Code: CodeInvalidPassword,
		Message: `pgrouter cannot log in to the server as user "` + creds.User + `": ` + why, Hint: hint}
}
