package chaos

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// listenIn runs this test binary inside namespace ns as a TCP server on
// addr (see TestMain), until the test ends.
func listenIn(t *testing.T, ns, addr string) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, "--", os.Args[0])
	cmd.Env = append(os.Environ(), "CHAOS_TEST_LISTEN="+addr)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
}

// serveTCP accepts and closes connections forever: the helper process of
// listenIn.
func serveTCP(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		c.Close()
	}
}

// TestNetworkDrop: a host is reachable from the root namespace through the
// bridge; a blackhole route in the host to the root's address cuts it
// (its answers are dropped), and removing the route heals it. The
// namespaces and the bridge are gone after Close.
func TestNetworkDrop(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: network namespaces must work")
		}
		t.Skip("network namespaces need root")
	}
	nw, err := NewNetwork()
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			nw.Close()
		}
	})
	if err := nw.AddHost("a", 10); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(nw.IP(10), "7000")
	listenIn(t, nw.NS("a"), addr)
	dial := func() error {
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := poll(t.Context(), 10*time.Second, "listener up", dial); err != nil {
		t.Fatalf("before the cut: %v", err)
	}
	if err := nw.Drop("a", nw.IP(1)); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err == nil {
		t.Fatal("connected through a cut")
	}
	if err := nw.Undrop("a", nw.IP(1)); err != nil {
		t.Fatal(err)
	}
	if err := nw.Undrop("a", nw.IP(1)); err != nil {
		t.Fatalf("healing twice: %v", err)
	}
	if err := dial(); err != nil {
		t.Fatalf("after healing: %v", err)
	}
	nw.Close()
	closed = true
	if _, err := os.Stat("/run/netns/" + nw.NS("a")); !os.IsNotExist(err) {
		t.Fatalf("namespace %s left behind: %v", nw.NS("a"), err)
	}
	if _, err := net.InterfaceByName(nw.Bridge); err == nil {
		t.Fatalf("bridge %s left behind", nw.Bridge)
	}
}
