package main

import (
	"testing"
)

func TestPortsLandWhereTheyShould(t *testing.T) {
	c := sharedCluster(t)
	p := startProxy(t, c)
	waitStandby(t, p, c.Nodes[1].Addr)
	waitStandby(t, p, c.Nodes[2].Addr)

	rw := mustConnect(t, c, p.RW, nil)
	if port, rec := where(t, rw); rec || port != c.Nodes[0].Port {
		t.Fatalf("rw port landed on port %d (recovery %v), want primary %d", port, rec, c.Nodes[0].Port)
	}
	any := mustConnect(t, c, p.Any, nil)
	if _, rec := where(t, any); rec {
		t.Fatal("single endpoint without read-only intent landed on a standby")
	}

	hot := map[int]bool{c.Nodes[1].Port: true, c.Nodes[2].Port: true}
	seen := map[int]bool{}
	for range 6 {
		ro := mustConnect(t, c, p.RO, nil)
		port, rec := where(t, ro)
		if !rec || !hot[port] {
			t.Fatalf("ro port landed on port %d (recovery %v), want a hot standby", port, rec)
		}
		seen[port] = true
	}
	if len(seen) != 2 {
		t.Fatalf("round-robin used %v, want both hot standbys", seen)
	}

	for _, params := range []map[string]string{
		{"default_transaction_read_only": "on"},
		{"target_session_attrs": "read-only"},
		{"options": "-c target_session_attrs=prefer-standby"},
	} {
		conn := mustConnect(t, c, p.Any, params)
		if port, rec := where(t, conn); !rec || !hot[port] {
			t.Fatalf("single endpoint with %v landed on port %d (recovery %v), want a hot standby", params, port, rec)
		}
	}
}
