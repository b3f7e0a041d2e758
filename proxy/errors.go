package proxy

import (
	"errors"
	"fmt"
	"io"
)

// SQLSTATE codes the proxy itself reports to clients.
const (
	codeProtocolViolation   = "08P01"
	codeConnectionFailure   = "08006"
	codeFeatureNotSupported = "0A000"
	codeInvalidAuthSpec     = "28000"
	codeTooManyConnections  = "53300"
	codeCannotConnectNow    = "57P03"
	codeAdminShutdown       = "57P01"
)

// clientError is an error the client must see as a PostgreSQL
// ErrorResponse. Every refusal the proxy makes goes through one of these so
// that the SQLSTATE is chosen in one place and drivers can act on it.
type clientError struct {
	Severity string // FATAL or ERROR
	Code     string
	Message  string
	Detail   string
	Hint     string
	// Quiet: the client gets no message, only the close, as from
	// PostgreSQL, which logs such an error without answering.
	Quiet bool
}

func (e *clientError) Error() string { return fmt.Sprintf("%s %s: %s", e.Severity, e.Code, e.Message) }

func fatalf(code, format string, args ...any) *clientError {
	return &clientError{Severity: "FATAL", Code: code, Message: fmt.Sprintf(format, args...)}
}

// asClientError returns the clientError inside err, if any.
func asClientError(err error) (*clientError, bool) {
	var ce *clientError
	ok := errors.As(err, &ce)
	return ce, ok
}

// appendErrorResponse encodes e as an ErrorResponse message onto dst.
func appendErrorResponse(dst []byte, e *clientError) []byte {
	start := len(dst)
	dst = append(dst, 'E', 0, 0, 0, 0)
	field := func(t byte, v string) {
		if v != "" {
			dst = append(dst, t)
			dst = append(dst, v...)
			dst = append(dst, 0)
		}
	}
	field('S', e.Severity)
	field('V', e.Severity)
	field('C', e.Code)
	field('M', e.Message)
	field('D', e.Detail)
	field('H', e.Hint)
	dst = append(dst, 0)
	putUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst
}

// writeClientError sends e to the client; errors are ignored because the
// connection is closed right after in every caller.
func writeClientError(w io.Writer, e *clientError) {
	_, _ = w.Write(appendErrorResponse(nil, e))
}

func putUint32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

func getUint32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
