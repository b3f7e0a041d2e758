package proxy

import (
	"io"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func tcpPair(b *testing.B) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	return c, s
}

// BenchmarkRelayRoundTrip measures one pgbench -S style round trip
// (Bind/Execute/Sync, then a row and ReadyForQuery) through both relay
// directions over loopback TCP. allocs/op is the relay's allocation per
// round trip: it must be 0.
func BenchmarkRelayRoundTrip(b *testing.B) {
	app, proxyClientSide := tcpPair(b)
	proxyServerSide, db := tcpPair(b)
	defer app.Close()
	defer db.Close()

	var req []byte
	req = appendMessage(req, 'B', []byte("\x00\x00\x00\x00\x00\x01\x00\x00\x00\x041234\x00\x00"))
	req = appendMessage(req, 'E', []byte("\x00\x00\x00\x00\x00"))
	req = appendMessage(req, 'S', nil)
	var resp []byte
	resp = appendMessage(resp, '2', nil)
	resp = appendMessage(resp, 'D', []byte("\x00\x01\x00\x00\x00\x0412345"))
	resp = appendMessage(resp, 'C', []byte("SELECT 1\x00"))
	resp = appendMessage(resp, 'Z', []byte("I"))

	// The fake server answers each request with the canned response.
	go func() {
		buf := make([]byte, len(req))
		for {
			if _, err := io.ReadFull(db, buf); err != nil {
				return
			}
			if _, err := db.Write(resp); err != nil {
				return
			}
		}
	}()
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	go func() { _ = copyToServer(proxyServerSide, proxyClientSide, counter) }()
	go func() {
		var scan frameScanner
		scan.watch = serverWatch
		_ = copyToClient(proxyClientSide, proxyServerSide, scan.feed, counter)
	}()
	defer proxyClientSide.Close()
	defer proxyServerSide.Close()

	in := make([]byte, len(resp))
	b.ReportAllocs()
	b.SetBytes(int64(len(req) + len(resp)))
	b.ResetTimer()
	for range b.N {
		if _, err := app.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(app, in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFrameScanner measures the per-message cost of following
// boundaries in a 16 KiB chunk of small DataRows.
func BenchmarkFrameScanner(b *testing.B) {
	var chunk []byte
	row := appendMessage(nil, 'D', []byte("\x00\x02\x00\x00\x00\x0412345\x00\x00\x00\x03abc"))
	for len(chunk)+len(row) <= serverReadBuf {
		chunk = append(chunk, row...)
	}
	msgs := len(chunk) / len(row)
	var s frameScanner
	s.watch = serverWatch
	b.ReportAllocs()
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		for p := chunk; len(p) > 0; {
			n, _, err := s.next(p)
			if err != nil {
				b.Fatal(err)
			}
			p = p[n:]
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*msgs), "ns/msg")
}
