package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	_ "github.com/Shopify/toxiproxy/v2/toxics" // registers the toxic types, "timeout" among them
	"github.com/rs/zerolog"
)

// faultLink is a TCP link from an agent to the store it depends on (etcd,
// the Kubernetes API server) in which a test makes network faults. It is a
// toxiproxy proxy run in this process: no HTTP API, no metrics, no logs.
//
// A partition is toxiproxy's "timeout" toxic with timeout 0 on both
// streams: every byte is dropped and nothing is closed.
type faultLink struct {
	proxy *toxiproxy.Proxy
	addr  string

	mu     sync.Mutex
	silent bool
}

// silenceStreams are the toxiproxy streams a partition silences.
var silenceStreams = []string{"upstream", "downstream"}

func newFaultLink(t *testing.T, target string) *faultLink {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "to-"+target, "127.0.0.1:0", target)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop) // closes every connection
	return &faultLink{proxy: p, addr: p.Listen}
}

// Addr is where clients connect; it stays the same across faults.
func (l *faultLink) Addr() string { return l.addr }

// Silence partitions the link silently: the connections open and the ones
// made until Heal carry nothing either way and none is closed. The
// clients must notice by themselves.
func (l *faultLink) Silence(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.silent {
		return
	}
	for _, s := range silenceStreams {
		toxic := fmt.Sprintf(`{"name":"silence-%s","type":"timeout","stream":%q,"attributes":{"timeout":0}}`, s, s)
		if _, err := l.proxy.Toxics.AddToxicJson(strings.NewReader(toxic)); err != nil {
			t.Fatalf("faultLink %s: add the %s toxic: %v", l.addr, s, err)
		}
	}
	l.silent = true
}

// Cut partitions the link and closes the connections open, as a peer
// that learns of the partition (a reset) would see: the client notices
// at once, and its new connections are accepted and then silent until
// Heal.
func (l *faultLink) Cut(t *testing.T) {
	t.Helper()
	l.Silence(t)
	// Stopping the proxy is toxiproxy's one way to close the connections
	// it relays; Start listens again on the same address.
	l.proxy.Stop()
	if err := l.proxy.Start(); err != nil {
		t.Fatalf("faultLink %s: listen again: %v", l.addr, err)
	}
}

// Heal ends the partition. The "timeout" toxic closes the connections it
// was silencing as it is removed, so the clients reconnect at once; new
// connections relay.
func (l *faultLink) Heal(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.silent {
		return
	}
	for _, s := range silenceStreams {
		if err := l.proxy.Toxics.RemoveToxic(context.Background(), "silence-"+s); err != nil {
			t.Fatalf("faultLink %s: remove the %s toxic: %v", l.addr, s, err)
		}
	}
	l.silent = false
}

// TestFaultLink checks the faults the agent tests rely on, against an echo
// server.
func TestFaultLink(t *testing.T) {
	echo := startEcho(t)
	l := newFaultLink(t, echo)
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", l.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// relays checks whether a byte sent on c comes back: a relaying link
	// echoes it (waited for up to 10s), a silent one neither answers
	// within 300ms nor closes.
	relays := func(c net.Conn, want bool) {
		t.Helper()
		if _, err := c.Write([]byte{'x'}); err != nil {
			t.Fatal(err)
		}
		wait := 10 * time.Second
		if !want {
			wait = 300 * time.Millisecond
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		defer c.SetReadDeadline(time.Time{})
		_, err := c.Read(make([]byte, 1))
		switch {
		case want && err != nil:
			t.Fatalf("not relayed: %v", err)
		case !want && err == nil:
			t.Fatal("relayed while silent")
		case !want && !errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("closed while silent: %v", err)
		}
	}
	// closed waits until the link closes c (a FIN or a reset).
	closed := func(c net.Conn) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("connection not closed by the link")
		}
	}

	before := dial()
	relays(before, true)

	l.Silence(t)
	during := dial()
	relays(before, false)
	relays(during, false)

	l.Heal(t)
	closed(before)
	closed(during)
	after := dial()
	relays(after, true)

	l.Cut(t)
	closed(after)
	held := dial()
	relays(held, false)

	l.Heal(t)
	closed(held)
	relays(dial(), true)
}

// startEcho runs a TCP echo server until the test ends.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(c, c); c.Close() })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
