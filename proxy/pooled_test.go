package proxy

import (
	"strings"
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

// TestSettingsQuery: the SET that makes a server's settings a client's
// quotes names and values the way the server's lexer reads them back,
// resets what an earlier client set and this one did not, is safe only
// when it sets application_name alone, and is one well-framed Query.
func TestSettingsQuery(t *testing.T) {
	query := func(msg []byte) string {
		t.Helper()
		if len(msg) < 6 || msg[0] != 'Q' || int(getUint32(msg[1:])) != len(msg)-1 || msg[len(msg)-1] != 0 {
			t.Fatalf("not one Query message: %q", msg)
		}
		return string(msg[5 : len(msg)-1])
	}
	for _, c := range []struct {
		name      string
		desired   map[string]string
		params    map[string]string // reported by the server
		applied   map[string]string // set by the proxy for an earlier client
		want      []string          // statements, in any order
		wantStale []string
		safe      bool
	}{
		{"matches", map[string]string{"application_name": "a"}, map[string]string{"application_name": "a"}, nil, nil, nil, true},
		{"application name alone", map[string]string{"application_name": "it's"}, map[string]string{"application_name": "b"}, nil,
			[]string{`SET "application_name" = 'it''s';`}, nil, true},
		{"reported in mixed case", map[string]string{"timezone": "UTC"}, map[string]string{"TimeZone": "UTC"}, nil, nil, nil, true},
		{"other settings", map[string]string{"search_path": `'a, "b"'`, "x.y\"z": "'v'"}, nil, map[string]string{"search_path": "'c'"},
			[]string{`SET "search_path" = 'a, "b"';`, `SET "x.y""z" = 'v';`}, nil, false},
		{"stale", map[string]string{"application_name": "a"}, map[string]string{"application_name": "a"}, map[string]string{"work_mem": "1MB"},
			[]string{`RESET "work_mem";`}, []string{"work_mem"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ps := &pooled{desired: c.desired, desiredFP: settingsFingerprint(c.desired)}
			sc := &pool.ServerConn{Params: c.params, Applied: map[string]string{}}
			for k, v := range c.applied {
				sc.Applied[k] = v
			}
			msg, stale, safe := ps.settingsQuery(sc)
			if c.want == nil {
				if msg != nil || sc.SettingsFP != ps.desiredFP {
					t.Fatalf("query %q, fingerprint %x; want none, and the server marked as matching", msg, sc.SettingsFP)
				}
				return
			}
			got := query(msg)
			for _, stmt := range c.want {
				if !strings.Contains(got, stmt) {
					t.Errorf("query %q lacks %q", got, stmt)
				}
			}
			if n := strings.Count(got, ";"); n != len(c.want) {
				t.Errorf("query %q has %d statements, want %d", got, n, len(c.want))
			}
			if strings.Join(stale, ",") != strings.Join(c.wantStale, ",") || safe != c.safe {
				t.Errorf("stale %v, safe %v; want %v, %v", stale, safe, c.wantStale, c.safe)
			}
		})
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
