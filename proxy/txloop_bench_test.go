package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/pgrouter/pgrouter/proxy/auth"
	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/router/classify"
	"github.com/pgrouter/pgrouter/topology"
)

// fakeServer speaks just enough of the server side of the protocol for the
// pooled relay: a trust login, then CommandComplete and ReadyForQuery for
// each Query, and for the extended protocol ParseComplete, BindComplete,
// NoData and CommandComplete, sent with ReadyForQuery at Sync as a server
// does. It allocates nothing per message, so a benchmark's allocs/op is
// the proxy's.
func fakeServer(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	var login []byte
	login = appendMessage(login, 'R', []byte{0, 0, 0, 0})
	for _, kv := range [][2]string{{"server_version", "15.0"}, {"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"},
		{"TimeZone", "UTC"}, {"standard_conforming_strings", "on"}, {"application_name", "pgrouter"}, {"IntervalStyle", "postgres"}} {
		login = appendParameterStatus(login, kv[0], kv[1])
	}
	login = appendMessage(login, 'K', []byte{0, 0, 0, 1, 0, 0, 0, 2})
	login = appendMessage(login, 'Z', []byte{'I'})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveFake(c, login)
		}
	}()
	return ln.Addr().String()
}

func serveFake(c net.Conn, login []byte) {
	complete := appendMessage(nil, 'C', []byte("SELECT 1\x00"))
	ready := appendMessage(nil, 'Z', []byte{'I'})
	answers := map[byte][]byte{'P': appendMessage(nil, '1', nil), 'B': appendMessage(nil, '2', nil),
		'D': appendMessage(nil, 'n', nil), 'E': complete}
	out := make([]byte, 0, 512)
	defer c.Close()
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:4]); err != nil {
		return
	}
	body := make([]byte, 64<<10)
	if n := int(getUint32(hdr[:4])) - 4; n < 0 || n > len(body) {
		return
	} else if _, err := io.ReadFull(c, body[:n]); err != nil {
		return
	}
	if _, err := c.Write(login); err != nil {
		return
	}
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int(getUint32(hdr[1:])) - 4
		if n < 0 || n > len(body) {
			return
		}
		if _, err := io.ReadFull(c, body[:n]); err != nil {
			return
		}
		switch hdr[0] {
		case 'Q':
			out = append(append(out, complete...), ready...)
		case 'S':
			out = append(out, ready...)
		case 'X':
			return
		default:
			out = append(out, answers[hdr[0]]...)
			continue
		}
		if _, err := c.Write(out); err != nil {
			return
		}
		out = out[:0]
	}
}

// BenchmarkPooledTransaction measures one transaction through a
// transaction-mode listener: the lend of an idle server, the relay both
// ways and the server going back, on the epoll loop (relay=loop) and on
// goroutines, in the simple protocol (a Query) and the extended one (an
// unnamed Parse, Bind, Describe, Execute and Sync, as pgbench -M extended
// sends). allocs/op counts every allocation of the process; the client
// and the fake server make none, so it is the proxy's per transaction,
// which must be 0 on the loop.
func BenchmarkPooledTransaction(b *testing.B) {
	for _, relay := range []struct {
		name    string
		threads int
	}{{"loop", 1}, {"goroutines", 0}} {
		for _, proto := range []string{"simple", "extended"} {
			for _, split := range []bool{false, true} {
				name := "relay=" + relay.name + "/protocol=" + proto
				if split {
					name += "/split"
				}
				b.Run(name, func(b *testing.B) {
					roundTrip, _ := pooledRoundTrip(b, roundTripOptions{threads: relay.threads, extended: proto == "extended", split: split})
					b.ReportAllocs()
					b.ResetTimer()
					for range b.N {
						roundTrip()
					}
					b.StopTimer()
				})
			}
		}
	}
}

// TestPooledTransactionAllocatesNothing keeps the loop's transaction path
// free of allocations: one per transaction (a closure that escapes, a
// boxed value) is easy to add and invisible anywhere but here.
// The statement split's classification of a statement it has seen is
// held to the same.
func TestPooledTransactionAllocatesNothing(t *testing.T) {
	for _, o := range []roundTripOptions{
		{threads: 1}, {threads: 1, extended: true},
		{threads: 1, split: true}, {threads: 1, extended: true, split: true},
	} {
		// One proxy at a time: a loop thread with sessions keeps its P
		// while it waits (loop.New), so two proxies' loops in one test
		// process would leave the clients no P.
		t.Run(fmt.Sprintf("%+v", o), func(t *testing.T) {
			roundTrip, _ := pooledRoundTrip(t, o)
			const n = 2000
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range n {
				roundTrip()
			}
			runtime.ReadMemStats(&after)
			// Timers and the runtime may allocate now and then beside the
			// relay; one allocation per transaction would be n.
			if got := after.Mallocs - before.Mallocs; got > n/20 {
				t.Fatalf("%d allocations over %d pooled transactions on the loop, want none per transaction", got, n)
			}
		})
	}
}

// roundTripOptions: relay threads (0: goroutines), the extended protocol
// instead of the simple one, the statement split on the listener, and
// session pooling instead of transaction pooling.
type roundTripOptions struct {
	threads                  int
	extended, split, session bool
}

// pooledRoundTrip starts a proxy with one transaction-mode listener in
// front of a fake server, logs a client in, warms the pool, and returns a
// function that runs one transaction, and the listener's address.
// Everything stops on cleanup.
func pooledRoundTrip(tb testing.TB, o roundTripOptions) (func(), *net.TCPAddr) {
	srvAddr := fakeServer(tb)
	hba, err := auth.ParseHBA([]string{"host all all 127.0.0.1/32 trust"})
	if err != nil {
		tb.Fatal(err)
	}
	var split *SplitConfig
	if o.split {
		// Reads with no standby go to the primary; read-your-writes
		// as by default.
		split = &SplitConfig{Classifier: classify.New(classify.Config{}), ReadYourWrites: true}
	}
	mode := PoolTransaction
	if o.session {
		mode = PoolSession
	}
	s := runProxy(tb, Config{
		Listeners:    []ListenerConfig{{Name: "rw", Addr: "127.0.0.1:0", Kind: router.ListenerReadWrite, PoolMode: mode, Split: o.split}},
		Server:       pool.DialConfig{SSLMode: pool.SSLDisable},
		Pool:         pool.Config{Size: 4},
		Auth:         &AuthConfig{HBA: hba},
		RelayThreads: o.threads,
		Split:        split,
	}, srvAddr, NewMetrics(prometheus.NewRegistry()))

	c, err := net.Dial("tcp", s.Addr("rw").String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_, _ = c.Write(appendMessage(nil, 'X', nil))
		c.Close()
	})
	startup := encodeStartup(3<<16, []param{{"user", "bench"}, {"database", "bench"}})
	if _, err := c.Write(startup); err != nil {
		tb.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	readUntilZ(tb, c, buf)
	query := appendMessage(nil, 'Q', []byte("SELECT 1\x00"))
	if o.extended {
		query = appendMessage(nil, 'P', []byte("\x00SELECT 1\x00\x00\x00"))
		query = appendMessage(query, 'B', []byte("\x00\x00\x00\x00\x00\x00\x00\x00"))
		query = appendMessage(query, 'D', []byte("P\x00"))
		query = appendMessage(query, 'E', []byte("\x00\x00\x00\x00\x00"))
		query = appendMessage(query, 'S', nil)
	}
	roundTrip := func() {
		if _, err := c.Write(query); err != nil {
			tb.Fatal(err)
		}
		readUntilZ(tb, c, buf)
	}
	for range 100 { // the first lends open and adopt the servers
		roundTrip()
	}
	return roundTrip, s.Addr("rw").(*net.TCPAddr)
}

// runProxy serves cfg in front of one primary at addr, named after it,
// until the test ends.
func runProxy(tb testing.TB, cfg Config, addr string, m *Metrics) *Server {
	feed := &topology.Feed{}
	feed.Publish(&topology.Snapshot{Version: 1, Members: []topology.MemberState{{
		Member: topology.Member{Name: addr, Addr: addr},
		Health: topology.Health{Up: true, AcceptsConnections: true, Role: topology.RolePrimary},
		Role:   topology.RolePrimary,
	}}})
	s, err := New(cfg, feed, zap.NewNop(), m)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	tb.Cleanup(func() {
		cancel()
		<-served
	})
	return s
}

// readUntilZ reads messages until a ReadyForQuery.
func readUntilZ(tb testing.TB, c net.Conn, buf []byte) {
	have := 0
	for {
		n, err := c.Read(buf[have:])
		if err != nil {
			tb.Fatal(err)
		}
		have += n
		for off := 0; ; {
			if have-off < 5 {
				copy(buf, buf[off:have])
				have -= off
				break
			}
			l := int(getUint32(buf[off+1:]))
			if have-off < 1+l {
				copy(buf, buf[off:have])
				have -= off
				break
			}
			if buf[off] == 'E' {
				tb.Fatalf("error from the proxy: %q", buf[off+5:off+1+l])
			}
			if buf[off] == 'Z' {
				return
			}
			off += 1 + l
		}
	}
}

// BenchmarkPooledConnect measures what pgbench -C costs the proxy: one
// client connection (startup, one Query, Terminate) through a pooled
// listener whose loop threads accept and greet it, in transaction mode
// and in session mode (where the server is reset after the client
// leaves). The client uses raw system calls, so allocs/op is the proxy's
// alone.
func BenchmarkPooledConnect(b *testing.B) {
	for _, mode := range []string{"transaction", "session"} {
		b.Run("mode="+mode, func(b *testing.B) { benchmarkPooledConnect(b, mode == "session") })
	}
}

func benchmarkPooledConnect(b *testing.B, session bool) {
	_, addr := pooledRoundTrip(b, roundTripOptions{threads: 1, session: session}) // starts the proxy and warms the pool
	benchmarkConnect(b, addr)
}

// benchmarkConnect runs b.N connections to the proxy at addr as pgbench
// -C makes them: startup, one Query, Terminate.
func benchmarkConnect(b *testing.B, addr *net.TCPAddr) {
	sa := &unix.SockaddrInet4{Port: addr.Port, Addr: [4]byte(addr.IP.To4())}
	startup := encodeStartup(3<<16, []param{{"user", "bench"}, {"database", "bench"}, {"application_name", "pgbench"}})
	query := appendMessage(nil, 'Q', []byte("SELECT 1\x00"))
	terminate := appendMessage(nil, 'X', nil)
	buf := make([]byte, 64<<10)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		fd := rawDial(b, sa)
		rawSend(b, fd, startup)
		rawUntilZ(b, fd, buf)
		rawSend(b, fd, query)
		rawUntilZ(b, fd, buf)
		rawSend(b, fd, terminate)
		unix.Close(fd)
	}
}

// rawDial, rawSend and rawUntilZ are a client made of system calls alone.
func rawDial(b *testing.B, sa *unix.SockaddrInet4) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		b.Fatal(err)
	}
	return fd
}

func rawSend(b *testing.B, fd int, msg []byte) {
	for len(msg) > 0 {
		n, err := unix.Write(fd, msg)
		if err != nil {
			b.Fatal(err)
		}
		msg = msg[n:]
	}
}

// rawUntilZ reads until the chunk read last ends with a ReadyForQuery
// (the proxy's answers here are small and come whole).
func rawUntilZ(b *testing.B, fd int, buf []byte) {
	have := 0
	for {
		n, err := unix.Read(fd, buf[have:])
		if err != nil || n == 0 {
			b.Fatalf("read: %d, %v", n, err)
		}
		have += n
		if have >= 6 && buf[have-6] == 'Z' {
			return
		}
	}
}

// TestLoopStartupReadsInPieces covers how a loop thread reads a startup:
// in place from its read buffer when packets come whole, copied when one
// comes in pieces, and with a query sent in the same write as the
// startup's last bytes handed on to the relay.
func TestLoopStartupReadsInPieces(t *testing.T) {
	_, addr := pooledRoundTrip(t, roundTripOptions{threads: 1})
	startup := encodeStartup(3<<16, []param{{"user", "bench"}, {"database", "bench"}, {"application_name", "pieces"}})
	query := appendMessage(nil, 'Q', []byte("SELECT 1\x00"))
	sslRequest := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	buf := make([]byte, 64<<10)
	for _, cut := range []int{0, 3, 4, 11, len(startup) - 1} {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(sslRequest); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:1]); err != nil || buf[0] != 'N' {
			t.Fatalf("cut %d: answer to SSLRequest %q, %v; want N", cut, buf[:1], err)
		}
		if cut > 0 {
			if _, err := c.Write(startup[:cut]); err != nil {
				t.Fatal(err)
			}
			// The proxy must read the first piece alone: wait until it
			// has (nothing comes back until the rest does).
			_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if n, err := c.Read(buf); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("cut %d: read %d bytes, %v after part of a startup; want nothing", cut, n, err)
			}
			_ = c.SetReadDeadline(time.Time{})
		}
		rest := append(append([]byte(nil), startup[cut:]...), query...)
		if _, err := c.Write(rest); err != nil {
			t.Fatal(err)
		}
		readReadyForQuery(t, c, 2) // the greeting's and the query's
		if _, err := c.Write(query); err != nil {
			t.Fatal(err)
		}
		readReadyForQuery(t, c, 1)
		_, _ = c.Write(appendMessage(nil, 'X', nil))
		c.Close()
	}
}

// readReadyForQuery reads whole messages until the n-th ReadyForQuery,
// failing on an ErrorResponse.
func readReadyForQuery(t *testing.T, c net.Conn, n int) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var hdr [5]byte
	for n > 0 {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatal(err)
		}
		body := make([]byte, getUint32(hdr[1:])-4)
		if _, err := io.ReadFull(c, body); err != nil {
			t.Fatal(err)
		}
		switch hdr[0] {
		case 'E':
			t.Fatalf("error from the proxy: %q", body)
		case 'Z':
			n--
		}
	}
}
