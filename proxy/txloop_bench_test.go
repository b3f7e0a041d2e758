package proxy

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/proxy/auth"
	"github.com/pgrouter/pgrouter/proxy/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/topology"
)

// fakeServer speaks just enough of the server side of the protocol for the
// pooled relay: a trust login, then CommandComplete and ReadyForQuery for
// each Query or Sync. It allocates nothing per message, so a benchmark's
// allocs/op is the proxy's.
func fakeServer(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	var login []byte
	login = appendMessage(login, 'R', []byte{0, 0, 0, 0})
	for _, kv := range [][2]string{{"server_version", "15.0"}, {"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"},
		{"TimeZone", "UTC"}, {"standard_conforming_strings", "on"}, {"application_name", "pgrouter"}, {"IntervalStyle", "postgres"}} {
		login = appendParameterStatus(login, kv[0], kv[1])
	}
	login = appendMessage(login, 'K', []byte{0, 0, 0, 1, 0, 0, 0, 2})
	login = appendMessage(login, 'Z', []byte{'I'})
	var done []byte
	done = appendMessage(done, 'C', []byte("SELECT 1\x00"))
	done = appendMessage(done, 'Z', []byte{'I'})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveFake(c, login, done)
		}
	}()
	return ln.Addr().String()
}

func serveFake(c net.Conn, login, done []byte) {
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
		case 'Q', 'S':
			if _, err := c.Write(done); err != nil {
				return
			}
		case 'X':
			return
		}
	}
}

// BenchmarkPooledTransaction measures one transaction (a simple Query and
// its answer) through a transaction-mode listener: the lend of an idle
// server, the relay both ways and the server going back, on the epoll loop
// (relay=loop) and on goroutines. allocs/op counts every allocation of the
// process; the client and the fake server make none, so it is the proxy's
// per transaction, which must be 0 on the loop.
func BenchmarkPooledTransaction(b *testing.B) {
	for _, relay := range []struct {
		name    string
		threads int
	}{{"loop", 1}, {"goroutines", 0}} {
		b.Run("relay="+relay.name, func(b *testing.B) {
			srvAddr := fakeServer(b)
			hba, err := auth.ParseHBA([]string{"host all all 127.0.0.1/32 trust"})
			if err != nil {
				b.Fatal(err)
			}
			feed := &topology.Feed{}
			feed.Publish(&topology.Snapshot{Version: 1, Members: []topology.MemberState{{
				Member: topology.Member{Name: srvAddr, Addr: srvAddr},
				Health: topology.Health{Up: true, AcceptsConnections: true, Role: topology.RolePrimary},
				Role:   topology.RolePrimary,
			}}})
			s, err := New(Config{
				Listeners:    []ListenerConfig{{Name: "rw", Addr: "127.0.0.1:0", Kind: router.ListenerReadWrite, PoolMode: PoolTransaction}},
				Server:       pool.DialConfig{SSLMode: pool.SSLDisable},
				Pool:         pool.Config{Size: 2},
				Auth:         &AuthConfig{HBA: hba},
				RelayThreads: relay.threads,
			}, feed, zap.NewNop(), NewMetrics(prometheus.NewRegistry()))
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Listen(); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			served := make(chan error, 1)
			go func() { served <- s.Serve(ctx) }()
			defer func() {
				cancel()
				<-served
			}()

			c, err := net.Dial("tcp", s.Addr("rw").String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			startup := encodeStartup(3<<16, []param{{"user", "bench"}, {"database", "bench"}})
			if _, err := c.Write(startup); err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			readUntilZ(b, c, buf)
			query := appendMessage(nil, 'Q', []byte("SELECT 1\x00"))
			roundTrip := func() {
				if _, err := c.Write(query); err != nil {
					b.Fatal(err)
				}
				readUntilZ(b, c, buf)
			}
			for range 100 { // the first lends open and adopt the servers
				roundTrip()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				roundTrip()
			}
			b.StopTimer()
			if _, err := c.Write(appendMessage(nil, 'X', nil)); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// readUntilZ reads messages until a ReadyForQuery.
func readUntilZ(b *testing.B, c net.Conn, buf []byte) {
	have := 0
	for {
		n, err := c.Read(buf[have:])
		if err != nil {
			b.Fatal(err)
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
				b.Fatalf("error from the proxy: %q", buf[off+5:off+1+l])
			}
			if buf[off] == 'Z' {
				return
			}
			off += 1 + l
		}
	}
}
