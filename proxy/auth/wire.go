package auth

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Message size limits during authentication. A client's answer is at most
// PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH; a server's error may be longer.
const (
	maxClientAuthMessage = 65535
	maxServerAuthMessage = 1 << 20
)

// readMessage reads exactly one message: the type byte, the length and
// the body, and nothing after it, so that whoever reads the connection
// next (the caller, once authentication is done) misses nothing.
// pgproto3's Frontend and Backend read ahead into a buffer of their own,
// which is why they are used here only to encode and decode bodies.
func readMessage(r io.Reader, max int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n-4 > max {
		return 0, nil, protocolError("invalid message length %d", n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

type encoder interface {
	Encode(dst []byte) ([]byte, error)
}

func writeMessage(w io.Writer, m encoder) error {
	b, err := m.Encode(nil)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// errorResponse turns the body of a server's ErrorResponse into an *Error
// that keeps every field.
func errorResponse(body []byte) *Error {
	var er pgproto3.ErrorResponse
	if err := er.Decode(body); err != nil {
		return protocolError("malformed ErrorResponse from the server: %v", err)
	}
	fields := map[byte]string{}
	for b := body; len(b) > 1; {
		t := b[0]
		end := 1
		for end < len(b) && b[end] != 0 {
			end++
		}
		if end == len(b) {
			break
		}
		fields[t] = string(b[1:end])
		b = b[end+1:]
	}
	sev := er.SeverityUnlocalized
	if sev == "" {
		sev = er.Severity
	}
	return &Error{Severity: sev, Code: er.Code, Message: er.Message, Detail: er.Detail, Hint: er.Hint, Fields: fields}
}

// watchContext makes blocking reads and writes on rw end when ctx does, if
// rw has deadlines (a net.Conn). The returned func stops the watch and
// clears the deadline; call it before returning rw to its owner.
func watchContext(ctx context.Context, rw any) (stop func()) {
	d, ok := rw.(interface{ SetDeadline(time.Time) error })
	if !ok || ctx.Done() == nil {
		return func() {}
	}
	// Only the context's own end sets the deadline: a deadline copied from
	// ctx.Deadline() can fire before ctx.Err() is set, and the caller could
	// not tell a silent client from a slow clock.
	var fired sync.WaitGroup
	fired.Add(1)
	stopAfter := context.AfterFunc(ctx, func() {
		defer fired.Done()
		_ = d.SetDeadline(time.Unix(1, 0))
	})
	return func() {
		if !stopAfter() {
			fired.Wait() // the deadline is being set: clear it after
		}
		_ = d.SetDeadline(time.Time{})
	}
}

// ioError explains a failed read or write, naming the context's end when
// that is what broke it.
func ioError(ctx context.Context, step string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w (%v)", step, context.Cause(ctx), err)
	}
	return fmt.Errorf("%s: %w", step, err)
}
