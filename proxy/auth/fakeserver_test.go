package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// fakeServer is a PostgreSQL server in miniature that authenticates its
// clients with Authenticate, as the proxy will: it reads the startup
// message (answering SSLRequest with TLS when it has a certificate), picks
// the method with its HBA, looks the secret up, runs Authenticate, then
// finishes the startup itself and answers every simple query with one row.
// Each connection's outcome goes to results.
type fakeServer struct {
	ln      net.Listener
	hba     *HBA
	secret  func(ctx context.Context, user string) (Secret, error)
	tls     *tls.Config
	results chan fakeResult
	wg      sync.WaitGroup
}

type fakeResult struct {
	user   string
	method Method
	creds  Credentials
	err    error
}

func startFakeServer(t *testing.T, hbaLines []string, secret func(ctx context.Context, user string) (Secret, error), withTLS bool) *fakeServer {
	t.Helper()
	h, err := ParseHBA(hbaLines)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{ln: ln, hba: h, secret: secret, results: make(chan fakeResult, 64)}
	if withTLS {
		f.tls = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	}
	f.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Go(func() { f.serve(conn) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
	})
	return f
}

func (f *fakeServer) port() string {
	_, p, _ := net.SplitHostPort(f.ln.Addr().String())
	return p
}

// result waits for the outcome of the next connection.
func (f *fakeServer) result(t *testing.T) fakeResult {
	t.Helper()
	select {
	case r := <-f.results:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no connection reached the fake server")
		return fakeResult{}
	}
}

func (f *fakeServer) serve(raw net.Conn) {
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
	var conn net.Conn = raw
	be := pgproto3.NewBackend(conn, conn)
	var startup *pgproto3.StartupMessage
	for startup == nil {
		m, err := be.ReceiveStartupMessage()
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *pgproto3.SSLRequest:
			if f.tls == nil || conn != raw {
				_, _ = conn.Write([]byte{'N'})
				continue
			}
			_, _ = conn.Write([]byte{'S'})
			conn = tls.Server(raw, f.tls)
			be = pgproto3.NewBackend(conn, conn)
		case *pgproto3.GSSEncRequest:
			_, _ = conn.Write([]byte{'N'})
		case *pgproto3.StartupMessage:
			startup = m
		default:
			return
		}
	}
	user := startup.Parameters["user"]
	db := startup.Parameters["database"]
	if db == "" {
		db = user
	}
	_, isTLS := conn.(*tls.Conn)
	ip := raw.RemoteAddr().(*net.TCPAddr).IP
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m := f.hba.Match(db, user, ip, isTLS)
	var s Secret
	var lookupErr error
	if m != MethodTrust && m != MethodReject {
		s, lookupErr = f.secret(ctx, user)
	}
	creds, err := Authenticate(ctx, conn, user, m, s, lookupErr)
	f.results <- fakeResult{user: user, method: m, creds: creds, err: err}
	if err != nil {
		var e *Error
		if m == MethodReject {
			e = RejectError(ip, user, db, isTLS)
		} else if !errors.As(err, &e) {
			return
		}
		_ = writeMessage(conn, errorMessage(e))
		return
	}
	out := backendBytesNoT(
		&pgproto3.AuthenticationOk{},
		&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"},
		&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"},
		&pgproto3.ParameterStatus{Name: "server_encoding", Value: "UTF8"},
		&pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "on"},
		&pgproto3.ParameterStatus{Name: "integer_datetimes", Value: "on"},
		&pgproto3.ParameterStatus{Name: "DateStyle", Value: "ISO, MDY"},
		&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if _, err := conn.Write(out); err != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch msg.(type) {
		case *pgproto3.Query:
			_, _ = conn.Write(backendBytesNoT(
				&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("user"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}},
				&pgproto3.DataRow{Values: [][]byte{[]byte(user)}},
				&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
				&pgproto3.ReadyForQuery{TxStatus: 'I'}))
		case *pgproto3.Terminate:
			return
		default:
			return
		}
	}
}

func backendBytesNoT(msgs ...encoder) []byte {
	var b []byte
	for _, m := range msgs {
		b, _ = m.Encode(b)
	}
	return b
}

// selfSigned makes a certificate for 127.0.0.1.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pgrouter-auth-test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
