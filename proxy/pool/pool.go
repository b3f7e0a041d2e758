// Package pool owns connections to PostgreSQL servers. A ServerConn is used
// by one client session at a time: owned by that session for its whole life
// (passthrough mode, where the client authenticates end to end), or lent by
// a pool for a session or a transaction (pooled modes). The relay works on
// a ServerConn the same way in every mode, so pooled modes extend the
// passthrough proxy instead of standing beside it.
package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// ServerConn is one connection to a PostgreSQL server.
type ServerConn struct {
	net.Conn
	// Member is the name of the member the connection goes to.
	Member string
	// Addr is the address dialed.
	Addr string
	// PID and Key are the server's BackendKeyData, needed to cancel what
	// runs on this connection. Zero until the startup has finished.
	PID uint32
	Key []byte
	// TLS reports whether the link to the server is encrypted.
	TLS bool
	// Params are the server's ParameterStatus values, as of the last
	// ReadyForQuery the proxy saw.
	Params map[string]string
	// Prepared names the statements the proxy prepared on this server
	// (transaction pooling), and Applied the settings it SET on it. Both
	// belong to the borrower, like the connection.
	Prepared map[string]struct{}
	Applied  map[string]string
	// SettingsFP fingerprints the settings the proxy last made this
	// server match (a borrower's wanted settings); 0 means unknown. A
	// borrower that wants the same settings need not compare them again.
	SettingsFP uint64
	// Initial are the ParameterStatus values the server reported at login:
	// the baseline a client that asked for nothing else must see.
	Initial map[string]string

	owner    *Pool     // the pool that opened it; nil when owned by a session
	created  time.Time // set by the pool that opened it
	released time.Time // when it last went back to its pool
	returns  uint32    // how many times it went back to its pool
}

// Pool returns the pool the connection belongs to, nil for a connection a
// session dialed and owns itself. Whoever borrowed it gives it back there.
func (sc *ServerConn) Pool() *Pool { return sc.owner }

// SSLMode says whether the proxy encrypts its links to servers, with the
// meaning libpq gives these names.
type SSLMode string

// SSL modes for server links.
const (
	SSLDisable    SSLMode = "disable"
	SSLPrefer     SSLMode = "prefer"
	SSLRequire    SSLMode = "require"
	SSLVerifyCA   SSLMode = "verify-ca"
	SSLVerifyFull SSLMode = "verify-full"
)

// ParseSSLMode validates a mode name.
func ParseSSLMode(s string) (SSLMode, error) {
	switch m := SSLMode(s); m {
	case SSLDisable, SSLPrefer, SSLRequire, SSLVerifyCA, SSLVerifyFull:
		return m, nil
	case "":
		return SSLPrefer, nil
	}
	return "", fmt.Errorf("unknown sslmode %q (want disable, prefer, require, verify-ca or verify-full)", s)
}

// DialConfig says how to reach servers.
type DialConfig struct {
	// Timeout bounds the TCP connect and the TLS handshake. Zero means 5s.
	Timeout time.Duration
	// SSLMode for the link to the server. Zero means prefer.
	SSLMode SSLMode
	// TLS is the client TLS configuration for verify-ca/verify-full (its
	// RootCAs) and client certificates. Nil means defaults.
	TLS *tls.Config
	// Dialer replaces the TCP dial, for tests. Nil means net.Dialer.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
}

// ConnectTimeout is Timeout, or its default.
func (c DialConfig) ConnectTimeout() time.Duration {
	if c.Timeout <= 0 {
		return 5 * time.Second
	}
	return c.Timeout
}

// DialTarget is where a member's address is dialed. As in libpq, a host
// that is an absolute path names the directory of the server's Unix
// socket, .s.PGSQL.<port>: "/var/run/postgresql:5432". A proxy beside
// its server (a sidecar) saves the TCP stack's work on every message
// both ways.
func DialTarget(addr string) (network, target string) {
	if host, port, err := net.SplitHostPort(addr); err == nil && strings.HasPrefix(host, "/") {
		return "unix", host + "/.s.PGSQL." + port
	}
	return "tcp", addr
}

// ErrServerRefusedTLS is returned when sslmode requires TLS and the server
// does not offer it.
var ErrServerRefusedTLS = errors.New("server does not support SSL, but SSL was required")

// Dial connects to a server and negotiates TLS as cfg says. The returned
// connection is ready for a StartupMessage.
func Dial(ctx context.Context, member, addr string, cfg DialConfig) (*ServerConn, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout())
	defer cancel()
	dial := cfg.Dialer
	if dial == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	network, target := DialTarget(addr)
	nc, err := dial(ctx, network, target)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	sc := &ServerConn{Conn: nc, Member: member, Addr: addr}
	mode := cfg.SSLMode
	if mode == "" {
		mode = SSLPrefer
	}
	if mode == SSLDisable || network == "unix" {
		return sc, nil // as libpq, which never uses TLS over a Unix socket
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if err := negotiateTLS(ctx, sc, mode, cfg.TLS); err != nil {
		nc.Close()
		return nil, fmt.Errorf("tls to %s: %w", addr, err)
	}
	_ = sc.Conn.SetDeadline(time.Time{})
	return sc, nil
}

func negotiateTLS(ctx context.Context, sc *ServerConn, mode SSLMode, base *tls.Config) error {
	// SSLRequest: length 8, code 80877103.
	if _, err := sc.Conn.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		return err
	}
	var answer [1]byte
	if _, err := io.ReadFull(sc.Conn, answer[:]); err != nil {
		return err
	}
	switch answer[0] {
	case 'N':
		if mode == SSLPrefer {
			return nil
		}
		return ErrServerRefusedTLS
	case 'S':
	default:
		return fmt.Errorf("unexpected answer %q to SSLRequest", answer[0])
	}
	cfg := &tls.Config{}
	if base != nil {
		cfg = base.Clone()
	}
	host, _, _ := net.SplitHostPort(sc.Addr)
	switch mode {
	case SSLPrefer, SSLRequire:
		cfg.InsecureSkipVerify = true
	case SSLVerifyCA:
		// Verify the chain but not the name, as libpq's verify-ca does.
		cfg.InsecureSkipVerify = true
		roots := cfg.RootCAs
		cfg.VerifyPeerCertificate = nil
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return verifyChain(cs, roots)
		}
	case SSLVerifyFull:
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
	}
	tc := tls.Client(sc.Conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	sc.Conn = tc
	sc.TLS = true
	return nil
}

// Returns counts the times the connection went back to its pool. A
// borrower compares it to tell whether the connection changed hands since
// it left something untracked on it, such as the unnamed statement.
func (sc *ServerConn) Returns() uint32 { return sc.returns }
