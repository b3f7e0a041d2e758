//go:build linux

// Package loop relays pairs of sockets (a client and its server) on a few
// goroutines, each running one epoll loop, the way HAProxy and PgBouncer
// do. A goroutine per direction costs a park, a netpoller wake-up and
// often a hand-off between cores for every message; on a machine whose
// cores are shared with PostgreSQL that is most of a relay's cost. A loop
// thread instead reads whatever is ready and writes it straight to the
// peer: in the steady state a message costs one read and one write, and
// one epoll_wait is shared by every message that became ready meanwhile.
//
// A pair is owned by exactly one thread from Attach until it ends; only
// that thread reads, writes or closes its sockets. Stop is the one call
// another goroutine may make on a running pair.
package loop

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// waitSlice bounds a wait that the scheduler does not know about, in ms.
const waitSlice = 100

// readBuf is the size of the one read buffer each thread shares among
// its pairs: a result set moves in chunks of up to this size.
const readBuf = 64 << 10

// ErrUnsupported is returned by Attach for connections the loop cannot
// take over (TLS, or anything without a kernel socket under it); the
// caller relays those itself.
var ErrUnsupported = errors.New("loop: connection has no plain socket")

// ErrClosed is returned by Attach once Close has been called.
var ErrClosed = errors.New("loop: closed")

// Hooks observe a pair on its loop thread. Each must be quick and must
// not block: it holds up every pair of that thread. Nil hooks are skipped.
type Hooks struct {
	// FromServer sees each chunk read from the server before it is
	// forwarded; an error ends the pair with that error and the chunk is
	// not forwarded.
	FromServer func(b []byte) error
	// Relayed counts bytes forwarded in each direction.
	Relayed func(toServer bool, n int)
	// Farewell is called when a pair that Stop ended is closing; the
	// bytes it returns are written to the client (best effort, without
	// blocking) just before the client's socket is closed.
	Farewell func() []byte
	// Ended is called once the pair has ended and both sockets are
	// closed, with what Wait returns: the caller finishes the session
	// there instead of keeping a goroutine in Wait for its whole life.
	Ended func(err error)
}

// Loop is a set of relay threads. The zero value is not usable; call New.
type Loop struct {
	threads []*thread
	next    atomic.Uint32
	closed  atomic.Bool
}

// New starts n relay threads (at least one).
func New(n int) (*Loop, error) {
	if n < 1 {
		n = 1
	}
	l := &Loop{}
	rawWait := runtime.GOMAXPROCS(0) > n
	for range n {
		t, err := newThread()
		if err != nil {
			l.Close()
			return nil, err
		}
		l.threads = append(l.threads, t)
		go t.run(rawWait)
	}
	return l, nil
}

// Close ends every pair still relayed, stops the threads and waits for
// them to exit.
func (l *Loop) Close() {
	if l.closed.Swap(true) {
		return
	}
	for _, t := range l.threads {
		t.stop()
	}
	for _, t := range l.threads {
		<-t.exited
	}
}

// Attach takes over client and server and relays between them until one
// side closes, an I/O error occurs, a hook fails or Stop is called. On
// success both conns are closed (the loop works on duplicates of their
// sockets) and must not be used again; on error they are untouched.
func (l *Loop) Attach(client, server net.Conn, h Hooks) (*Pair, error) {
	if l.closed.Load() {
		return nil, ErrClosed
	}
	cfd, err := dupSocket(client)
	if err != nil {
		return nil, err
	}
	sfd, err := dupSocket(server)
	if err != nil {
		unix.Close(cfd)
		return nil, err
	}
	// Closing the originals takes them out of Go's own poller, so only
	// this loop hears about the sockets from now on.
	client.Close()
	server.Close()
	p := &Pair{hooks: h, done: make(chan struct{})}
	p.client = side{fd: cfd, pair: p, peer: &p.server}
	p.server = side{fd: sfd, pair: p, peer: &p.client, isServer: true}
	t := l.threads[int(l.next.Add(1))%len(l.threads)]
	if !t.post(task{fn: func(bool) { t.register(p) }, admit: true}) {
		unix.Close(cfd)
		unix.Close(sfd)
		return nil, ErrClosed
	}
	return p, nil
}

// dupSocket returns a duplicate of c's socket descriptor. The duplicate
// shares the open file, so it is non-blocking like the original.
func dupSocket(c any) (int, error) {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn, *net.TCPListener:
	default:
		return -1, ErrUnsupported
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup socket: %w", derr)
	}
	return fd, nil
}

// Pair is a client and its server relayed by a loop thread.
type Pair struct {
	hooks  Hooks
	client side
	server side

	stopped atomic.Bool
	// ended is set when the thread closes the sockets. The thread writes
	// it under mu and reads it freely; Stop reads it under mu, so it
	// never shuts down a descriptor number that was reused.
	mu    sync.Mutex
	ended bool

	done chan struct{}
	err  error // set before done is closed
}

// side is one socket of a pair and the bytes waiting to be written to it.
type side struct {
	fd       int
	pair     *Pair
	peer     *side
	isServer bool
	outbox   // bytes read from the peer that this socket did not take yet
	// gone is set when the socket hung up while its peer still had bytes
	// from it to take: it is out of the epoll set (a hang-up is reported
	// whatever the interest set, so it would wake the loop in a spin)
	// until the peer has taken them, and then read to its end.
	gone   bool
	events uint32 // the epoll interest set now registered
}

// Stop ends the pair from any goroutine: the server link is shut down and
// the thread closes both sockets, calling Farewell first. It does not
// wait; use Wait.
func (p *Pair) Stop() {
	p.stopped.Store(true)
	p.mu.Lock()
	if !p.ended {
		_ = unix.Shutdown(p.server.fd, unix.SHUT_RDWR)
	}
	p.mu.Unlock()
}

// Wait blocks until the pair has ended and both sockets are closed. It
// returns nil when a side closed cleanly or Stop ended the pair.
func (p *Pair) Wait() error {
	<-p.done
	return p.err
}

// Done is closed when the pair has ended.
func (p *Pair) Done() <-chan struct{} { return p.done }

// thread is one epoll loop and the pairs it owns.
type thread struct {
	epfd     int
	wakefd   int // eventfd: new pairs or stop
	buf      []byte
	sides    []endpoint // indexed by descriptor number; owned by the loop goroutine
	pairs    map[*Pair]struct{}
	sessions map[*Session]struct{}
	// listeners this thread accepts from (see Listen).
	listeners []*Listener
	exited    chan struct{}

	mu       sync.Mutex
	tasks    []task // handed over by other goroutines: new pairs and sessions, posted work
	spare    []task // the other buffer of tasks, swapped at each admit
	stopping bool
	// sleeping is set while the thread waits in epoll_wait, woken is set
	// once the eventfd has been written since: work handed over while the
	// thread is busy is picked up before it waits again, without a write.
	sleeping bool
	woken    bool
	dead     bool // epfd is closed
}

// endpoint is a socket the thread serves: a side of a pair or of a session.
type endpoint interface{ handle(t *thread, ev uint32) }

func (s *side) handle(t *thread, ev uint32) { t.handle(s, ev) }

func newThread() (*thread, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wfd)}); err != nil {
		unix.Close(epfd)
		unix.Close(wfd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return &thread{epfd: epfd, wakefd: wfd, buf: make([]byte, readBuf), pairs: make(map[*Pair]struct{}), sessions: make(map[*Session]struct{}), exited: make(chan struct{})}, nil
}

var one = [8]byte{1}

func (t *thread) wake() {
	_, _ = unix.Write(t.wakefd, one[:])
}

// wakeLocked says whether the caller, holding t.mu after handing work
// over, must wake the thread (then call wake after unlocking).
func (t *thread) wakeLocked() bool {
	if !t.sleeping || t.woken {
		return false
	}
	t.woken = true
	return true
}

// ctl changes fd's registration in the thread's epoll set.
func (t *thread) ctl(op, fd int, events uint32) error {
	return unix.EpollCtl(t.epfd, op, fd, &unix.EpollEvent{Events: events, Fd: int32(fd)})
}

// dropEndpoint forgets fd in the thread's table if e still holds it.
func (t *thread) dropEndpoint(fd int, e endpoint) {
	if fd < len(t.sides) && t.sides[fd] == e {
		t.sides[fd] = nil
	}
}

func (t *thread) stop() {
	t.mu.Lock()
	t.stopping = true
	t.woken = true
	t.mu.Unlock()
	t.wake()
}

// run is the loop. When the process has a P to spare for each loop
// (GOMAXPROCS > loops), a loop waits in epoll_wait without telling the
// scheduler (rawWait): its P stays with it, so a wake-up costs no P
// hand-off between threads, which measured 15-25% of throughput under
// pgbench. The wait is bounded so the loop reaches a preemption point at
// least every waitSlice even if no signal interrupts it; the scheduler's
// preemption signals and stop-the-world requests end it at once (EINTR).
// Otherwise, and whenever the loop relays no pair (a process serving only
// pooled listeners keeps all its Ps for their goroutines), the loop waits
// through the scheduler like any system call.
func (t *thread) run(rawWait bool) {
	defer close(t.exited)
	events := make([]unix.EpollEvent, 128)
	for {
		t.mu.Lock()
		if len(t.tasks) > 0 || t.stopping {
			t.mu.Unlock()
			if t.admit() {
				t.shutdown()
				return
			}
			continue
		}
		t.sleeping = true
		t.mu.Unlock()
		n, errno := epollWait(t.epfd, events, rawWait && len(t.pairs)+len(t.sessions) > 0)
		t.mu.Lock()
		t.sleeping = false
		t.mu.Unlock()
		if errno != 0 {
			if errno != unix.EINTR {
				panic(fmt.Sprintf("loop: epoll_wait: %v", errno))
			}
			n = 0
		}
		for i := 0; i < n; i++ {
			fd := int(events[i].Fd)
			if fd == t.wakefd {
				if t.admit() {
					t.shutdown()
					return
				}
				continue
			}
			if fd >= len(t.sides) || t.sides[fd] == nil {
				continue // its pair ended earlier in this batch
			}
			t.sides[fd].handle(t, events[i].Events)
		}
	}
}

// admit runs what was handed over since the last wake-up: new pairs and
// sessions, and work posted to sessions. It reports whether the thread
// must stop.
func (t *thread) admit() bool {
	t.mu.Lock()
	if t.woken {
		var b [8]byte
		_, _ = unix.Read(t.wakefd, b[:])
		t.woken = false
	}
	tasks := t.tasks
	t.tasks = t.spare[:0]
	stopping := t.stopping
	t.mu.Unlock()
	for i, k := range tasks {
		t.runTask(k)
		tasks[i] = task{}
	}
	t.mu.Lock()
	t.spare = tasks[:0]
	t.mu.Unlock()
	return stopping
}

func (t *thread) register(p *Pair) {
	t.pairs[p] = struct{}{}
	for _, s := range [2]*side{&p.client, &p.server} {
		t.setEndpoint(s.fd, s)
		s.events = unix.EPOLLIN
		if err := t.ctl(unix.EPOLL_CTL_ADD, s.fd, s.events); err != nil {
			t.end(p, fmt.Errorf("epoll_ctl: %w", err))
			return
		}
	}
}

// shutdown ends every pair the thread still owns, then closes the loop.
// admit has run the last tasks handed over: post refuses new ones once
// stopping is set.
func (t *thread) shutdown() {
	for p := range t.pairs {
		p.stopped.Store(true)
		t.end(p, nil)
	}
	for s := range t.sessions {
		s.stopped.Store(true)
		t.endSession(s, nil)
	}
	for len(t.listeners) > 0 {
		t.unwatch(t.listeners[0])
	}
	t.mu.Lock()
	t.dead = true // sockets parked here no longer unregister themselves
	t.mu.Unlock()
	unix.Close(t.wakefd)
	unix.Close(t.epfd)
}

func (t *thread) handle(s *side, ev uint32) {
	if ev&unix.EPOLLOUT != 0 && len(s.pending) > 0 {
		if !t.flush(s) {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) == 0 {
		return
	}
	if len(s.peer.pending) > 0 {
		// Not reading from s until its peer drains; only a hang-up or
		// an error, always reported, gets here. What s sent before it
		// went still reaches the peer, and what is still queued on s
		// is read once the peer has drained, as a goroutine relay would
		// have delivered both before reading the hang-up.
		if ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			if len(s.pending) > 0 {
				t.end(s.pair, nil) // s can no longer take what waits for it
				return
			}
			s.gone = true
			s.events = 0
			_ = t.ctl(unix.EPOLL_CTL_DEL, s.fd, 0)
		}
		return
	}
	t.forward(s)
}

// forward reads once from s and writes what it got to s's peer. What the
// peer does not take at once waits in the peer's pending buffer, and s is
// not read again until it has gone.
func (t *thread) forward(s *side) {
	p := s.pair
	n, errno := rawRead(s.fd, t.buf)
	switch {
	case errno == unix.EAGAIN || errno == unix.EINTR:
		return
	case errno != 0:
		t.end(p, errno)
		return
	case n == 0:
		t.end(p, nil)
		return
	}
	b := t.buf[:n]
	if s.isServer && p.hooks.FromServer != nil {
		if err := p.hooks.FromServer(b); err != nil {
			t.end(p, err)
			return
		}
	}
	if p.hooks.Relayed != nil {
		p.hooks.Relayed(!s.isServer, n)
	}
	peer := s.peer
	if errno := peer.send(peer.fd, b); errno != 0 {
		t.end(p, errno)
		return
	}
	if len(peer.pending) > 0 {
		t.update(p)
	}
}

// flush writes s's pending bytes. It reports whether they all went, in
// which case both sides are read again.
func (t *thread) flush(s *side) bool {
	if errno := s.drain(s.fd); errno != 0 {
		t.end(s.pair, errno)
		return false
	}
	if len(s.pending) > 0 {
		return false
	}
	if g := s.peer; g.gone {
		// The peer hung up; what it sent before is still queued on its
		// socket. Watch it again: reads drain the queue, then end the pair.
		g.gone = false
		g.events = unix.EPOLLIN
		if err := t.ctl(unix.EPOLL_CTL_ADD, g.fd, g.events); err != nil {
			t.end(s.pair, nil)
			return false
		}
	}
	t.update(s.pair)
	return !s.pair.ended
}

// update registers what each side of p waits for: to be read unless its
// peer still has bytes from it to take, and to be written while it has
// bytes pending. Both directions can be held back at once (a client that
// sends a long COPY while not reading the notices coming back), so the
// interest sets are derived from both buffers, never set one at a time.
func (t *thread) update(p *Pair) {
	for _, s := range [2]*side{&p.client, &p.server} {
		var want uint32
		if len(s.peer.pending) == 0 {
			want |= unix.EPOLLIN
		}
		if len(s.pending) > 0 {
			want |= unix.EPOLLOUT
		}
		t.interest(s, want)
	}
}

func (t *thread) interest(s *side, events uint32) {
	if s.events == events || s.pair.ended || s.gone {
		return
	}
	s.events = events
	if err := t.ctl(unix.EPOLL_CTL_MOD, s.fd, events); err != nil {
		t.end(s.pair, fmt.Errorf("epoll_ctl: %w", err))
	}
}

// end closes both sockets of p, once, and wakes its Wait.
func (t *thread) end(p *Pair, err error) {
	if p.ended {
		return
	}
	delete(t.pairs, p)
	p.mu.Lock()
	p.ended = true
	p.mu.Unlock()
	if p.stopped.Load() && p.hooks.Farewell != nil {
		if b := p.hooks.Farewell(); len(b) > 0 {
			out := append(p.client.pending, b...)
			_, _ = rawWrite(p.client.fd, out)
		}
	}
	for _, s := range [2]*side{&p.client, &p.server} {
		t.dropEndpoint(s.fd, s)
		s.release()
		unix.Close(s.fd) // also takes it out of the epoll set
	}
	if p.stopped.Load() {
		err = nil
	}
	p.err = err
	close(p.done)
	if p.hooks.Ended != nil {
		p.hooks.Ended(err)
	}
}
