package loop

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// relayHandler is a minimal protocol: the client's bytes go to the held
// server; a client byte '!' asks for a server (attached on a goroutine
// through Post, as a pool that must wait would); the server's bytes go to
// the client, and a server byte '.' gives the server back.
type relayHandler struct {
	mu       sync.Mutex // guards what the test reads
	servers  chan *Socket
	released []*Socket
	failed   []error
	farewell []byte
	pending  []byte // client bytes waiting for a server
	posts    sync.WaitGroup
}

func (h *relayHandler) FromClient(s *Session, b []byte) {
	if i := bytes.IndexByte(b, '!'); i >= 0 && s.server.fd < 0 {
		h.pending = append(h.pending, b[i+1:]...)
		s.Hold(true)
		h.posts.Add(1)
		go func() {
			defer h.posts.Done()
			sock := <-h.servers
			s.Post(func(alive bool) {
				if !alive {
					sock.Close()
					return
				}
				s.Hold(false)
				if !s.Attach(sock) {
					s.End(errors.New("attach failed"))
					return
				}
				s.WriteServer(h.pending)
				h.pending = nil
			})
		}()
		return
	}
	s.WriteServer(b)
}

func (h *relayHandler) FromServer(s *Session, b []byte) {
	s.WriteClient(b)
	if len(b) > 0 && b[len(b)-1] == '.' {
		sock := s.server.sock
		clean := s.Detach()
		h.mu.Lock()
		h.released = append(h.released, sock)
		h.mu.Unlock()
		if !clean {
			s.End(errors.New("detached with bytes pending"))
		}
	}
}

func (h *relayHandler) ServerFailed(s *Session, sock *Socket, err error) {
	h.mu.Lock()
	h.failed = append(h.failed, err)
	h.mu.Unlock()
	sock.Close()
	s.WriteClient([]byte("lost"))
}

func (h *relayHandler) Farewell(*Session) []byte { return h.farewell }

// serverSocket returns a Socket for one end of a loopback connection and
// the other end, as a Go conn, playing the server.
func serverSocket(t *testing.T) (*Socket, net.Conn) {
	t.Helper()
	a, db := tcpPair(t)
	s, err := Detach(a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, db
}

func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return string(b)
}

func waitSession(t *testing.T, s *Session) (error, *Socket, bool) {
	t.Helper()
	select {
	case <-s.Done():
		return s.Wait()
	case <-time.After(10 * time.Second):
		t.Fatal("session did not end")
		return nil, nil, false
	}
}

// served starts a loop of one thread serving a client with a relayHandler
// whose servers channel holds up to buffered; it returns the handler, the
// application's end of the client connection and the session.
func served(t *testing.T, buffered int) (*relayHandler, net.Conn, *Session) {
	t.Helper()
	l := newLoop(t, 1)
	h := &relayHandler{servers: make(chan *Socket, buffered)}
	app, clientSide := tcpPair(t)
	s, err := l.Serve(clientSide, h)
	if err != nil {
		t.Fatal(err)
	}
	return h, app, s
}

// lendFor has the client ask for a server and hands it sock; it returns
// once the query reached db, sock's far end.
func (h *relayHandler) lendFor(t *testing.T, app net.Conn, sock *Socket, db net.Conn) {
	t.Helper()
	h.servers <- sock
	if _, err := app.Write([]byte("!q")); err != nil {
		t.Fatal(err)
	}
	readN(t, db, 1)
}

func TestSessionLendsAndGivesBackServers(t *testing.T) {
	h, app, s := served(t, 2)
	sock1, db1 := serverSocket(t)
	sock2, db2 := serverSocket(t)
	h.servers <- sock1
	h.servers <- sock2
	for i, db := range []net.Conn{db1, db2} {
		if _, err := app.Write([]byte("!query")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, db, 5); got != "query" {
			t.Fatalf("server %d got %q", i, got)
		}
		if _, err := db.Write([]byte("rows.")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, app, 5); got != "rows." {
			t.Fatalf("client got %q from server %d", got, i)
		}
	}
	app.Close()
	err, left, _ := waitSession(t, s)
	if err != nil || left != nil {
		t.Fatalf("Wait = %v, %v; want a clean end holding no server", err, left)
	}
	h.posts.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.released) != 2 || h.released[0] != sock1 || h.released[1] != sock2 {
		t.Fatalf("released %v, want both servers in turn", h.released)
	}
	// A detached server is usable by goroutines again.
	if !sock1.Alive() {
		t.Fatal("server 1 not alive after its lend")
	}
	if _, err := sock1.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, db1, 5); got != "again" {
		t.Fatalf("server 1 got %q after the lend", got)
	}
}

func TestSessionEndHandsBackTheHeldServer(t *testing.T) {
	h, app, s := served(t, 1)
	h.farewell = []byte("bye")
	sock, db := serverSocket(t)
	h.lendFor(t, app, sock, db)
	s.Stop()
	err, left, clean := waitSession(t, s)
	if err != nil || left != sock || !clean {
		t.Fatalf("Wait = %v, %v, %v; want nil, the held server, clean", err, left, clean)
	}
	if got := readN(t, app, 3); got != "bye" {
		t.Fatalf("farewell %q", got)
	}
	// The held server is the caller's: still open.
	if _, err := left.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	readN(t, db, 1)
	h.posts.Wait()
}

func TestSessionServerFailure(t *testing.T) {
	h, app, s := served(t, 1)
	sock, db := serverSocket(t)
	h.lendFor(t, app, sock, db)
	db.Close()
	if got := readN(t, app, 4); got != "lost" {
		t.Fatalf("client got %q", got)
	}
	// Another goroutine closing the held server is a failure too.
	sock2, db2 := serverSocket(t)
	h.lendFor(t, app, sock2, db2)
	sock2.Close()
	if got := readN(t, app, 4); got != "lost" {
		t.Fatalf("client got %q", got)
	}
	app.Close()
	waitSession(t, s)
	h.posts.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.failed) != 2 {
		t.Fatalf("failures %v, want 2", h.failed)
	}
}

func TestSessionPostAfterEnd(t *testing.T) {
	l := newLoop(t, 1)
	app, clientSide := tcpPair(t)
	s, err := l.Serve(clientSide, &relayHandler{})
	if err != nil {
		t.Fatal(err)
	}
	app.Close()
	waitSession(t, s)
	got := make(chan bool, 1)
	s.Post(func(alive bool) { got <- alive })
	if <-got {
		t.Fatal("a task posted after the end ran as alive")
	}
	l.Close()
	s.Post(func(alive bool) { got <- alive })
	if <-got {
		t.Fatal("a task posted after Close ran as alive")
	}
}

// A client that does not read holds the server back: its output waits in
// the kernel, not in a growing buffer, and arrives whole.
func TestSessionSlowClient(t *testing.T) {
	h, app, s := served(t, 1)
	sock, db := serverSocket(t)
	h.lendFor(t, app, sock, db)
	data := make([]byte, 16<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	data[len(data)-1] = '.'
	go func() { _, _ = db.Write(data) }()
	time.Sleep(50 * time.Millisecond) // let the loop fill the client's socket
	h2 := sha256.New()
	_ = app.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := io.CopyN(h2, app, int64(len(data))); err != nil {
		t.Fatalf("after %d bytes: %v", n, err)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h2.Sum(nil), want[:]) {
		t.Fatal("the client got different bytes")
	}
	app.Close()
	waitSession(t, s)
	h.posts.Wait()
}

func TestSocketAsConn(t *testing.T) {
	sock, db := serverSocket(t)
	if !sock.Alive() {
		t.Fatal("fresh socket not alive")
	}
	if _, err := db.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for sock.Alive() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if sock.Alive() {
		t.Fatal("a socket with unasked bytes is alive")
	}
	b := make([]byte, 1)
	if n, err := sock.Read(b); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v", n, err)
	}
	_ = sock.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := sock.Read(b); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline = %v", err)
	}
	_ = sock.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := sock.Read(b)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	sock.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Read after Close succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Read")
	}
	if _, err := sock.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v", err)
	}
}

// A server given back stays watched by its thread: anything it sends while
// idle marks it broken, so the pool never lends it; the next lend on the
// same thread takes it as it is, and a goroutine's use takes it out.
func TestParkedServer(t *testing.T) {
	h, app, s := served(t, 3)
	lendOnce := func(sock *Socket, db net.Conn) {
		t.Helper()
		h.lendFor(t, app, sock, db)
		if _, err := db.Write([]byte("r.")); err != nil {
			t.Fatal(err)
		}
		readN(t, app, 2)
	}
	parked := func(sock *Socket) bool {
		sock.mu.Lock()
		defer sock.mu.Unlock()
		return sock.parked
	}
	sock, db := serverSocket(t)
	lendOnce(sock, db)
	eventually(t, func() bool { return parked(sock) })
	if !sock.Alive() {
		t.Fatal("a parked idle server is not alive")
	}
	lendOnce(sock, db) // lent again on the same thread
	eventually(t, func() bool { return parked(sock) })
	// The server says something while idle (as PostgreSQL does before it
	// closes a connection it terminates): broken, without a peek.
	if _, err := db.Write([]byte("E")); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return !sock.Alive() })
	if parked(sock) {
		t.Fatal("a broken server is still parked")
	}
	// A goroutine using a parked server takes it out of the epoll set, so
	// the loop does not take its answers for idle chatter.
	sock2, db2 := serverSocket(t)
	lendOnce(sock2, db2)
	eventually(t, func() bool { return parked(sock2) })
	if _, err := sock2.Write([]byte("w")); err != nil {
		t.Fatal(err)
	}
	if parked(sock2) {
		t.Fatal("still parked after a goroutine's write")
	}
	readN(t, db2, 1)
	if _, err := db2.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(sock2, b); err != nil || b[0] != 'a' {
		t.Fatalf("goroutine read %q, %v", b, err)
	}
	if !sock2.Alive() {
		t.Fatal("server broken by a goroutine's use")
	}
	app.Close()
	waitSession(t, s)
	h.posts.Wait()
}

func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// Bytes a held client sends while it waits are read once it is resumed,
// in order, after what it sent before.
func TestSessionHeldClientSendsMore(t *testing.T) {
	h, app, s := served(t, 0)
	if _, err := app.Write([]byte("!a")); err != nil {
		t.Fatal(err)
	}
	// No server yet: the session is held while these arrive.
	if _, err := app.Write([]byte("bc")); err != nil {
		t.Fatal(err)
	}
	sock, db := serverSocket(t)
	h.servers <- sock
	if got := readN(t, db, 3); got != "abc" {
		t.Fatalf("server got %q, want abc", got)
	}
	app.Close()
	waitSession(t, s)
	h.posts.Wait()
}

// enderHandler is a relayHandler that takes the end of its session on
// the thread.
type enderHandler struct {
	relayHandler
	ended chan endReport
}

type endReport struct {
	err    error
	server *Socket
	clean  bool
}

func (h *enderHandler) Ended(_ *Session, err error, server *Socket, clean bool) {
	h.ended <- endReport{err, server, clean}
}

func TestSessionEnderGetsTheEnd(t *testing.T) {
	l := newLoop(t, 1)
	h := &enderHandler{relayHandler: relayHandler{servers: make(chan *Socket, 1)}, ended: make(chan endReport, 2)}
	app, clientSide := tcpPair(t)
	s, err := l.Serve(clientSide, h)
	if err != nil {
		t.Fatal(err)
	}
	sock, db := serverSocket(t)
	h.lendFor(t, app, sock, db)
	app.Close() // the client leaves while it holds a server
	var r endReport
	select {
	case r = <-h.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("Ended was not called")
	}
	if r.err != nil || r.server != sock || !r.clean {
		t.Fatalf("Ended(%v, %v, %v); want nil, the held server, clean", r.err, r.server, r.clean)
	}
	// Ended runs after the session is done, and once.
	select {
	case <-s.Done():
	default:
		t.Fatal("Ended ran before Done was closed")
	}
	s.Stop()
	h.posts.Wait()
	select {
	case r := <-h.ended:
		t.Fatalf("Ended called again: %+v", r)
	default:
	}
	// The held server is the handler's: still open.
	if _, err := r.server.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	readN(t, db, 1)
}
