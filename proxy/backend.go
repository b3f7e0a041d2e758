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
// It returns the server the session got: sc, or one it connected to again
// without TLS (see plainForBinding), sc closed then.
func (sess *session) startServer(ctx context.Context, cfg *Config, sc *pool.ServerConn, version uint32, params []param) (*pool.ServerConn, error) {
	startup := encodeStartup(version, params)
	if _, err := sc.Write(startup); err != nil {
		return sc, serverLost(sc, err)
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
			return sc, serverLost(sc, err)
		}
		switch typ {
		case 'R':
			if len(body) < 4 {
				return sc, serverLost(sc, fmt.Errorf("short authentication message"))
			}
			code := getUint32(body)
			offersBinding := false
			if code == authSASL {
				body, offersBinding = withoutChannelBinding(body)
			}
			out = appendMessage(out, 'R', body)
			switch code {
			case authCleartextPassword, authMD5Password, authGSS, authGSSContinue, authSSPI, authSASL, authSASLContinue:
				if err := flush(); err != nil {
					return sc, err
				}
				msg, err := clientAuthMessage(sess.client)
				if err != nil {
					return sc, err
				}
				if offersBinding && gs2Flag(msg) == 'y' {
					plain, err := sess.plainForBinding(ctx, cfg, sc, startup)
					if plain == nil {
						return sc, err
					}
					sc.Close()
					sc = plain
					br.Reset(sc)
				}
				if _, err := sc.Write(msg); err != nil {
					return sc, serverLost(sc, err)
				}
			}
		case 'K':
			if len(body) < 8 {
				return sc, serverLost(sc, fmt.Errorf("short BackendKeyData"))
			}
			sc.PID = getUint32(body)
			sc.Key = append([]byte(nil), body[4:]...)
			if out, err = sess.proxyKeyData(out, sc.Addr, sc.PID, sc.Key); err != nil {
				return sc, err
			}
		case 'E':
			// Authentication failed or the server refused the session: the
			// client sees the server's own error, then the close.
			out = appendMessage(out, 'E', body)
			_ = flush()
			return sc, nil
		case 'Z':
			out = appendMessage(out, 'Z', body)
			// Anything the server sent after ReadyForQuery (nothing, as a
			// rule) goes to the client before the relay starts.
			if n := br.Buffered(); n > 0 {
				rest, _ := br.Peek(n)
				out = append(out, rest...)
			}
			return sc, flush()
		default: // ParameterStatus, NoticeResponse, NegotiateProtocolVersion
			out = appendMessage(out, typ, body)
		}
	}
}

// proxyKeyData appends the BackendKeyData the client gets for a server's
// (pid, key): the real process id, which drivers compare with
// pg_backend_pid(), and a key of the proxy's, which a CancelRequest must
// carry to reach the server.
func (sess *session) proxyKeyData(out []byte, addr string, pid uint32, key []byte) ([]byte, error) {
	pk, err := sess.srv.cancels.register(cancelTarget{addr: addr, pid: pid, realKey: key})
	if err != nil {
		return out, err
	}
	sess.clientPK = pk
	out = append(out, 'K', 0, 0, 0, 0, 0, 0, 0, 0)
	putUint32(out[len(out)-8:], uint32(4+4+len(pk)))
	putUint32(out[len(out)-4:], pid)
	return append(out, pk...), nil
}

// serverLost turns a failure of the server link during startup into the
// client's error.
func serverLost(sc *pool.ServerConn, err error) error {
	return lostAtStartup(sc.Member, err)
}

func lostAtStartup(member string, err error) *clientError {
	return &clientError{Severity: "FATAL", Code: codeConnectionFailure,
		Message: "pgrouter lost the connection to " + member + " during startup", Detail: err.Error()}
}

// clientAuthMessage reads one client message, an authentication answer,
// framed for the server.
func clientAuthMessage(client net.Conn) ([]byte, error) {
	typ, body, err := readMessage(client, maxStartupMessage)
	if err != nil {
		return nil, err
	}
	if typ != 'p' {
		return nil, fatalf(codeProtocolViolation, "expected an authentication response, got message type %q", typ)
	}
	return appendMessage(nil, typ, body), nil
}

// gs2Flag returns the channel binding flag of a SASLInitialResponse
// message (mechanism, length, then the SCRAM client-first-message): 'n'
// (the client does not support channel binding), 'y' (it does, and thinks
// the server does not) or 'p' (it binds); 0 for another message.
func gs2Flag(msg []byte) byte {
	body := msg[5:]
	i := indexZero(body)
	if i < 0 || len(body) < i+1+4+1 {
		return 0
	}
	return body[i+1+4]
}

// plainForBinding connects to sc's server again without TLS and starts
// the login there up to its SASL request, for a client that supports
// SCRAM channel binding: over TLS the server offers it, pgrouter cannot
// pass it on (it terminates the client's TLS), and the server refuses
// plain SCRAM from a client that could bind, as a downgrade. Without TLS
// the server offers no binding and accepts the client's answer. Only with
// --server-sslmode prefer, which accepts a plaintext link; otherwise the
// client gets the reason and what to change.
func (sess *session) plainForBinding(ctx context.Context, cfg *Config, sc *pool.ServerConn, startup []byte) (*pool.ServerConn, error) {
	if mode := cfg.Server.SSLMode; mode != "" && mode != pool.SSLPrefer {
		return nil, bindingRefused("--server-sslmode "+string(mode)+" forbids a link without it.",
			"Connect with channel_binding=disable, or run pgrouter with --server-sslmode prefer.")
	}
	dial := cfg.Server
	dial.SSLMode = pool.SSLDisable
	plain, err := pool.Dial(ctx, sc.Member, sc.Addr, dial)
	if err != nil {
		return nil, serverLost(sc, err)
	}
	_ = plain.SetDeadline(time.Now().Add(cfg.StartupTimeout)) // as the first link's
	if _, err := plain.Write(startup); err != nil {
		plain.Close()
		return nil, serverLost(sc, err)
	}
	for {
		typ, body, err := readMessage(plain, maxStartupMessage)
		if err != nil {
			plain.Close()
			return nil, serverLost(sc, err)
		}
		switch {
		case typ == 'R' && len(body) >= 4 && getUint32(body) == authSASL:
			sess.srv.metrics.plainFallbacks.Inc()
			if l := sess.debugLog(); l != nil {
				l.Debug("server link made again without TLS for a client that supports channel binding", zap.String("member", sc.Member))
			}
			return plain, nil
		case typ == 'E':
			plain.Close()
			return nil, bindingRefused("it refused the link without TLS: "+errorField(body, 'M'), "Connect with channel_binding=disable.")
		case typ != 'N' && typ != 'S':
			plain.Close()
			return nil, serverLost(sc, fmt.Errorf("the server answered a login without TLS with message type %q", typ))
		}
	}
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

// bindingRefused is the error of a client that could bind a channel when
// pgrouter cannot give it a server that accepts plain SCRAM from it.
func bindingRefused(why, hint string) *clientError {
	return &clientError{Severity: "FATAL", Code: codeProtocolViolation,
		Message: "SCRAM channel binding cannot cross pgrouter",
		Detail: "The client supports channel binding, which pgrouter cannot offer since it terminates the client's TLS; " +
			"the server refuses plain SCRAM from such a client over TLS, and " + why,
		Hint: hint}
}

// withoutChannelBinding removes SCRAM-SHA-256-PLUS from an
// AuthenticationSASL body and reports whether it was offered. The proxy
// terminates the client's TLS, so a binding to the server's certificate
// could never match what the client sees: clients with
// channel_binding=require fail with their driver's clear error, and those
// with prefer answer with plain SCRAM, flagged as able to bind, which a
// server that offered binding refuses (plainForBinding).
func withoutChannelBinding(body []byte) (_ []byte, offered bool) {
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
			offered = true
			continue
		}
		out = append(out, mech...)
		out = append(out, 0)
	}
	return append(out, 0), offered
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
