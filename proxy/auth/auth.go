// Package auth authenticates clients at the proxy and logs in to
// PostgreSQL servers on their behalf, for the pooled modes where the proxy
// (not the server) terminates authentication.
//
// The pieces, in the order a session uses them:
//
//   - HBA picks a Method for (database, user, client address, TLS), as the
//     first matching line of a pg_hba.conf does.
//   - Lookup finds the user's Secret: in an auth file (PgBouncer's
//     userlist.txt), else with an auth query run on the primary.
//   - Authenticate runs the exchange with the client and returns its
//     Credentials. After SCRAM they hold the client key, recovered from the
//     client's proof, which lets the proxy answer a server's SCRAM challenge
//     without ever knowing the password.
//   - Login uses the Credentials to answer a server's authentication
//     request, on every server connection the pool opens for that user.
//
// Failures the client must see are *Error values carrying a SQLSTATE and
// PostgreSQL's own message text. An unknown user, a wrong password and a
// failed secret lookup all look the same to the client: 28P01, the same
// message and the same number of messages exchanged. The real cause is in
// the error chain (errors.Is, errors.Unwrap) for the proxy's log.
package auth

import (
	"errors"
	"fmt"
)

// Method is an authentication method, named as in pg_hba.conf.
type Method string

// The methods the proxy can use with a client.
const (
	// MethodSCRAM is SCRAM-SHA-256 without channel binding: the proxy
	// terminates TLS, so it has no channel to bind to the server's.
	MethodSCRAM Method = "scram-sha-256"
	// MethodMD5 asks for an MD5 hash of the password, or runs SCRAM when the
	// user's secret is a SCRAM secret, as PostgreSQL does.
	MethodMD5 Method = "md5"
	// MethodTrust lets the client in without a password.
	MethodTrust Method = "trust"
	// MethodReject refuses the connection.
	MethodReject Method = "reject"
	// MethodPassword asks for the password in clear text.
	MethodPassword Method = "password"
)

// parseMethod validates a pg_hba.conf method name.
func parseMethod(s string) (Method, bool) {
	switch m := Method(s); m {
	case MethodSCRAM, MethodMD5, MethodTrust, MethodReject, MethodPassword:
		return m, true
	}
	return "", false
}

// SQLSTATE codes of the errors this package returns.
const (
	CodeInvalidPassword   = "28P01" // invalid_password
	CodeInvalidAuthSpec   = "28000" // invalid_authorization_specification
	CodeProtocolViolation = "08P01" // protocol_violation
)

// Error is an error the client must see as a PostgreSQL ErrorResponse.
// Severity, Code, Message, Detail and Hint are what the client may be
// told; the cause, when there is one, is for the proxy's log only and is
// reachable with errors.Unwrap. Error() includes the cause, so log it, and
// send only the fields to the client.
type Error struct {
	Severity string // FATAL for everything this package makes
	Code     string // SQLSTATE
	Message  string
	Detail   string
	Hint     string

	// Fields are all the fields of a server's ErrorResponse, keyed by
	// field type ('S', 'C', 'M', ...), when the error came from a server
	// (Login). Nil otherwise.
	Fields map[byte]string

	cause error
}

// Error renders the error for logs, with its cause.
func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s (SQLSTATE %s)", e.Severity, e.Message, e.Code)
	if e.cause != nil {
		s += ": " + e.cause.Error()
	}
	return s
}

// Unwrap returns the internal cause of the error, if any.
func (e *Error) Unwrap() error { return e.cause }

// Sentinel errors, found with errors.Is in an *Error's chain or returned
// by Lookup.
var (
	// ErrUnknownUser means that no secret is known for the user.
	ErrUnknownUser = errors.New("unknown user")
	// ErrAuthQuery means that the auth query could not be run or its
	// result could not be used: a configuration or availability problem
	// of the proxy, never reported to the client as such.
	ErrAuthQuery = errors.New("auth query failed")
	// ErrWrongPassword means the client's password or proof did not match
	// the user's secret.
	ErrWrongPassword = errors.New("wrong password")
)

// passwordFailed is PostgreSQL's answer to every password failure, whatever
// the cause; cause goes to the log.
func passwordFailed(user string, cause error) *Error {
	return &Error{Severity: "FATAL", Code: CodeInvalidPassword,
		Message: `password authentication failed for user "` + user + `"`, cause: cause}
}

func protocolError(format string, args ...any) *Error {
	return &Error{Severity: "FATAL", Code: CodeProtocolViolation, Message: fmt.Sprintf(format, args...)}
}
