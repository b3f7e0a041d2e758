package loop

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns both ends of one loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

// pipe is a handler that relays both ways as bytes come, with a server
// for life, as a passthrough session is relayed (ServeWith).
type pipe struct {
	fromServer func(b []byte) error // may refuse a chunk: the session ends
	farewell   []byte
	up, down   int // bytes relayed, read once the session has ended
	ended      chan error
}

func (p *pipe) FromClient(s *Session, b []byte) {
	p.up += len(b)
	s.WriteServer(b)
}

func (p *pipe) FromServer(s *Session, b []byte) {
	if p.fromServer != nil {
		if err := p.fromServer(b); err != nil {
			s.End(err)
			return
		}
	}
	p.down += len(b)
	s.WriteClient(b)
}

func (p *pipe) ServerFailed(s *Session, sock *Socket, err error) {
	sock.Close()
	s.End(nilIfEOF(err))
}

func (p *pipe) Farewell(*Session) []byte { return p.farewell }

func (p *pipe) Ended(_ *Session, err error, server *Socket, _ bool) {
	if server != nil {
		server.Close()
	}
	if p.ended != nil {
		p.ended <- err
	}
}

// relayed sets up app <-> [loop] <-> db and returns the two outer ends.
func relayed(t testing.TB, l *Loop, h *pipe) (app, db net.Conn, s *Session) {
	t.Helper()
	app, clientSide := tcpPair(t)
	serverSide, db := tcpPair(t)
	s, err := l.ServeWith(clientSide, serverSide, h)
	if err != nil {
		t.Fatal(err)
	}
	return app, db, s
}

func newLoop(t testing.TB, n int) *Loop {
	t.Helper()
	l, err := New(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

func waitEnd(t *testing.T, s *Session) error {
	t.Helper()
	err, _, _ := waitSession(t, s)
	return err
}

func TestRelaysBothWays(t *testing.T) {
	l := newLoop(t, 2)
	h := &pipe{}
	app, db, p := relayed(t, l, h)
	for i := range 50 {
		msg := bytes.Repeat([]byte{byte(i)}, 1+i*37)
		if _, err := app.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(db, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("server got %d bytes, err %v", len(got), err)
		}
		if _, err := db.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(app, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("client got %d bytes, err %v", len(got), err)
		}
	}
	app.Close()
	if err := waitEnd(t, p); err != nil {
		t.Fatalf("clean close ended with %v", err)
	}
	if _, err := db.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("server side read %v after the client left, want EOF", err)
	}
	// The handler runs on the loop thread; Wait orders it before this read.
	if h.up != h.down || h.up == 0 {
		t.Fatalf("counted %d bytes up and %d down", h.up, h.down)
	}
}

// A client that reads slowly must get every byte of a large result, in
// order, while the loop holds back the server instead of buffering it all.
func TestSlowReaderGetsEverything(t *testing.T) {
	l := newLoop(t, 1)
	app, db, p := relayed(t, l, &pipe{})
	const total = 16 << 20
	want := sha256.New()
	go func() {
		r := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 64<<10)
		for sent := 0; sent < total; sent += len(buf) {
			for i := range buf {
				buf[i] = byte(r.Uint32())
			}
			want.Write(buf)
			if _, err := db.Write(buf); err != nil {
				return
			}
		}
		db.Close()
	}()
	got := sha256.New()
	buf := make([]byte, 3000)
	n := 0
	for {
		k, err := app.Read(buf)
		got.Write(buf[:k])
		n += k
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n < 1<<20 {
			time.Sleep(100 * time.Microsecond) // slow at first, so the loop must hold back
		}
	}
	if n != total || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("client got %d bytes of %d, or different ones", n, total)
	}
	if err := waitEnd(t, p); err != nil {
		t.Fatal(err)
	}
}

func TestStopSaysFarewell(t *testing.T) {
	l := newLoop(t, 1)
	ended := make(chan error, 2)
	app, db, p := relayed(t, l, &pipe{farewell: []byte("bye"), ended: ended})
	if _, err := db.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(app, got); err != nil {
		t.Fatal(err)
	}
	p.Stop()
	if err := waitEnd(t, p); err != nil {
		t.Fatalf("Stop ended the pair with %v", err)
	}
	rest, err := io.ReadAll(app)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("client read %q, %v after Stop; want the farewell then EOF", rest, err)
	}
	if _, err := db.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("server read %v after Stop, want EOF", err)
	}
	p.Stop() // after the end: a no-op
	// Ended runs once, after the sockets are closed, with Wait's error.
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("Ended(%v), want nil after Stop", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Ended was not called")
	}
	select {
	case err := <-ended:
		t.Fatalf("Ended called again with %v", err)
	default:
	}
}

func TestHandlerEndsSession(t *testing.T) {
	l := newLoop(t, 1)
	bad := errors.New("bad frame")
	app, db, p := relayed(t, l, &pipe{fromServer: func(b []byte) error {
		if bytes.Contains(b, []byte("X")) {
			return bad
		}
		return nil
	}})
	if _, err := db.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2)
	if _, err := io.ReadFull(app, got); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Write([]byte("X")); err != nil {
		t.Fatal(err)
	}
	if err := waitEnd(t, p); !errors.Is(err, bad) {
		t.Fatalf("session ended with %v, want the handler's error", err)
	}
	if rest, _ := io.ReadAll(app); len(rest) != 0 {
		t.Fatalf("the refused chunk reached the client: %q", rest)
	}
}

func TestCloseEndsSessions(t *testing.T) {
	l, err := New(2)
	if err != nil {
		t.Fatal(err)
	}
	var sessions []*Session
	for range 10 {
		_, _, s := relayed(t, l, &pipe{})
		sessions = append(sessions, s)
	}
	l.Close()
	for _, s := range sessions {
		if err := waitEnd(t, s); err != nil {
			t.Fatal(err)
		}
	}
	a, b := tcpPair(t)
	if _, err := l.ServeWith(a, b, &pipe{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("ServeWith after Close: %v, want ErrClosed", err)
	}
}

func TestServeWithRefusesWhatItCannotRelay(t *testing.T) {
	l := newLoop(t, 1)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := l.ServeWith(a, b, &pipe{}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("ServeWith(net.Pipe): %v, want ErrUnsupported", err)
	}
	// A plain client with a server it cannot take: both untouched.
	c, _ := tcpPair(t)
	if _, err := l.ServeWith(c, b, &pipe{}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("ServeWith(tcp, net.Pipe): %v, want ErrUnsupported", err)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("client after a refused ServeWith: %v", err)
	}
	// The conns are untouched and still usable.
	go func() { _, _ = a.Write([]byte("x")) }()
	if _, err := b.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkRoundTrip is one small message each way through a session
// relayed as a passthrough one, as a simple-protocol query and its
// answer: allocations must stay at 0.
func BenchmarkRoundTrip(b *testing.B) {
	l := newLoop(b, 1)
	app, db, _ := relayed(b, l, &pipe{fromServer: func([]byte) error { return nil }})
	q := make([]byte, 60)
	r := make([]byte, 120)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := app.Write(q); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(db, q); err != nil {
			b.Fatal(err)
		}
		if _, err := db.Write(r); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(app, r); err != nil {
			b.Fatal(err)
		}
	}
}

// Both directions held back at once: neither end reads until both writers
// are stuck, then both read. Every byte must arrive in both directions.
func TestBothDirectionsHeldBack(t *testing.T) {
	l := newLoop(t, 1)
	app, clientSide := tcpPair(t)
	serverSide, db := tcpPair(t)
	for _, c := range []net.Conn{app, clientSide, serverSide, db} {
		tc := c.(*net.TCPConn)
		_ = tc.SetReadBuffer(64 << 10) // fixed buffers: no autotuning soaks up the test
		_ = tc.SetWriteBuffer(64 << 10)
	}
	p, err := l.ServeWith(clientSide, serverSide, &pipe{})
	if err != nil {
		t.Fatal(err)
	}
	const total = 3 << 20
	var wrote [2]atomic.Int64
	for i, c := range []net.Conn{app, db} {
		go func() {
			buf := bytes.Repeat([]byte{byte('a' + i)}, 8<<10)
			for sent := 0; sent < total; sent += len(buf) {
				if _, err := c.Write(buf); err != nil {
					return
				}
				wrote[i].Add(int64(len(buf)))
			}
		}()
	}
	// Wait until neither writer moves: both directions are held back.
	deadline := time.Now().Add(10 * time.Second)
	last := [2]int64{-1, -1}
	for still := 0; still < 5; {
		now := [2]int64{wrote[0].Load(), wrote[1].Load()}
		if now == last {
			still++
		} else {
			still = 0
		}
		last = now
		if time.Now().After(deadline) {
			t.Fatalf("writers never stalled (wrote %v); the test needs backpressure", now)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if last[0] >= total || last[1] >= total {
		t.Fatalf("a writer finished (%v) before both directions were held back", last)
	}
	errc := make(chan error, 2)
	var read [2]atomic.Int64
	for i, c := range []net.Conn{db, app} {
		go func() {
			got := 0
			defer func() { read[i].Store(int64(got)) }()
			buf := make([]byte, 32<<10)
			for got < total {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := c.Read(buf)
				for _, b := range buf[:n] {
					if b != byte('a'+i) {
						errc <- errors.New("bytes of the wrong direction")
						return
					}
				}
				got += n
				if err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatalf("reading after both directions were held back: %v (wrote %d %d, read %d %d)", err, wrote[0].Load(), wrote[1].Load(), read[0].Load(), read[1].Load())
		}
	}
	app.Close()
	if err := waitEnd(t, p); err != nil {
		t.Fatal(err)
	}
}

// A server that resets its connection while the client is slow: what it
// sent before the reset still reaches the client, then the client sees
// the end.
func TestResetAfterDataDeliversTheData(t *testing.T) {
	l := newLoop(t, 1)
	app, clientSide := tcpPair(t)
	serverSide, db := tcpPair(t)
	// The client's path holds about 128 KiB (its socket buffers and the
	// loop's pending bytes); the server socket's receive queue the rest,
	// so the reset comes while the loop holds bytes for the client and
	// the kernel holds more for the loop.
	_ = app.(*net.TCPConn).SetReadBuffer(16 << 10)
	_ = clientSide.(*net.TCPConn).SetWriteBuffer(16 << 10)
	_ = serverSide.(*net.TCPConn).SetReadBuffer(200 << 10)
	p, err := l.ServeWith(clientSide, serverSide, &pipe{})
	if err != nil {
		t.Fatal(err)
	}
	const total = 256 << 10
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if _, err := db.Write(data); err != nil {
		t.Fatal(err)
	}
	// Wait until the proxy's kernel has acknowledged every byte, then reset.
	rc, err := db.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		var queued int
		_ = rc.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
		if queued == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes never left the server's socket", queued)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = db.(*net.TCPConn).SetLinger(0)
	db.Close()
	_ = app.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(app)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("client read %d of %d bytes (equal: %v), then %v", len(got), total, bytes.Equal(got, data), err)
	}
	if err := waitEnd(t, p); err != nil {
		t.Logf("session ended with %v", err) // a reset may surface as the session's error
	}
}
