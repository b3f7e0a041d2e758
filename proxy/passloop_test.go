package proxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router"
)

// loginScript is how a scripted server answers a connection.
type loginScript struct {
	tls      bool // answer an SSLRequest with S and speak TLS, else N
	trickle  bool // send the login one byte per write
	hangUp   bool // close after the startup without a word
	silent   bool // say nothing after the startup, until the proxy leaves
	conns    atomic.Int32
	tlsConns atomic.Int32
	startups chan []byte // each startup packet received
}

// scriptedServer serves sc on a loopback port until the test ends.
func scriptedServer(t *testing.T, sc *loginScript) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sc.startups = make(chan []byte, 16)
	var cert tls.Certificate
	if sc.tls {
		cert = selfSigned(t)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sc.conns.Add(1)
			go sc.serve(c, cert)
		}
	}()
	return ln.Addr().String()
}

func (sc *loginScript) serve(c net.Conn, cert tls.Certificate) {
	defer c.Close()
	packet := func() []byte {
		var l [4]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return nil
		}
		b := make([]byte, getUint32(l[:]))
		copy(b, l[:])
		if _, err := io.ReadFull(c, b[4:]); err != nil {
			return nil
		}
		return b
	}
	p := packet()
	if bytes.Equal(p, sslRequest) {
		if !sc.tls {
			_, _ = c.Write([]byte{'N'})
		} else {
			_, _ = c.Write([]byte{'S'})
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
			if tc.Handshake() != nil {
				return
			}
			sc.tlsConns.Add(1)
			c = tc
		}
		p = packet()
	}
	if p == nil {
		return
	}
	sc.startups <- p
	if sc.hangUp {
		return
	}
	if sc.silent {
		_, _ = io.Copy(io.Discard, c)
		return
	}
	login := appendMessage(nil, 'R', []byte{0, 0, 0, 0})
	login = appendParameterStatus(login, "server_version", "15.0")
	login = appendMessage(login, 'K', []byte{0, 0, 0x30, 0x39, 1, 2, 3, 4})
	login = appendMessage(login, 'Z', []byte{'I'})
	if sc.trickle {
		for i := range login {
			if _, err := c.Write(login[i : i+1]); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	} else if _, err := c.Write(login); err != nil {
		return
	}
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(getUint32(hdr[1:])-4)); err != nil {
			return
		}
		switch hdr[0] {
		case 'X':
			return
		case 'Q':
			out := appendMessage(nil, 'C', []byte("SELECT 1\x00"))
			if _, err := c.Write(appendMessage(out, 'Z', []byte{'I'})); err != nil {
				return
			}
		}
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// passthroughProxy starts a proxy with one passthrough read-write
// listener on a loop thread, in front of the member at addr.
func passthroughProxy(t testing.TB, addr string, mode pool.SSLMode) (*Server, *Metrics) {
	m := NewMetrics(prometheus.NewRegistry())
	s := runProxy(t, Config{
		Listeners:      []ListenerConfig{{Name: "rw", Addr: "127.0.0.1:0", Kind: router.ListenerReadWrite}},
		Server:         pool.DialConfig{SSLMode: mode, Timeout: 2 * time.Second},
		StartupTimeout: 2 * time.Second,
		RelayThreads:   1,
	}, addr, m)
	return s, m
}

// passthroughLogin connects to the proxy, sends a startup and returns the
// connection with the proxy's answer up to ReadyForQuery or an error.
func passthroughLogin(t *testing.T, s *Server) (net.Conn, map[byte][]byte) {
	c, err := net.Dial("tcp", s.Addr("rw").String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(encodeStartup(3<<16, []param{{"user", "u"}, {"database", "d"}})); err != nil {
		t.Fatal(err)
	}
	return c, readLogin(t, c)
}

// readLogin reads messages until ReadyForQuery, an ErrorResponse or EOF;
// it returns the last body of each type.
func readLogin(t *testing.T, c net.Conn) map[byte][]byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	got := map[byte][]byte{}
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return got
			}
			t.Fatalf("reading the login: %v", err)
		}
		body := make([]byte, getUint32(hdr[1:])-4)
		if _, err := io.ReadFull(c, body); err != nil {
			t.Fatal(err)
		}
		got[hdr[0]] = body
		if hdr[0] == 'Z' || hdr[0] == 'E' {
			return got
		}
	}
}

// TestPassthroughOnLoop: a passthrough session runs on the loop thread
// that accepted it, with sslmode disable and with prefer against a server
// without TLS, and a login that comes in pieces: the client gets the
// server's process id with a key of the proxy's, and its queries relayed.
func TestPassthroughOnLoop(t *testing.T) {
	for _, mode := range []pool.SSLMode{pool.SSLDisable, pool.SSLPrefer} {
		t.Run(string(mode), func(t *testing.T) {
			sc := &loginScript{trickle: true}
			s, m := passthroughProxy(t, scriptedServer(t, sc), mode)
			c, got := passthroughLogin(t, s)
			k, ok := got['K']
			if !ok || got['Z'] == nil || got['S'] == nil {
				t.Fatalf("login %q: want ParameterStatus, BackendKeyData and ReadyForQuery", got)
			}
			if getUint32(k) != 0x3039 || bytes.Equal(k[4:], []byte{1, 2, 3, 4}) {
				t.Fatalf("BackendKeyData %x: want the server's pid 0x3039 with a key of the proxy's", k)
			}
			if p := <-sc.startups; !bytes.Contains(p, []byte("user\x00u\x00")) {
				t.Fatalf("startup %q reached the server", p)
			}
			if _, err := c.Write(appendMessage(nil, 'Q', []byte("SELECT 1\x00"))); err != nil {
				t.Fatal(err)
			}
			readReadyForQuery(t, c, 1)
			if n := counterValue(t, m.loopStartups.WithLabelValues("rw")); n != 1 {
				t.Fatalf("sessions started on a loop thread: %v, want 1", n)
			}
		})
	}
}

// TestPassthroughOnLoopToTLSServer: with sslmode prefer, a server that
// offers TLS sends the session to a goroutine, which speaks TLS to it,
// and later sessions to that member start there directly.
func TestPassthroughOnLoopToTLSServer(t *testing.T) {
	sc := &loginScript{tls: true}
	s, m := passthroughProxy(t, scriptedServer(t, sc), pool.SSLPrefer)
	for i := range 2 {
		c, got := passthroughLogin(t, s)
		if got['Z'] == nil {
			t.Fatalf("session %d: login %q, want ReadyForQuery", i, got)
		}
		c.Close()
	}
	if n := sc.tlsConns.Load(); n != 2 {
		t.Fatalf("%d sessions over TLS, want 2", n)
	}
	if n := sc.conns.Load(); n != 3 {
		t.Fatalf("%d connections to the server, want 3 (the loop's probe, then one per session)", n)
	}
	if n := counterValue(t, m.loopStartups.WithLabelValues("rw")); n != 0 {
		t.Fatalf("sessions started on a loop thread: %v, want 0", n)
	}
}

// TestPassthroughOnLoopServerFailures: a member that refuses the
// connection, one that hangs up during the login and one that says
// nothing are the client's FATAL 08006, saying which.
func TestPassthroughOnLoopServerFailures(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		s, _ := passthroughProxy(t, addr, pool.SSLDisable)
		_, got := passthroughLogin(t, s)
		wantError(t, got, "could not connect to primary 127.0.0.1:")
	})
	t.Run("hang-up", func(t *testing.T) {
		s, _ := passthroughProxy(t, scriptedServer(t, &loginScript{hangUp: true}), pool.SSLPrefer)
		_, got := passthroughLogin(t, s)
		wantError(t, got, "during startup")
	})
	// A server that takes the startup and says nothing: the dial
	// timeout (2 s here) ends the wait.
	t.Run("silent", func(t *testing.T) {
		s, _ := passthroughProxy(t, scriptedServer(t, &loginScript{silent: true}), pool.SSLPrefer)
		_, got := passthroughLogin(t, s)
		wantError(t, got, "during startup")
	})
}

func wantError(t *testing.T, got map[byte][]byte, message string) {
	t.Helper()
	e, ok := got['E']
	if !ok || !bytes.Contains(e, []byte("C08006\x00")) || !strings.Contains(string(e), message) || !bytes.Contains(e, []byte("SFATAL\x00")) {
		t.Fatalf("login %q: want FATAL 08006 %q", got, message)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// BenchmarkPassthroughConnect measures what pgbench -C costs the proxy
// on a passthrough listener: one client connection (startup, one Query,
// Terminate), accepted, connected to the member and relayed on a loop
// thread. The client uses raw system calls, so allocs/op is the proxy's
// (and the fake server's goroutine, a few).
func BenchmarkPassthroughConnect(b *testing.B) {
	s, _ := passthroughProxy(b, fakeServer(b), pool.SSLDisable)
	benchmarkConnect(b, s.Addr("rw").(*net.TCPAddr))
}
