//go:build linux

package loop

import (
	"io"
	"net"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Handler speaks a Session's protocol on its loop thread: the proxy's
// pooled relay, which reads client messages, borrows servers and gives
// them back between transactions. Its methods must not block (they hold
// up every session of the thread); work that waits, such as borrowing
// from an exhausted pool, runs on a goroutine that hands its result back
// with Session.Post.
type Handler interface {
	// FromClient gets bytes read from the client; b is valid only during
	// the call.
	FromClient(s *Session, b []byte)
	// FromServer gets bytes read from the server the session holds.
	FromServer(s *Session, b []byte)
	// ServerFailed reports that the held server hung up or failed. The
	// session no longer holds it; sock is the handler's to close.
	ServerFailed(s *Session, sock *Socket, err error)
	// Farewell is called when Stop ended the session; the bytes it
	// returns are written to the client (best effort) before it closes.
	Farewell(s *Session) []byte
}

// Ender is a Handler that takes the end of its session on the loop
// thread, so that no goroutine has to wait in Wait for the whole life of
// the session (for an idle client that goroutine's stack is most of what
// it costs). Ended runs once, after the client is closed; server is the
// server held then, if any, and clean whether every byte written to it had
// gone; it is the handler's to give back or close. Like the other
// methods, it must not block.
type Ender interface {
	Ended(s *Session, err error, server *Socket, clean bool)
}

// Session is a client served by a loop thread, with the server it holds
// at the moment, if any. A server may be the session's for life (a
// passthrough session, see ServeWith) or come and go: a pooled handler
// attaches one for a transaction and detaches it at the end.
//
// Methods other than Stop, Post, Wait and Done may be called only on the
// session's loop thread: from the handler's methods or a posted function.
type Session struct {
	t      *thread
	h      Handler
	client sessSide
	server sessSide // fd -1 when no server is held

	held   bool  // the client is not read (the handler waits for something)
	endReq bool  // End was called; the session ends when the handler returns
	endErr error // with this error

	stopped atomic.Bool
	ended   bool // the thread's: Stop and Post reach it through tasks

	done chan struct{}
	err  error
	// left is the server held when the session ended, and clean whether
	// every byte written to it had gone.
	left  *Socket
	clean bool
}

// sessSide is one socket of a session.
type sessSide struct {
	sess     *Session
	fd       int
	isServer bool
	sock     *Socket // the server's; nil for the client
	outbox           // written by the handler, not yet taken by the socket
	gone     bool    // hung up while not read: out of the epoll set until read again
	events   uint32
	werr     error // a write failed
}

func (s *sessSide) handle(t *thread, ev uint32) { t.handleSession(s, ev) }

// Serve takes over client and serves it on a loop thread with h until the
// client leaves, End or Stop. On success client is closed (the loop works
// on a duplicate of its socket); on error it is untouched.
func (l *Loop) Serve(client net.Conn, h Handler) (*Session, error) {
	return l.ServeWith(client, nil, h)
}

// ServeWith is Serve for a client whose server is chosen and ready: the
// session starts out holding server (see Attach), and the loop relays
// both sockets from then on. A nil server is Serve. On error both conns
// are untouched.
func (l *Loop) ServeWith(client, server net.Conn, h Handler) (*Session, error) {
	if l.closed.Load() {
		return nil, ErrClosed
	}
	cfd, err := dupSocket(client)
	if err != nil {
		return nil, err
	}
	var sock *Socket
	if server != nil {
		if sock, err = Detach(server); err != nil {
			unix.Close(cfd)
			return nil, err
		}
	}
	client.Close()
	t := l.threads[int(l.next.Add(1))%len(l.threads)]
	s := newSession(t, h, cfd)
	start := func(bool) {
		t.registerSession(s)
		if sock != nil && (s.ended || !s.Attach(sock)) {
			sock.Close()
			t.endSession(s, net.ErrClosed)
		}
	}
	if !t.post(task{sess: s, fn: start, admit: true}) {
		unix.Close(cfd)
		if sock != nil {
			sock.Close()
		}
		return nil, ErrClosed
	}
	return s, nil
}

func newSession(t *thread, h Handler, clientFD int) *Session {
	s := &Session{t: t, h: h, done: make(chan struct{})}
	s.client = sessSide{sess: s, fd: clientFD}
	s.server = sessSide{sess: s, fd: -1, isServer: true}
	return s
}

// Post runs fn on the session's loop thread. alive is false when the
// session had ended before fn could run: fn must then let go of whatever
// it meant to hand over. fn runs exactly once.
func (s *Session) Post(fn func(alive bool)) {
	if !s.t.post(task{sess: s, fn: fn}) {
		fn(false)
	}
}

// Stop ends the session from any goroutine, calling Farewell first. It
// does not wait; use Wait.
func (s *Session) Stop() {
	s.stopped.Store(true)
	s.Post(func(alive bool) {
		if alive {
			s.t.endSession(s, nil)
		}
	})
}

// Wait blocks until the session has ended and returns why: nil when the
// client left cleanly or Stop ended it. The server it held then, if any,
// is returned with whether every byte written to it had gone; it is the
// caller's to give back or close, unless the handler is an Ender.
func (s *Session) Wait() (err error, server *Socket, clean bool) {
	<-s.done
	return s.err, s.left, s.clean
}

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// WriteClient writes b to the client, keeping what it does not take yet;
// the server is not read until it has.
func (s *Session) WriteClient(b []byte) { s.write(&s.client, b) }

// WriteServer writes b to the held server, keeping what it does not take
// yet; the client is not read until it has.
func (s *Session) WriteServer(b []byte) { s.write(&s.server, b) }

func (s *Session) write(d *sessSide, b []byte) {
	if s.ended || d.fd < 0 || d.werr != nil || len(b) == 0 {
		return
	}
	if errno := d.send(d.fd, b); errno != 0 {
		d.werr = errno
	}
}

// Attach makes sock the session's server; it reports false when sock was
// closed meanwhile (or the session holds one already).
func (s *Session) Attach(sock *Socket) bool {
	if s.ended || s.server.fd >= 0 {
		return false
	}
	t := s.t
	sock.mu.Lock()
	if sock.closed || sock.broken {
		sock.mu.Unlock()
		return false
	}
	here := sock.parked && sock.home == t
	if here {
		sock.parked, sock.home = false, nil // still registered, for EPOLLIN
	} else {
		sock.unparkLocked()
	}
	sock.users++
	sock.mu.Unlock()
	d := &s.server
	d.fd, d.sock, d.events = sock.fd, sock, unix.EPOLLIN
	if !here {
		if err := t.ctl(unix.EPOLL_CTL_ADD, d.fd, d.events); err != nil {
			d.empty()
			sock.done()
			return false
		}
	}
	t.setEndpoint(d.fd, d)
	return true
}

// Detach lets go of the held server and reports whether every byte
// written to it had gone (nothing is lost that the handler counted on).
func (s *Session) Detach() (clean bool) {
	d := &s.server
	if d.fd < 0 {
		return true
	}
	clean = len(d.pending) == 0 && d.werr == nil
	if clean && !d.gone {
		s.t.parkServer(s)
		return true
	}
	s.t.dropServer(s)
	return clean
}

// Hold stops (true) or resumes (false) reading the client, while the
// handler waits for something it cannot do on the thread.
func (s *Session) Hold(on bool) { s.held = on }

// End ends the session with err once the handler returns.
func (s *Session) End(err error) {
	if !s.endReq {
		s.endReq, s.endErr = true, err
	}
}

// task is work handed to a thread from elsewhere.
type task struct {
	sess  *Session
	fn    func(alive bool)
	admit bool // registers sess: runs even though sess is not live yet
}

func (t *thread) post(k task) bool {
	t.mu.Lock()
	if t.stopping {
		t.mu.Unlock()
		return false
	}
	t.tasks = append(t.tasks, k)
	w := t.wakeLocked()
	t.mu.Unlock()
	if w {
		t.wake()
	}
	return true
}

func (t *thread) runTask(k task) {
	s := k.sess
	if k.admit {
		k.fn(true)
		return
	}
	alive := !s.ended
	k.fn(alive)
	if alive {
		t.settle(s)
	}
}

func (t *thread) setEndpoint(fd int, e endpoint) {
	for fd >= len(t.sides) {
		t.sides = append(t.sides, make([]endpoint, len(t.sides)+64)...)
	}
	t.sides[fd] = e
}

func (t *thread) registerSession(s *Session) {
	t.sessions[s] = struct{}{}
	d := &s.client
	d.events = unix.EPOLLIN
	t.setEndpoint(d.fd, d)
	if err := t.ctl(unix.EPOLL_CTL_ADD, d.fd, d.events); err != nil {
		t.endSession(s, err)
	}
}

func (t *thread) handleSession(d *sessSide, ev uint32) {
	s := d.sess
	if ev&unix.EPOLLOUT != 0 && len(d.pending) > 0 {
		if errno := d.drain(d.fd); errno != 0 {
			d.werr = errno
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 && d.werr == nil {
		if !t.mayRead(d) {
			// A hang-up or an error, always reported, or bytes on a side
			// whose EPOLLIN was left registered (see sessInterest).
			if ev&(unix.EPOLLHUP|unix.EPOLLERR) == 0 {
				t.setInterest(d, d.events&^unix.EPOLLIN)
			} else {
				if len(d.pending) > 0 {
					d.werr = io.ErrClosedPipe // it can no longer take what waits for it
				} else {
					d.gone = true
					d.events = 0
					_ = t.ctl(unix.EPOLL_CTL_DEL, d.fd, 0)
				}
			}
		} else {
			n, errno := rawRead(d.fd, t.buf)
			switch {
			case errno == unix.EAGAIN || errno == unix.EINTR:
			case errno != 0 || n == 0:
				var err error = io.EOF
				if errno != 0 {
					err = errno
				}
				if d.isServer {
					t.serverFailed(s, err)
				} else {
					t.endSession(s, nilIfEOF(err))
					return
				}
			case d.isServer:
				s.h.FromServer(s, t.buf[:n])
			default:
				s.h.FromClient(s, t.buf[:n])
			}
		}
	}
	t.settle(s)
}

func nilIfEOF(err error) error {
	if err == io.EOF {
		return nil
	}
	return err
}

// mayRead says whether a side is read now: the client unless the handler
// holds it or the server has not taken what was written to it, the
// server unless the client has not.
func (t *thread) mayRead(d *sessSide) bool {
	s := d.sess
	if d.isServer {
		return len(s.client.pending) == 0
	}
	return !s.held && len(s.server.pending) == 0
}

// settle acts on what the handler asked for and left behind, then
// registers what each socket waits for.
func (t *thread) settle(s *Session) {
	for !s.ended {
		switch {
		case s.endReq:
			t.endSession(s, s.endErr)
		case s.client.werr != nil:
			t.endSession(s, s.client.werr)
		case s.server.werr != nil:
			t.serverFailed(s, s.server.werr)
			continue
		}
		break
	}
	if s.ended {
		return
	}
	for _, d := range [2]*sessSide{&s.client, &s.server} {
		if d.fd < 0 {
			continue
		}
		var want uint32
		if t.mayRead(d) {
			want |= unix.EPOLLIN
		}
		if len(d.pending) > 0 {
			want |= unix.EPOLLOUT
		}
		t.sessInterest(d, want)
	}
}

func (t *thread) sessInterest(d *sessSide, want uint32) {
	if d.gone {
		if want&unix.EPOLLIN == 0 {
			return
		}
		// Hung up while not read: read it now, to its end.
		d.gone = false
		d.events = want
		if err := t.ctl(unix.EPOLL_CTL_ADD, d.fd, want); err != nil {
			d.werr = err
		}
		return
	}
	if d.events == want || d.events == want|unix.EPOLLIN {
		// EPOLLIN is taken out lazily, when it fires while the side may
		// not be read: a client held while it waits for a server rarely
		// sends anything meanwhile, so its wait costs no epoll_ctl.
		return
	}
	t.setInterest(d, want)
}

func (t *thread) setInterest(d *sessSide, want uint32) {
	if d.events == want {
		return
	}
	d.events = want
	if err := t.ctl(unix.EPOLL_CTL_MOD, d.fd, want); err != nil {
		d.werr = err
	}
}

// dropServer takes the server out of the session and the epoll set.
func (t *thread) dropServer(s *Session) *Socket {
	d := &s.server
	if d.fd < 0 {
		return nil
	}
	if !d.gone {
		_ = t.ctl(unix.EPOLL_CTL_DEL, d.fd, 0)
	}
	t.dropEndpoint(d.fd, d)
	sock := d.sock
	d.empty()
	sock.done()
	return sock
}

// parkServer takes a server given back cleanly out of the session but
// leaves it in the epoll set, watched for anything it sends while idle.
func (t *thread) parkServer(s *Session) {
	d := &s.server
	sock := d.sock
	if d.events != unix.EPOLLIN {
		if err := t.ctl(unix.EPOLL_CTL_MOD, d.fd, unix.EPOLLIN); err != nil {
			t.dropServer(s)
			return
		}
	}
	t.setEndpoint(d.fd, &sock.idle)
	d.empty()
	sock.mu.Lock()
	sock.parked, sock.home = true, t
	sock.mu.Unlock()
	sock.done()
}

func (t *thread) serverFailed(s *Session, err error) {
	sock := t.dropServer(s)
	if sock != nil {
		s.h.ServerFailed(s, sock, err)
	}
}

// endSession closes the client, once, keeps the held server for Wait and
// wakes it.
func (t *thread) endSession(s *Session, err error) {
	if s.ended {
		return
	}
	t.retire(s)
	d := &s.client
	if s.stopped.Load() {
		if b := s.h.Farewell(s); len(b) > 0 {
			_, _ = rawWrite(d.fd, append(d.pending, b...))
		}
		err = nil
	}
	d.release()
	unix.Close(d.fd)
	if s.server.fd >= 0 {
		s.clean = len(s.server.pending) == 0 && s.server.werr == nil
		s.left = t.dropServer(s) // open until the caller closes it
	}
	s.err = err
	close(s.done)
	if e, ok := s.h.(Ender); ok {
		e.Ended(s, err, s.left, s.clean)
	}
}

// retire takes an ending session out of the thread: nothing reaches it
// any more, and tasks posted to it run with alive false.
func (t *thread) retire(s *Session) {
	delete(t.sessions, s)
	s.ended = true
	t.dropEndpoint(s.client.fd, &s.client)
}

// empty leaves the server side of a session without a server.
func (d *sessSide) empty() {
	d.release()
	d.fd, d.sock, d.events, d.gone, d.werr = -1, nil, 0, false, nil
}
