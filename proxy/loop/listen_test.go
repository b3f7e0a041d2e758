//go:build linux

package loop

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// greeter answers "hi" to a client on the thread; a client that sends
// "go" is released to a goroutine, which answers "bye" and closes.
type greeter struct {
	remote   chan net.Addr
	released chan net.Conn
	buf      []byte
}

func (g *greeter) FromClient(s *Session, b []byte) {
	g.buf = append(g.buf, b...)
	if bytes.Equal(g.buf, []byte("go")) {
		c, err := s.Release()
		if err != nil {
			s.End(err)
			return
		}
		g.released <- c
		return
	}
	if bytes.HasSuffix(g.buf, []byte("?")) {
		s.WriteClient([]byte("hi"))
		g.buf = g.buf[:0]
	}
}
func (*greeter) FromServer(*Session, []byte)                    {}
func (*greeter) ServerFailed(_ *Session, sock *Socket, _ error) { sock.Close() }
func (*greeter) Farewell(*Session) []byte                       { return []byte("stopped") }

func TestListenerAcceptsOnTheThread(t *testing.T) {
	l := newLoop(t, 2)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	var mu sync.Mutex
	var sessions []*Session
	released := make(chan net.Conn, 4)
	remotes := make(chan net.Addr, 8)
	ls, err := l.Listen(ln, func(s *Session, remote net.Addr) Handler {
		mu.Lock()
		sessions = append(sessions, s)
		mu.Unlock()
		remotes <- remote
		return &greeter{released: released}
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			ls.Close()
		}
	})

	// Served on the thread.
	c1, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if _, err := c1.Write([]byte("?")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c1, 2); got != "hi" {
		t.Fatalf("got %q", got)
	}
	if r := <-remotes; r.String() != c1.LocalAddr().String() {
		t.Fatalf("remote %v, want %v", r, c1.LocalAddr())
	}

	// Released to a goroutine, which goes on with the same connection.
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	<-remotes
	if _, err := c2.Write([]byte("go")); err != nil {
		t.Fatal(err)
	}
	var gc net.Conn
	select {
	case gc = <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("not released")
	}
	if _, err := gc.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	gc.Close()
	if got := readN(t, c2, 3); got != "bye" {
		t.Fatalf("got %q", got)
	}
	mu.Lock()
	s2 := sessions[1]
	mu.Unlock()
	if err, _, _ := waitSession(t, s2); !errors.Is(err, ErrReleased) {
		t.Fatalf("released session ended with %v", err)
	}

	// Close stops accepting; the sessions accepted before go on until
	// stopped.
	ls.Close()
	closed = true
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("connected after Close")
	}
	if _, err := c1.Write([]byte("?")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c1, 2); got != "hi" {
		t.Fatalf("after Close got %q", got)
	}
	mu.Lock()
	s1 := sessions[0]
	mu.Unlock()
	s1.Stop()
	waitSession(t, s1)
	if b, _ := io.ReadAll(c1); string(b) != "stopped" {
		t.Fatalf("farewell %q", b)
	}
}

// A loop closed under a listener lets go of it: Close returns.
func TestListenerCloseAfterLoop(t *testing.T) {
	l, err := New(1)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls, err := l.Listen(ln, func(*Session, net.Addr) Handler { return &greeter{} })
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	done := make(chan struct{})
	go func() {
		ls.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung after the loop closed")
	}
}
