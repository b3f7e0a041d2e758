//go:build linux

package loop

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Socket is a connection taken out of Go's poller so that a loop thread can
// serve it, for a connection that moves between loop sessions and
// goroutines: a pooled server connection, lent to one client after another.
// It is a net.Conn for the goroutines that use it between lends (logins,
// settings, resets, liveness checks); their reads and writes wait in
// poll(2), which is slower than Go's poller but rare. While a loop session
// serves it, only that session's thread reads or writes it.
//
// Close may come from any goroutine at any time: it shuts the socket down,
// which wakes whoever waits on it, and the descriptor is closed only when
// the last user lets go, so a loop never sees its number reused under it.
type Socket struct {
	fd     int
	local  net.Addr
	remote net.Addr

	mu        sync.Mutex
	users     int // operations in progress plus the loop session serving it
	closed    bool
	rdeadline time.Time
	wdeadline time.Time

	// A server given back by a loop session stays in that thread's epoll
	// set while it waits in its pool (parked): the next lend on the same
	// thread needs no epoll_ctl, and anything the server sends while idle
	// (a FATAL before it closes) marks it broken at once, so the pool's
	// check before a lend costs no system call. Any other use unparks it.
	parked bool
	home   *thread
	broken bool
	idle   idleEndpoint
}

// idleEndpoint is a parked socket in its thread's table.
type idleEndpoint struct{ s *Socket }

// handle: a parked server is readable or hung up, which an idle server
// must not be: it is broken. A stale event (unparked meanwhile) is
// ignored.
func (e *idleEndpoint) handle(t *thread, _ uint32) {
	s := e.s
	s.mu.Lock()
	if s.parked && s.home == t {
		s.broken = true
		s.unparkLocked()
	}
	s.mu.Unlock()
	t.dropEndpoint(s.fd, e)
}

// unparkLocked takes a parked socket out of its thread's epoll set; s.mu
// held.
func (s *Socket) unparkLocked() {
	if !s.parked {
		return
	}
	t := s.home
	t.mu.Lock()
	if !t.dead {
		_ = t.ctl(unix.EPOLL_CTL_DEL, s.fd, 0)
	}
	t.mu.Unlock()
	s.parked, s.home = false, nil
}

// Detach moves c's socket out of Go's poller into a Socket. c is closed on
// success and must not be used again; on error it is untouched.
func Detach(c net.Conn) (*Socket, error) {
	fd, err := dupSocket(c)
	if err != nil {
		return nil, err
	}
	s := &Socket{fd: fd, local: c.LocalAddr(), remote: c.RemoteAddr()}
	s.idle.s = s
	c.Close()
	return s, nil
}

// use registers a goroutine's use of the descriptor, out of any epoll
// set; false once closed.
func (s *Socket) use() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.unparkLocked()
	s.users++
	return true
}

// done ends a use, closing the descriptor if Close came meanwhile.
func (s *Socket) done() {
	s.mu.Lock()
	s.users--
	last := s.closed && s.users == 0
	s.mu.Unlock()
	if last {
		unix.Close(s.fd)
	}
}

// Close shuts the socket down now and closes it once nobody uses it.
func (s *Socket) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.closed = true
	s.parked, s.home = false, nil // closing the descriptor takes it out of the epoll set
	idle := s.users == 0
	if !idle {
		_ = unix.Shutdown(s.fd, unix.SHUT_RDWR)
	}
	s.mu.Unlock()
	if idle {
		unix.Close(s.fd)
	}
	return nil
}

// Alive reports, without waiting, whether an idle connection can be used:
// the peer has neither closed it nor sent anything unasked.
func (s *Socket) Alive() bool {
	s.mu.Lock()
	if s.parked || s.broken || s.closed {
		ok := !s.broken && !s.closed // its thread watches it
		s.mu.Unlock()
		return ok
	}
	s.mu.Unlock()
	if !s.use() {
		return false
	}
	defer s.done()
	return rawPeek(s.fd) == unix.EAGAIN
}

// pollSlice bounds one wait in poll(2), so a deadline moved by another
// goroutine (SetReadDeadline(time.Now()) to interrupt a read) is seen soon.
const pollSlice = 50 * time.Millisecond

func (s *Socket) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if !s.use() {
		return 0, net.ErrClosed
	}
	defer s.done()
	for {
		n, errno := rawRead(s.fd, b)
		switch {
		case errno == 0 && n == 0:
			return 0, io.EOF
		case errno == 0:
			return n, nil
		case errno != unix.EAGAIN && errno != unix.EINTR:
			return 0, s.opError("read", errno)
		}
		if err := s.wait(unix.POLLIN, true); err != nil {
			return 0, err
		}
	}
}

func (s *Socket) Write(b []byte) (int, error) {
	if !s.use() {
		return 0, net.ErrClosed
	}
	defer s.done()
	written := 0
	for written < len(b) {
		n, errno := rawWrite(s.fd, b[written:])
		if errno == 0 {
			written += n
			continue
		}
		if errno != unix.EAGAIN && errno != unix.EINTR {
			return written, s.opError("write", errno)
		}
		if err := s.wait(unix.POLLOUT, false); err != nil {
			return written, err
		}
	}
	return written, nil
}

// wait blocks in poll(2) for one slice, or until the deadline.
func (s *Socket) wait(events int16, read bool) error {
	s.mu.Lock()
	closed := s.closed
	dl := s.wdeadline
	if read {
		dl = s.rdeadline
	}
	s.mu.Unlock()
	if closed {
		return net.ErrClosed
	}
	slice := pollSlice
	if !dl.IsZero() {
		left := time.Until(dl)
		if left <= 0 {
			return os.ErrDeadlineExceeded
		}
		slice = min(slice, left)
	}
	fds := []unix.PollFd{{Fd: int32(s.fd), Events: events}}
	_, err := unix.Poll(fds, int(slice/time.Millisecond)+1)
	if err != nil && err != unix.EINTR {
		return s.opError("poll", err)
	}
	return nil
}

func (s *Socket) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: s.local, Addr: s.remote, Err: os.NewSyscallError(op, err)}
}

// LocalAddr and RemoteAddr are those of the connection it was made from.
func (s *Socket) LocalAddr() net.Addr  { return s.local }
func (s *Socket) RemoteAddr() net.Addr { return s.remote }

func (s *Socket) SetDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdeadline, s.wdeadline = t, t
	s.mu.Unlock()
	return nil
}

func (s *Socket) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdeadline = t
	s.mu.Unlock()
	return nil
}

func (s *Socket) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.wdeadline = t
	s.mu.Unlock()
	return nil
}

// Connect starts a connection to address, an IP and port ("tcp") or a
// Unix socket path ("unix"), without waiting for it: a loop session
// attaches the Socket at once and writes to it, and the kernel holds the
// first write back (EAGAIN) until the handshake is done, or fails it with
// the reason the connection failed. A host name is ErrUnsupported: its
// lookup would block the thread.
func Connect(network, address string) (*Socket, error) {
	var sa unix.Sockaddr
	family := unix.AF_UNIX
	switch network {
	case "tcp":
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return nil, ErrUnsupported
		}
		if ip := ap.Addr(); ip.Is4() || ip.Is4In6() {
			family = unix.AF_INET
			sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.Unmap().As4()}
		} else {
			family = unix.AF_INET6
			sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ip.As16()}
		}
	case "unix":
		sa = &unix.SockaddrUnix{Name: address}
	default:
		return nil, ErrUnsupported
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if family != unix.AF_UNIX {
		tuneTCP(fd)
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveSeconds)
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveSeconds)
	}
	switch err := unix.Connect(fd, sa); err {
	case nil, unix.EINPROGRESS, unix.EINTR:
	default:
		// A Unix socket whose backlog is full says EAGAIN: refused like
		// any other failure, for the caller to try the slow way.
		unix.Close(fd)
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect "+address, err)}
	}
	// No addresses: a loop session, its only user, never asks, and
	// making them cost two allocations per connection.
	s := &Socket{fd: fd}
	s.idle.s = s
	return s, nil
}

// tuneTCP sets what Go's net package sets on its TCP connections: no
// Nagle delay under a request-response protocol, keepalive to notice a
// peer that vanished.
func tuneTCP(fd int) {
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
}

// keepAliveSeconds is the idle time before the first probe and between
// probes, as the proxy's Go dialer sets them.
const keepAliveSeconds = 30
