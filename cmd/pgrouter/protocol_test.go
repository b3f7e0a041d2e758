package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

func TestAuthenticationPassesThrough(t *testing.T) {
	c := sharedCluster(t)
	p := startProxy(t, c)
	for _, tc := range []struct {
		name, user, password, wantState string
	}{
		{"scram", c.AppUser, c.AppPassword, ""},
		{"scram other password", c.Scram2User, c.Scram2Password, ""},
		{"md5", c.MD5User, c.MD5Password, ""},
		{"trust", c.TrustUser, "", ""},
		{"wrong password", c.AppUser, "nope", "28P01"},
		{"unknown user", "nosuchuser", "x", "28P01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, addr := range []string{p.RW, p.RO} {
				conn, err := connect(t, addr, tc.user, tc.password, nil)
				if tc.wantState != "" {
					if got := sqlState(err); got != tc.wantState {
						t.Fatalf("%s: err = %v (SQLSTATE %q), want %s", addr, err, got, tc.wantState)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", addr, err)
				}
				var u string
				if err := conn.QueryRow(context.Background(), "SELECT current_user").Scan(&u); err != nil || u != tc.user {
					t.Fatalf("current_user = %q, %v", u, err)
				}
				conn.Close(context.Background())
			}
		})
	}
}

func TestCancelThroughEveryPort(t *testing.T) {
	c := sharedCluster(t)
	p := startProxy(t, c)
	for _, addr := range []string{p.Any, p.RW, p.RO} {
		conn := mustConnect(t, c, addr, nil)
		var pid uint32
		if err := conn.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		if pid != conn.PgConn().PID() {
			t.Fatalf("BackendKeyData pid %d != pg_backend_pid() %d", conn.PgConn().PID(), pid)
		}
		start := time.Now()
		err := sleepAndCancel(t, conn)
		if sqlState(err) != "57014" {
			t.Fatalf("%s: err = %v, want 57014 query_canceled", addr, err)
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("cancel took %v", time.Since(start))
		}
	}
}

func TestForgedCancelKeyReachesNobody(t *testing.T) {
	c := sharedCluster(t)
	p := startProxy(t, c)
	conn := mustConnect(t, c, p.RW, nil)
	pid := conn.PgConn().PID()
	key := conn.PgConn().SecretKey()
	// The backend's real key would be another; any wrong key must fail.
	forged := append([]byte(nil), key...)
	forged[0] ^= 0xff
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.Background(), "SELECT pg_sleep(1.5)")
		done <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the query start; correctness does not depend on it
	for range 3 {
		sendCancel(t, p.RW, pid, forged)
	}
	if err := <-done; err != nil {
		t.Fatalf("query with forged cancel: %v", err)
	}
}

func sendCancel(t *testing.T, addr string, pid uint32, key []byte) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	b, _ := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: key}).Encode(nil)
	if _, err := nc.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.ReadAll(nc) // the proxy closes without an answer
}

// rawStartup sends b as the first bytes of a connection and returns the
// first message the proxy answers with.
func rawStartup(t *testing.T, addr string, b []byte) (pgproto3.BackendMessage, error) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(b); err != nil {
		return nil, err
	}
	fe := pgproto3.NewFrontend(nc, nc)
	return fe.Receive()
}

// A client asking for a newer minor protocol version reaches the server,
// whose NegotiateProtocolVersion comes back through the proxy.
func TestNewerMinorProtocolPassesThrough(t *testing.T) {
	c := sharedCluster(t)
	p := startProxy(t, c)
	var b []byte
	b = append(b, 0, 0, 0, 0, 0, 3, 0, 2) // length, then protocol 3.2
	b = append(b, "user\x00"+c.TrustUser+"\x00database\x00postgres\x00_pq_.nothing\x00x\x00\x00"...)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	msg, err := rawStartup(t, p.RW, b)
	if err != nil {
		t.Fatal(err)
	}
	npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
	if !ok || npv.NewestMinorProtocol&0xffff != 0 || len(npv.UnrecognizedOptions) != 1 {
		t.Fatalf("got %#v, want the server's NegotiateProtocolVersion", msg)
	}
}

// metricValue reads one unlabelled series from the proxy's /metrics.
func metricValue(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// TestMalformedInputIsRefusedCleanly runs against a passthrough listener,
// whose clients goroutines accept, and a transaction-mode one, whose
// clients the loop threads accept and hand to a goroutine when the
// startup is not one they serve.
func TestMalformedInputIsRefusedCleanly(t *testing.T) {
	c := sharedCluster(t)
	for _, mode := range []string{"passthrough", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			testMalformedInput(t, c, startPooled(t, c, mode, "--max-startup-packet", "2048", "--startup-timeout", "2s"))
		})
	}
}

func testMalformedInput(t *testing.T, c *pgtest.Cluster, p *proxyProc) {
	// One session first: a pool keeps its server connection open after.
	mustConnect(t, c, p.RW, nil).Close(context.Background())
	fds0 := metricValue(t, p.Admin, "process_open_fds")
	goroutines0 := metricValue(t, p.Admin, "go_goroutines")
	defer func() {
		// Nothing the hostile clients did leaves a descriptor or goroutine.
		eventually(t, 10*time.Second, "descriptors and goroutines back to their baseline", func() error {
			fds, gs := metricValue(t, p.Admin, "process_open_fds"), metricValue(t, p.Admin, "go_goroutines")
			if fds > fds0 || gs > goroutines0 {
				return fmt.Errorf("fds %v (was %v), goroutines %v (was %v)", fds, fds0, gs, goroutines0)
			}
			return nil
		})
	}()
	version := func(v uint32, rest ...byte) []byte {
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, uint32(8+len(rest)))
		binary.BigEndian.PutUint32(b[4:], v)
		return append(b, rest...)
	}
	huge := make([]byte, 8)
	binary.BigEndian.PutUint32(huge, 1<<20)
	for _, tc := range []struct {
		name string
		in   []byte
		code string
	}{
		// A length out of range is closed without an answer, as
		// PostgreSQL does ("invalid length of startup packet" goes to its
		// log only): a driver that sends Terminate before its startup
		// (node-postgres, connecting and ending at once) must not get an
		// error it does not expect.
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ""},
		{"length beyond the cap", huge, ""},
		{"length below minimum", []byte{0, 0, 0, 2, 0, 0, 0, 0}, ""},
		{"terminate before the startup", []byte{'X', 0, 0, 0, 4}, ""},
		{"protocol 2.0", version(2<<16, 'u', 's', 'e', 'r', 0, 'x', 0, 0), "0A000"},
		{"no user", version(3<<16, 0), "28000"},
		{"unterminated parameters", version(3<<16, 'u', 's', 'e', 'r', 0, 'x'), "08P01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, err := rawStartup(t, p.RW, tc.in)
			if tc.code == "" {
				if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("got %#v, %v; want the connection closed without an answer", msg, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			er, ok := msg.(*pgproto3.ErrorResponse)
			if !ok || er.Code != tc.code || er.Severity != "FATAL" {
				t.Fatalf("got %#v, want FATAL %s", msg, tc.code)
			}
		})
	}
	t.Run("silent client times out", func(t *testing.T) {
		nc, err := net.Dial("tcp", p.RW)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = nc.Read(make([]byte, 1))
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("proxy kept a silent client open: %v", err)
		}
	})
	// Everyone else is still served.
	conn, err := connect(t, p.RW, c.SuperUser, c.SuperPassword, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, rec := where(t, conn); rec {
		t.Fatal("rw landed on a standby")
	}
	conn.Close(context.Background())
}

func TestMaxClientConns(t *testing.T) {
	c := sharedCluster(t)
	for _, mode := range []string{"passthrough", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			p := startPooled(t, c, mode, "--max-client-conns", "2")
			mustConnect(t, c, p.RW, nil)
			mustConnect(t, c, p.RW, nil)
			_, err := connect(t, p.RW, c.SuperUser, c.SuperPassword, nil)
			if sqlState(err) != "53300" {
				t.Fatalf("third connection: %v, want 53300", err)
			}
			// Other listeners have their own cap.
			mustConnect(t, c, p.RO, nil)
		})
	}
}

func TestTLSTerminatedAtProxy(t *testing.T) {
	c := sharedCluster(t)
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir)
	p := startProxy(t, c, "--tls-cert", cert, "--tls-key", key)

	host, port, _ := net.SplitHostPort(p.RW)
	cfg, err := pgx.ParseConfig("host=" + host + " port=" + port + " user=app dbname=app sslmode=require")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = c.AppPassword
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgx over TLS: %v", err)
	}
	defer conn.Close(context.Background())
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("pgx link is %T, want TLS", conn.PgConn().Conn())
	}

	psql := func(extra string) (string, error) {
		cmd := exec.Command("psql", "-X", "-At", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
			"host="+host+" port="+port+" user=app dbname=app "+extra)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+c.AppPassword, "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := psql("sslmode=require channel_binding=prefer"); err != nil {
		t.Fatalf("psql channel_binding=prefer: %v: %s", err, out)
	}
	out, err := psql("sslmode=require channel_binding=require")
	if err == nil || !strings.Contains(out, "channel binding") {
		t.Fatalf("psql channel_binding=require: want a clear channel binding error, got %v: %s", err, out)
	}
	// TLS sessions cannot leave Go's poller: goroutines relay them.
	if n := metricValue(t, p.Admin, `pgrouter_relayed_sessions_total{listener="rw",relay="goroutines"}`); n < 2 {
		t.Fatalf("%v TLS sessions relayed by goroutines, want every one so far", n)
	}
	// Without TLS configured the proxy answers N and plain connections work,
	// relayed by the epoll loop.
	plain := startProxy(t, c)
	h2, p2, _ := net.SplitHostPort(plain.RW)
	cmd := exec.Command("psql", "-X", "-At", "-c", "SELECT 1", "host="+h2+" port="+p2+" user=app dbname=app sslmode=require")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+c.AppPassword)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "SSL") {
		t.Fatalf("sslmode=require against a proxy without TLS: %v %s", err, out)
	}
	cmd = exec.Command("psql", "-X", "-At", "-c", "SELECT 1", "host="+h2+" port="+p2+" user=app dbname=app sslmode=prefer")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+c.AppPassword)
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("plain psql through the proxy: %v %s", err, out)
	}
	if n := metricValue(t, plain.Admin, `pgrouter_relayed_sessions_total{listener="rw",relay="loop"}`); n != 1 {
		t.Fatalf("%v plain sessions relayed by the loop, want 1", n)
	}
}

func writeSelfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(priv)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// A cancel request that a load balancer hands to another replica than the
// one holding the session still cancels it: the replica passes the key it
// does not know to its peers' peer ports. Passthrough and pooled sessions.
func TestCancelAcrossReplicas(t *testing.T) {
	c := sharedCluster(t)
	peerA, peerB := freeAddr(t), freeAddr(t)
	for _, pooled := range []bool{false, true} {
		start := func(self, other string) *proxyProc {
			args := []string{"--peer-listen", self, "--peers", other}
			if pooled {
				return startPooled(t, c, "transaction", args...)
			}
			return startProxy(t, c, args...)
		}
		a := start(peerA, peerB)
		b := start(peerB, peerA)
		conn := appConn(t, c, a.RW)
		pid, key := conn.PgConn().PID(), conn.PgConn().SecretKey()
		err := sleepAndCancelWith(t, conn, func(context.Context) error {
			sendCancel(t, b.RW, pid, key)
			return nil
		})
		if sqlState(err) != "57014" {
			t.Fatalf("pooled=%v: cancel through the other replica: err = %v, want 57014\n%s", pooled, err, b.logs())
		}
		// The peer port takes cancel requests only.
		nc, err := net.Dial("tcp", peerB)
		if err != nil {
			t.Fatal(err)
		}
		startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
			Parameters: map[string]string{"user": c.AppUser}}).Encode(nil)
		_, _ = nc.Write(startup)
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := nc.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("peer port answered a startup message (n=%d, err=%v)", n, err)
		}
		nc.Close()
		conn.Close(context.Background())
		a.stop()
		b.stop()
	}
}

// TestStartupInPiecesAndPipelined: a transaction-mode listener reads the
// startup on a loop thread. A startup that arrives a byte at a time (after
// an SSLRequest answered 'N') is served, and so is a query sent in the
// same write as the startup, for a trust user whose pool is logged in
// (greeted on the thread) and on a passthrough listener alike.
func TestStartupInPiecesAndPipelined(t *testing.T) {
	c := sharedCluster(t)
	for _, mode := range []string{"passthrough", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			p := startPooled(t, c, mode)
			warm, err := connect(t, p.RW, c.TrustUser, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			warm.Close(context.Background())
			startup := []byte{0, 0, 0, 0, 0, 3, 0, 0}
			startup = append(startup, "user\x00"+c.TrustUser+"\x00database\x00postgres\x00\x00"...)
			binary.BigEndian.PutUint32(startup, uint32(len(startup)))
			sslRequest := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
			query := append([]byte{'Q', 0, 0, 0, 0}, "SELECT 41 + 1\x00"...)
			binary.BigEndian.PutUint32(query[1:], uint32(len(query)-1))

			dial := func() (net.Conn, *pgproto3.Frontend) {
				nc, err := net.Dial("tcp", p.RW)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { nc.Close() })
				_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
				return nc, pgproto3.NewFrontend(nc, nc)
			}
			// readyThenAnswer reads to the greeting's ReadyForQuery and, if
			// asked, to the query's, returning the query's one value.
			readyThenAnswer := func(fe *pgproto3.Frontend, withQuery bool) string {
				rfq, want, got := 0, 1, ""
				if withQuery {
					want = 2
				}
				for rfq < want {
					msg, err := fe.Receive()
					if err != nil {
						t.Fatalf("after %d ReadyForQuery: %v", rfq, err)
					}
					switch m := msg.(type) {
					case *pgproto3.ReadyForQuery:
						rfq++
					case *pgproto3.DataRow:
						got = string(m.Values[0])
					case *pgproto3.ErrorResponse:
						t.Fatalf("error %s: %s", m.Code, m.Message)
					}
				}
				return got
			}

			t.Run("in pieces", func(t *testing.T) {
				nc, fe := dial()
				if _, err := nc.Write(sslRequest); err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 1)
				if _, err := io.ReadFull(nc, b); err != nil || b[0] != 'N' {
					t.Fatalf("SSLRequest answered %q, %v; want N", b, err)
				}
				for i := range startup {
					if _, err := nc.Write(startup[i : i+1]); err != nil {
						t.Fatal(err)
					}
					time.Sleep(time.Millisecond)
				}
				readyThenAnswer(fe, false)
				if _, err := nc.Write(query); err != nil {
					t.Fatal(err)
				}
				if got := readyThenAnswer(fe, false); got != "42" {
					t.Fatalf("query answered %q", got)
				}
			})
			t.Run("pipelined", func(t *testing.T) {
				nc, fe := dial()
				if _, err := nc.Write(append(append([]byte(nil), startup...), query...)); err != nil {
					t.Fatal(err)
				}
				if got := readyThenAnswer(fe, true); got != "42" {
					t.Fatalf("pipelined query answered %q", got)
				}
			})
		})
	}
}

// A server with TLS offers SCRAM channel binding, which cannot cross a
// proxy that terminates the client's TLS; a client that could bind
// (libpq's default, channel_binding=prefer over TLS) answers with plain
// SCRAM flagged as able to bind, which such a server refuses as a
// downgrade. With --server-sslmode prefer pgrouter makes that client's
// server link again without TLS, where the server accepts it; with
// require the client is told why it cannot log in, and what to change.
func TestChannelBindingCapableClientsBehindTLSServer(t *testing.T) {
	c := pgtest.StartT(t, pgtest.Options{})
	ctx := context.Background()
	primary := c.Nodes[0]
	// The server's certificate, in its data directory, owned by its user.
	cert, key := writeSelfSigned(t, t.TempDir())
	var st syscall.Stat_t
	if err := syscall.Stat(primary.DataDir, &st); err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{cert: "server.crt", key: "server.key"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(primary.DataDir, dst)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	super, err := pgx.Connect(ctx, c.ConnString(primary, c.SuperUser, c.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	for _, q := range []string{"ALTER SYSTEM SET ssl = on", "SELECT pg_reload_conf()"} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var on string
		if err := super.QueryRow(ctx, "SHOW ssl").Scan(&on); err != nil {
			t.Fatal(err)
		}
		if on == "on" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ssl not on after reload")
		}
		time.Sleep(50 * time.Millisecond)
	}

	pcert, pkey := writeSelfSigned(t, t.TempDir())
	psql := func(p *proxyProc, extra string) (string, error) {
		host, port, _ := net.SplitHostPort(p.RW)
		cmd := exec.Command("psql", "-X", "-At", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
			"host="+host+" port="+port+" user=app dbname=app sslmode=require "+extra)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+c.AppPassword, "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	prefer := startProxy(t, c, "--tls-cert", pcert, "--tls-key", pkey, "--server-sslmode", "prefer")
	if out, err := psql(prefer, ""); err != nil || out != "f" {
		t.Fatalf("psql with channel_binding=prefer: %v: %q, want a session over a link without TLS (f)", err, out)
	}
	if n := metricValue(t, prefer.Admin, "pgrouter_scram_plaintext_fallbacks_total"); n != 1 {
		t.Fatalf("pgrouter_scram_plaintext_fallbacks_total = %v, want 1", n)
	}
	// A client that cannot bind keeps the TLS link.
	if out, err := psql(prefer, "channel_binding=disable"); err != nil || out != "t" {
		t.Fatalf("psql with channel_binding=disable: %v: %q, want TLS to the server (t)", err, out)
	}

	require := startProxy(t, c, "--tls-cert", pcert, "--tls-key", pkey, "--server-sslmode", "require")
	out, err := psql(require, "")
	if err == nil || !strings.Contains(out, "SCRAM channel binding cannot cross pgrouter") || !strings.Contains(out, "channel_binding=disable") {
		t.Fatalf("psql with channel_binding=prefer and --server-sslmode require: want pgrouter's reason, got %v: %s", err, out)
	}
	if out, err := psql(require, "channel_binding=disable"); err != nil || out != "t" {
		t.Fatalf("psql with channel_binding=disable and --server-sslmode require: %v: %q", err, out)
	}
}
