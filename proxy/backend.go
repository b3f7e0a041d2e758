package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/proxy/pool"
)

// maxStartupMessage caps messages read during the startup phase
// (authentication exchanges, parameter status, errors).
const maxStartupMessage = 1 << 20

var startupReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// Authentication request codes whose answer comes from the client.
const (
	authOK                = 0
	authCleartextPassword = 3
	authMD5Password       = 5
	authGSS               = 7
	authGSSContinue       = 8
	authSSPI              = 9
	authSASL              = 10
	authSASLContinue      = 11
	authSASLFinal         = 12
)

// startServer sends the client's startup message to the server and passes
// the authentication exchange through until the server is ready. The
// server's BackendKeyData reaches the client with a key of the proxy's.
func (sess *session) startServer(sc *pool.ServerConn, version uint32, params []param) error {
	if _, err := sc.Write(encodeStartup(version, params)); err != nil {
		return serverLost(sc, err)
	}
	// The server sends its whole greeting (AuthenticationOk, a dozen
	// ParameterStatus, BackendKeyData, ReadyForQuery) in one packet: read it
	// buffered, not with two syscalls per message.
	br := startupReaders.Get().(*bufio.Reader)
	br.Reset(sc)
	defer func() {
		br.Reset(nil)
		startupReaders.Put(br)
	}()
	out := make([]byte, 0, 1024) // messages for the client, flushed before it must answer
	flush := func() error {
		if len(out) == 0 {
			return nil
		}
		_, err := sess.client.Write(out)
		out = out[:0]
		return err
	}
	for {
		typ, body, err := readMessage(br, maxStartupMessage)
		if err != nil {
			return serverLost(sc, err)
		}
		switch typ {
		case 'R':
			if len(body) < 4 {
				return serverLost(sc, fmt.Errorf("short authentication message"))
			}
			code := getUint32(body)
			if code == authSASL {
				body = withoutChannelBinding(body)
			}
			out = appendMessage(out, 'R', body)
			switch code {
			case authCleartextPassword, authMD5Password, authGSS, authGSSContinue, authSSPI, authSASL, authSASLContinue:
				if err := flush(); err != nil {
					return err
				}
				if err := passClientMessage(sess.client, sc); err != nil {
					return err
				}
			}
		case 'K':
			if len(body) < 8 {
				return serverLost(sc, fmt.Errorf("short BackendKeyData"))
			}
			sc.PID = getUint32(body)
			sc.Key = append([]byte(nil), body[4:]...)
			key, err := sess.srv.cancels.register(cancelTarget{addr: sc.Addr, pid: sc.PID, realKey: sc.Key})
			if err != nil {
				return err
			}
			sess.clientPK = key
			k := make([]byte, 4, 4+len(key))
			putUint32(k, sc.PID)
			out = appendMessage(out, 'K', append(k, key...))
		case 'E':
			// Authentication failed or the server refused the session: the
			// client sees the server's own error, then the close.
			out = appendMessage(out, 'E', body)
			_ = flush()
			return nil
		case 'Z':
			out = appendMessage(out, 'Z', body)
			// Anything the server sent after ReadyForQuery (nothing, as a
			// rule) goes to the client before the relay starts.
			if n := br.Buffered(); n > 0 {
				rest, _ := br.Peek(n)
				out = append(out, rest...)
			}
			return flush()
		default: // ParameterStatus, NoticeResponse, NegotiateProtocolVersion
			out = appendMessage(out, typ, body)
		}
	}
}

// serverLost turns a failure of the server link during startup into the
// client's error.
func serverLost(sc *pool.ServerConn, err error) error {
	return &clientError{Severity: "FATAL", Code: codeConnectionFailure,
		Message: "pgrouter lost the connection to " + sc.Member + " during startup", Detail: err.Error()}
}

// passClientMessage relays one client message (an authentication answer)
// to the server.
func passClientMessage(client, server net.Conn) error {
	typ, body, err := readMessage(client, maxStartupMessage)
	if err != nil {
		return err
	}
	if typ != 'p' {
		return fatalf(codeProtocolViolation, "expected an authentication response, got message type %q", typ)
	}
	_, err = server.Write(appendMessage(nil, typ, body))
	return err
}

// readMessage reads one whole message, refusing bodies longer than max.
func readMessage(r io.Reader, max int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(getUint32(hdr[1:]))
	if n < 4 || n-4 > max {
		return 0, nil, fatalf(codeProtocolViolation, "invalid message length %d", n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

func appendMessage(dst []byte, typ byte, body []byte) []byte {
	var hdr [5]byte
	hdr[0] = typ
	putUint32(hdr[1:], uint32(len(body)+4))
	dst = append(dst, hdr[:]...)
	return append(dst, body...)
}

// withoutChannelBinding removes SCRAM-SHA-256-PLUS from an
// AuthenticationSASL body. The proxy terminates the client's TLS, so a
// binding to the server's certificate could never match what the client
// sees: clients with channel_binding=prefer fall back to plain SCRAM, and
// those with require fail with their driver's clear error.
func withoutChannelBinding(body []byte) []byte {
	out := make([]byte, 4, len(body))
	copy(out, body[:4])
	rest := body[4:]
	for len(rest) > 0 {
		i := indexZero(rest)
		if i <= 0 {
			break
		}
		mech := rest[:i]
		rest = rest[i+1:]
		if string(mech) == "SCRAM-SHA-256-PLUS" {
			continue
		}
		out = append(out, mech...)
		out = append(out, 0)
	}
	return append(out, 0)
}

// forwardCancel sends a cancel request to the backend its key names, with
// the backend's real key. A key unknown here goes to the peer replicas,
// unless the request came from one (one hop, no loops); otherwise it
// reaches nobody, as with PostgreSQL itself. The sender gets no answer
// either way.
func (s *Server) forwardCancel(pid uint32, key []byte, cfg *Config, fromPeer bool) {
	t, ok := s.cancels.lookup(pid, key)
	if !ok {
		switch {
		case fromPeer:
			s.metrics.cancels.WithLabelValues("peer_unknown_key").Inc()
		case len(cfg.Peer.Peers) == 0:
			s.metrics.cancels.WithLabelValues("unknown_key").Inc()
		case s.forwardToPeers(cfg.Peer.Peers, pid, key):
			s.metrics.cancels.WithLabelValues("to_peers").Inc()
		default:
			s.metrics.cancels.WithLabelValues("to_peers_dropped").Inc()
		}
		s.log.Debug("cancel request with unknown key", zap.Uint32("pid", pid), zap.Bool("from_peer", fromPeer))
		return
	}
	if t.session != nil {
		sc, held := t.session.pooled.current()
		if !held || sc.PID == 0 {
			s.metrics.cancels.WithLabelValues("no_server").Inc()
			return // between transactions there is nothing to cancel
		}
		t = cancelTarget{addr: sc.Addr, pid: sc.PID, realKey: sc.Key}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dc := cfg.Server
	sc, err := pool.Dial(ctx, "", t.addr, dc)
	if err != nil {
		s.metrics.cancels.WithLabelValues("failed").Inc()
		s.log.Warn("cannot forward cancel request", zap.String("addr", t.addr), zap.Error(err))
		return
	}
	defer sc.Close()
	_ = sc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := sc.Write(encodeCancel(t.pid, t.realKey)); err != nil {
		s.metrics.cancels.WithLabelValues("failed").Inc()
		return
	}
	// The server closes the connection when it has handled the request;
	// waiting for that keeps the cancel ordered before our close.
	var b [1]byte
	_, _ = sc.Read(b[:])
	s.metrics.cancels.WithLabelValues("forwarded").Inc()
}
