package proxy

import (
	"testing"

	"github.com/pgrouter/pgrouter/proxy/pool"
)

func TestSettingsFingerprint(t *testing.T) {
	a := map[string]string{"timezone": "UTC", "application_name": "x"}
	b := map[string]string{"application_name": "x", "timezone": "UTC"}
	if settingsFingerprint(a) != settingsFingerprint(b) {
		t.Fatal("fingerprint depends on map order")
	}
	for _, other := range []map[string]string{
		{"timezone": "UTC", "application_name": "y"},
		{"timezone": "UTC"},
		{"timezone": "UTCapplication_name", "": "x"},
		{},
	} {
		if settingsFingerprint(a) == settingsFingerprint(other) {
			t.Errorf("%v and %v share a fingerprint", a, other)
		}
	}
	if settingsFingerprint(nil) == 0 {
		t.Fatal("a fingerprint is 0, which servers use for unknown")
	}
}

// TestSkippedParsesLeaveNoTrace: the server answers a Sync after an error
// with ReadyForQuery alone, skipping every message since the error,
// Parses the client sent after the error arrived among them. Nothing of
// those may stay in the fifo (where a later ParseComplete would be matched
// against them, and one the proxy must drop passed on or the client's
// dropped), in the server's prepared set, or in the client's statements.
func TestSkippedParsesLeaveNoTrace(t *testing.T) {
	sc := &pool.ServerConn{Prepared: map[string]struct{}{}, Params: map[string]string{}}
	ps := &pooled{sess: &session{id: 1}, mode: PoolTransaction, server: sc, pinned: pinUntrackedSet, desired: map[string]string{}}
	ps.fifo = ps.fifoBuf[:0]
	send := func(typ byte, body string) {
		ps.rewriteLocked(nil, sc, typ, appendMessage(nil, typ, []byte(body)), []byte(body))
	}
	send('P', "s1\x00SELEC 1\x00\x00\x00")
	ps.onServerMessage(sc, 'E', nil, true) // s1's syntax error
	send('P', "s2\x00SELECT 2\x00\x00\x00")
	send('D', "Ss2\x00")
	send('S', "")
	ps.onServerMessage(sc, 'Z', []byte{'I'}, true)
	if len(ps.fifo) != 0 || len(sc.Prepared) != 0 || len(ps.stmts) != 0 {
		t.Fatalf("after the Sync: fifo %v, server's statements %v, client's %v; want none", ps.fifo, sc.Prepared, ps.stmts)
	}
}
