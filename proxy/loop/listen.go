//go:build linux

package loop

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Listener accepts connections on the loop's threads: a new client costs
// no goroutine and no registration with Go's poller, only the thread that
// accepted it (see Loop.Listen).
type Listener struct {
	fd       int
	accepted func(s *Session, remote net.Addr) Handler
	threads  []*thread

	mu     sync.Mutex
	closed bool
	left   int // threads that still watch fd
	done   chan struct{}
}

// handle makes the listening socket an endpoint of every thread's table.
func (ls *Listener) handle(t *thread, _ uint32) { t.accept(ls) }

// acceptBatch bounds the connections one wake-up accepts, so that a storm
// of them does not starve the thread's sessions.
const acceptBatch = 32

// Listen takes ln over: every thread accepts from it and serves each new
// connection as a Session whose handler accepted returns. accepted runs on
// the session's thread and must not block; it may use the session at
// once (write to it, End it). ln is closed on success (the loop works on
// a duplicate of its socket); on error it is untouched.
func (l *Loop) Listen(ln net.Listener, accepted func(s *Session, remote net.Addr) Handler) (*Listener, error) {
	if l.closed.Load() {
		return nil, ErrClosed
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return nil, ErrUnsupported
	}
	fd, err := dupSocket(tl)
	if err != nil {
		return nil, err
	}
	ln.Close()
	ls := &Listener{fd: fd, accepted: accepted, threads: l.threads, done: make(chan struct{})}
	ls.left = len(l.threads)
	for _, t := range l.threads {
		if !t.post(task{fn: func(bool) { t.watchListener(ls) }, admit: true}) {
			ls.unwatched()
		}
	}
	return ls, nil
}

// Close stops accepting and waits until no thread watches the socket any
// more. Connections accepted before go on.
func (ls *Listener) Close() {
	ls.mu.Lock()
	first := !ls.closed
	ls.closed = true
	ls.mu.Unlock()
	if first {
		for _, t := range ls.threads {
			// A thread that refuses the task is stopping: its shutdown
			// lets go of the socket.
			t.post(task{fn: func(bool) { t.unwatch(ls) }, admit: true})
		}
	}
	<-ls.done
}

// unwatched counts a thread that let go of the socket; the last one
// closes it.
func (ls *Listener) unwatched() {
	ls.mu.Lock()
	ls.left--
	last := ls.left == 0
	ls.mu.Unlock()
	if last {
		unix.Close(ls.fd)
		close(ls.done)
	}
}

func (t *thread) watchListener(ls *Listener) {
	ls.mu.Lock()
	closed := ls.closed
	ls.mu.Unlock()
	// EPOLLEXCLUSIVE: a connection wakes one waiting thread, not all.
	if closed || t.ctl(unix.EPOLL_CTL_ADD, ls.fd, unix.EPOLLIN|unix.EPOLLEXCLUSIVE) != nil {
		ls.unwatched()
		return
	}
	t.listeners = append(t.listeners, ls)
	t.setEndpoint(ls.fd, ls)
}

// unwatch takes a listener out of the thread.
func (t *thread) unwatch(ls *Listener) {
	for i, x := range t.listeners {
		if x == ls {
			t.listeners = append(t.listeners[:i], t.listeners[i+1:]...)
			_ = t.ctl(unix.EPOLL_CTL_DEL, ls.fd, 0) // fails harmlessly if backing off
			t.dropEndpoint(ls.fd, ls)
			ls.unwatched()
			return
		}
	}
}

// accept takes the connections waiting on ls and serves each here.
func (t *thread) accept(ls *Listener) {
	for range acceptBatch {
		fd, remote, err := rawAccept(ls.fd)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR || err == unix.ECONNABORTED:
			return
		case err != 0:
			// Out of descriptors and the like: the socket stays ready, so
			// stop watching it for a while instead of spinning.
			if t.ctl(unix.EPOLL_CTL_DEL, ls.fd, 0) == nil {
				time.AfterFunc(acceptBackoff, func() {
					t.post(task{fn: func(bool) { t.rewatch(ls) }, admit: true})
				})
			}
			return
		}
		tuneTCP(fd)
		s := newSession(t, nil, fd)
		t.registerSession(s)
		if s.ended {
			continue
		}
		s.h = ls.accepted(s, remote)
		t.settle(s)
	}
}

// acceptBackoff is how long a thread leaves a listener whose accept
// failed for want of resources.
const acceptBackoff = 50 * time.Millisecond

// rewatch watches ls again after acceptBackoff, unless it was closed.
func (t *thread) rewatch(ls *Listener) {
	for _, x := range t.listeners {
		if x == ls {
			_ = t.ctl(unix.EPOLL_CTL_ADD, ls.fd, unix.EPOLLIN|unix.EPOLLEXCLUSIVE)
			return
		}
	}
}

// SetHandler gives the session another handler from now on: a session
// accepted by a Listener starts with one that reads the startup and hands
// over to the one that relays.
func (s *Session) SetHandler(h Handler) { s.h = h }

// ErrReleased is what Wait returns for a session that Release ended.
var ErrReleased = errors.New("loop: session released to a goroutine")

// Release ends the session without closing the client: its socket
// returns to Go's poller as the conn returned, which is the caller's. The
// session must hold no server; bytes written to the client and not taken
// yet are written first, blocking briefly if they must.
func (s *Session) Release() (net.Conn, error) {
	if s.server.fd >= 0 {
		return nil, errors.New("loop: release of a session that holds a server")
	}
	t := s.t
	d := &s.client
	t.retire(s)
	_ = t.ctl(unix.EPOLL_CTL_DEL, d.fd, 0)
	fd := d.fd
	pending := d.pending
	d.pending = nil
	s.err = ErrReleased
	close(s.done)
	f := os.NewFile(uintptr(fd), "client")
	c, err := net.FileConn(f) // a duplicate, in Go's poller
	f.Close()
	d.release()
	if err != nil {
		return nil, err
	}
	if len(pending) > 0 {
		if _, err := c.Write(pending); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}
