//go:build linux

// Package loop relays client sessions and the servers they hold on a few
// goroutines, each running one epoll loop, the way HAProxy and PgBouncer
// do. A goroutine per direction costs a park, a netpoller wake-up and
// often a hand-off between cores for every message; on a machine whose
// cores are shared with PostgreSQL that is most of a relay's cost. A loop
// thread instead reads whatever is ready and writes it straight to the
// peer: in the steady state a message costs one read and one write, and
// one epoll_wait is shared by every message that became ready meanwhile.
//
// A session (see Session) is owned by exactly one thread from Serve until
// it ends; only that thread reads, writes or closes its sockets, and
// other goroutines reach it through Stop and Post.
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
// its sessions: a result set moves in chunks of up to this size.
const readBuf = 64 << 10

// ErrUnsupported is returned by Serve for connections the loop cannot
// take over (TLS, or anything without a kernel socket under it); the
// caller relays those itself.
var ErrUnsupported = errors.New("loop: connection has no plain socket")

// ErrClosed is returned by Serve once Close has been called.
var ErrClosed = errors.New("loop: closed")

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

// Close ends every session still served, stops the threads and waits for
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

// thread is one epoll loop and the sessions it owns.
type thread struct {
	epfd     int
	wakefd   int // eventfd: new sessions, posted work or stop
	buf      []byte
	sides    []endpoint // indexed by descriptor number; owned by the loop goroutine
	sessions map[*Session]struct{}
	// listeners this thread accepts from (see Listen).
	listeners []*Listener
	exited    chan struct{}

	mu       sync.Mutex
	tasks    []task // handed over by other goroutines: new sessions, posted work
	spare    []task // the other buffer of tasks, swapped at each admit
	stopping bool
	// sleeping is set while the thread waits in epoll_wait, woken is set
	// once the eventfd has been written since: work handed over while the
	// thread is busy is picked up before it waits again, without a write.
	sleeping bool
	woken    bool
	dead     bool // epfd is closed
}

// endpoint is a socket the thread serves: a side of a session, a parked
// server or a listener.
type endpoint interface{ handle(t *thread, ev uint32) }

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
	return &thread{epfd: epfd, wakefd: wfd, buf: make([]byte, readBuf), sessions: make(map[*Session]struct{}), exited: make(chan struct{})}, nil
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
// Otherwise, and whenever the loop serves no session (a process serving only
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
		n, errno := epollWait(t.epfd, events, rawWait && len(t.sessions) > 0)
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
				continue // its session ended earlier in this batch
			}
			t.sides[fd].handle(t, events[i].Events)
		}
	}
}

// admit runs what was handed over since the last wake-up: new sessions, and work posted to sessions. It reports whether the thread
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

// shutdown ends every session the thread still owns, then closes the loop.
// admit has run the last tasks handed over: post refuses new ones once
// stopping is set.
func (t *thread) shutdown() {
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
