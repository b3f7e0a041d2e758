package pool

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pipeConnector opens in-memory connections and keeps the far ends so a
// test can close them (a server going away).
type pipeConnector struct {
	mu    sync.Mutex
	peers []net.Conn
	n     atomic.Int32
}

func (c *pipeConnector) connect(context.Context) (*ServerConn, error) {
	a, b := tcpPipe()
	c.mu.Lock()
	c.peers = append(c.peers, b)
	c.mu.Unlock()
	c.n.Add(1)
	return &ServerConn{Conn: a}, nil
}

func (c *pipeConnector) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.peers {
		p.Close()
	}
}

func TestPoolSizeAndHandOff(t *testing.T) {
	pc := &pipeConnector{}
	defer pc.closeAll()
	p := NewPool(Key{Member: "m"}, Config{Size: 2, WaitTimeout: 2 * time.Second}, pc.connect)
	defer p.Close()
	ctx := context.Background()
	a, _ := p.Acquire(ctx)
	b, _ := p.Acquire(ctx)
	if pc.n.Load() != 2 {
		t.Fatalf("opened %d", pc.n.Load())
	}
	got := make(chan *ServerConn)
	go func() {
		c, err := p.Acquire(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	// The third waits until one comes back, and gets that very connection.
	for p.Stats().Waiting != 1 {
		time.Sleep(time.Millisecond)
	}
	p.Release(a, true)
	if c := <-got; c != a {
		t.Fatal("waiter did not get the released connection")
	}
	if pc.n.Load() != 2 {
		t.Fatal("opened beyond the size")
	}
	p.Release(b, true)
	if s := p.Stats(); s.Idle != 1 || s.Active != 1 || s.Open != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPoolWaitTimeout(t *testing.T) {
	pc := &pipeConnector{}
	defer pc.closeAll()
	p := NewPool(Key{}, Config{Size: 1, WaitTimeout: 50 * time.Millisecond}, pc.connect)
	defer p.Close()
	a, _ := p.Acquire(context.Background())
	if _, err := p.Acquire(context.Background()); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("err = %v", err)
	}
	p.Release(a, true)
	if s := p.Stats(); s.WaitTimeouts != 1 || s.Waiting != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPoolDiscardsBrokenAndUnreusable(t *testing.T) {
	pc := &pipeConnector{}
	defer pc.closeAll()
	p := NewPool(Key{}, Config{Size: 1}, pc.connect)
	defer p.Close()
	a, _ := p.Acquire(context.Background())
	p.Release(a, true)
	pc.closeAll() // the server went away while the connection was idle
	b, err := p.Acquire(context.Background())
	if err != nil || b == a {
		t.Fatalf("got the dead connection back (%v)", err)
	}
	p.Release(b, false)
	if s := p.Stats(); s.Open != 0 {
		t.Fatalf("unreusable connection kept: %+v", s)
	}
}

func TestPoolClose(t *testing.T) {
	pc := &pipeConnector{}
	defer pc.closeAll()
	p := NewPool(Key{}, Config{Size: 1, WaitTimeout: 5 * time.Second}, pc.connect)
	a, _ := p.Acquire(context.Background())
	errc := make(chan error)
	go func() {
		_, err := p.Acquire(context.Background())
		errc <- err
	}()
	for p.Stats().Waiting != 1 {
		time.Sleep(time.Millisecond)
	}
	p.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter err = %v", err)
	}
	p.Release(a, true) // closed on return
	if s := p.Stats(); s.Open != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPoolReap(t *testing.T) {
	pc := &pipeConnector{}
	defer pc.closeAll()
	p := NewPool(Key{}, Config{Size: 3, MinSize: 1, IdleTimeout: time.Minute}, pc.connect)
	defer p.Close()
	var cs []*ServerConn
	for range 3 {
		c, _ := p.Acquire(context.Background())
		cs = append(cs, c)
	}
	for _, c := range cs {
		p.Release(c, true)
	}
	p.Reap(time.Now().Add(2 * time.Minute))
	if s := p.Stats(); s.Open != 1 || s.Idle != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// tcpPipe returns both ends of a loopback TCP connection: the liveness
// check needs a real socket.
func tcpPipe() (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	b, err := ln.Accept()
	if err != nil {
		panic(err)
	}
	return a, b
}

func TestAlive(t *testing.T) {
	a, b := tcpPipe()
	defer a.Close()
	if !alive(a) {
		t.Fatal("fresh connection not alive")
	}
	b.Write([]byte("E"))
	deadline := time.Now().Add(5 * time.Second)
	for alive(a) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if alive(a) {
		t.Fatal("unsolicited data not seen")
	}
	a2, b2 := tcpPipe()
	defer a2.Close()
	b2.Close()
	for alive(a2) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if alive(a2) {
		t.Fatal("closed peer not seen")
	}
}

// Lend never blocks: an idle connection, nothing (the caller may open one),
// or a place in the queue, served in turn with Acquire's waiters.
func TestPoolLendQueuesWaiters(t *testing.T) {
	pc := &pipeConnector{}
	defer pc.closeAll()
	p := NewPool(Key{Member: "m"}, Config{Size: 1, WaitTimeout: 2 * time.Second}, pc.connect)
	ctx := context.Background()
	handed := make(chan *ServerConn, 2)
	w := &Waiter{To: readyFunc(func(sc *ServerConn) { handed <- sc })}
	if sc, queued, err := p.Lend(w); sc != nil || queued || err != nil {
		t.Fatalf("Lend on an empty pool below its size = %v, %v, %v; want nothing: open one", sc, queued, err)
	}
	a, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, queued, _ := p.Lend(w); !queued {
		t.Fatal("Lend on a full pool did not queue")
	}
	if s := p.Stats(); s.Waiting != 1 {
		t.Fatalf("waiting %d", s.Waiting)
	}
	p.Release(a, true)
	if got := <-handed; got != a {
		t.Fatal("the waiter did not get the released connection")
	}
	// Taken back before anything was handed: Ready is never called.
	if _, queued, _ := p.Lend(w); !queued {
		t.Fatal("second Lend did not queue")
	}
	if !p.CancelWait(w, true) || p.CancelWait(w, true) {
		t.Fatal("CancelWait should take the waiter back once")
	}
	if s := p.Stats(); s.Waiting != 0 || s.WaitTimeouts != 1 {
		t.Fatalf("stats after cancel %+v", s)
	}
	p.Release(a, true)
	if sc, _, _ := p.Lend(w); sc != a {
		t.Fatal("Lend did not take the idle connection")
	}
	// Closing the pool hands queued waiters nil: go and Acquire (ErrClosed).
	if _, queued, _ := p.Lend(w); !queued {
		t.Fatal("third Lend did not queue")
	}
	p.Close()
	if got := <-handed; got != nil {
		t.Fatal("closing handed a connection")
	}
	if _, _, err := p.Lend(w); !errors.Is(err, ErrClosed) {
		t.Fatalf("Lend after Close = %v", err)
	}
	p.Release(a, true)
	select {
	case <-handed:
		t.Fatal("Ready called twice")
	default:
	}
}

type readyFunc func(*ServerConn)

func (f readyFunc) Ready(sc *ServerConn) { f(sc) }
