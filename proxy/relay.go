package proxy

import (
	"sync"
)

// maxCapture is the longest message body the scanner copies out for the
// proxy to decode. Every message the relay acts on (ReadyForQuery,
// ParameterStatus, BackendKeyData) fits; longer ones of a watched type are
// forwarded without being decoded.
const maxCapture = 512

// frameScanner follows message boundaries in a byte stream that the relay
// forwards in whole chunks. It sees every header but copies out only the
// bodies of the message types it watches, so forwarding a chunk of many
// messages costs a few comparisons per message and no allocation.
//
// The zero value with watch set is ready; a scanner belongs to one
// direction of one session and is not safe for concurrent use.
type frameScanner struct {
	watch *[256]bool

	hdr  [5]byte
	hdrN int // header bytes of the current message seen so far (5 = in body)
	left int // body bytes of the current message not yet seen

	capturing bool
	body      [maxCapture]byte
	bodyN     int
}

// next consumes bytes of b up to the end of the current header or message.
// It returns how many bytes it consumed and whether a watched message has
// just completed, in which case typ() and msg() describe it.
func (s *frameScanner) next(b []byte) (n int, done bool, err error) {
	if s.hdrN < 5 {
		n = copy(s.hdr[s.hdrN:], b)
		s.hdrN += n
		if s.hdrN < 5 {
			return n, false, nil
		}
		l := getUint32(s.hdr[1:])
		if l < 4 || l > 1<<30 {
			return n, false, fatalf(codeProtocolViolation, "invalid message length %d", l)
		}
		s.left = int(l) - 4
		s.bodyN = 0
		s.capturing = s.watch != nil && s.watch[s.hdr[0]] && s.left <= maxCapture
		if s.left == 0 {
			s.hdrN = 0
			return n, s.capturing, nil
		}
		return n, false, nil
	}
	n = len(b)
	if n > s.left {
		n = s.left
	}
	if s.capturing {
		copy(s.body[s.bodyN:], b[:n])
		s.bodyN += n
	}
	s.left -= n
	if s.left == 0 {
		s.hdrN = 0
		return n, s.capturing, nil
	}
	return n, false, nil
}

// feed scans a whole chunk; only its error matters to a relay that acts
// on nothing but message boundaries.
func (s *frameScanner) feed(b []byte) error {
	for len(b) > 0 {
		k, _, err := s.next(b)
		if err != nil {
			return err
		}
		b = b[k:]
	}
	return nil
}

// typ is the type byte of the message being (or just) scanned.
func (s *frameScanner) typ() byte { return s.hdr[0] }

// msg is the body of the watched message that next just completed. It is
// valid until the following call to next.
func (s *frameScanner) msg() []byte { return s.body[:s.bodyN] }

// atBoundary reports whether the stream is between messages, the only place
// where the proxy may inject a message of its own.
func (s *frameScanner) atBoundary() bool { return s.hdrN == 0 }

// Relay buffer sizes. PostgreSQL itself sends in 8 KiB pieces; results are
// read in bigger chunks so one write carries many rows.
const (
	clientReadBuf = 8 << 10
	serverReadBuf = 16 << 10
)

var (
	clientBufPool = sync.Pool{New: func() any { b := make([]byte, clientReadBuf); return &b }}
	serverBufPool = sync.Pool{New: func() any { b := make([]byte, serverReadBuf); return &b }}
)

// serverWatch lists the backend messages the relay decodes after startup.
var serverWatch = func() *[256]bool {
	var w [256]bool
	w['Z'] = true // ReadyForQuery: transaction status
	return &w
}()
