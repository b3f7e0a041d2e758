package proxy

import (
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/proxy/pool"
)

func TestSessionReset(t *testing.T) {
	npgsql := "SET SESSION AUTHORIZATION DEFAULT;RESET ALL;CLOSE ALL;UNLISTEN *;SELECT pg_advisory_unlock_all();DISCARD SEQUENCES;DISCARD TEMP"
	for q, want := range map[string]string{
		"DISCARD ALL":                        "DISCARD ALL",
		"discard all;":                       "DISCARD ALL",
		"/* npgsql */ DISCARD ALL ; ;":       "DISCARD ALL",
		"DEALLOCATE ALL":                     "DEALLOCATE ALL",
		"deallocate prepare all":             "DEALLOCATE ALL",
		"RESET ALL":                          "RESET",
		"DISCARD ALL -- done\n":              "DISCARD ALL",
		"DISCARD\tALL /* unterminated ":      "DISCARD ALL",
		npgsql:                               "SET,RESET,CLOSE CURSOR ALL,UNLISTEN,SELECT 1,DISCARD SEQUENCES,DISCARD TEMP",
		"select PG_ADVISORY_UNLOCK_ALL ( )":  "SELECT 1",
		"DISCARD TEMP":                       "DISCARD TEMP",
		"DISCARD ALL; SELECT 1":              "",
		"SELECT 1; DISCARD ALL":              "",
		"RESET ALL; DISCARD ALL":             "", // the server refuses DISCARD ALL in a list
		"DEALLOCATE s1":                      "",
		"RESET search_path":                  "",
		"SELECT 'DISCARD ALL'":               "",
		"DISCARD ALLx":                       "",
		"SELECT pg_advisory_unlock_all(), 1": "",
		"SELECT pg_advisory_unlock_all":      "",
		"UNLISTEN chan":                      "",
		"SET SESSION AUTHORIZATION bob":      "",
		"":                                   "",
		";":                                  "",
	} {
		var tags []string
		for _, f := range sessionReset(q, nil) {
			tags = append(tags, resetForms[f].tag)
		}
		if got := strings.Join(tags, ","); got != want {
			t.Errorf("sessionReset(%q) = %q, want %q", q, got, want)
		}
	}
}

// TestAnswerReset: between transactions the proxy answers a reset itself,
// as the server would, and the client's state is what it logged in with;
// holding a server, pinned, or in the middle of a pipeline, it does not.
func TestAnswerReset(t *testing.T) {
	newPS := func() *pooled {
		ps := &pooled{sess: &session{id: 1}, mode: PoolTransaction, txStatus: 'I',
			desired: map[string]string{"application_name": "app", "timezone": "UTC", "search_path": "a"}}
		ps.fifo = ps.fifoBuf[:0]
		return ps
	}
	query := func(q string) []byte { return appendMessage(nil, 'Q', append([]byte(q), 0)) }

	ps := newPS()
	startFP := settingsFingerprint(ps.desired)
	ps.remember("s1", []byte("SELECT 1\x00\x00\x00"), "SELECT 1")
	sc := &pool.ServerConn{Prepared: map[string]struct{}{}, Params: map[string]string{}}
	ps.onServerMessage(sc, 'S', []byte("TimeZone\x00Europe/Paris\x00"), true)
	ps.split.force = "primary"
	msgs := append(query("DISCARD ALL"), query("SELECT 2")...)
	resp, n := ps.answerReset(msgs)
	if n != len(query("DISCARD ALL")) {
		t.Fatalf("consumed %d bytes, want the DISCARD ALL's %d", n, len(query("DISCARD ALL")))
	}
	want := appendMessage(nil, 'C', []byte("DISCARD ALL\x00"))
	want = appendParameterStatus(want, "TimeZone", "UTC")
	want = appendMessage(want, 'Z', []byte{'I'})
	if string(resp) != string(want) {
		t.Fatalf("answer %q, want %q", resp, want)
	}
	if len(ps.stmts) != 0 || ps.desired["timezone"] != "UTC" || ps.desiredFP != startFP || ps.split.force != "" || ps.pinned != "" {
		t.Fatalf("after DISCARD ALL: statements %v, settings %v (fingerprint %d, want %d), route %q, pinned %q",
			ps.stmts, ps.desired, ps.desiredFP, startFP, ps.split.force, ps.pinned)
	}

	ps = newPS()
	ps.remember("s1", []byte("SELECT 1\x00\x00\x00"), "SELECT 1")
	ps.onServerMessage(sc, 'S', []byte("application_name\x00other\x00"), true)
	resp, _ = ps.answerReset(query("DEALLOCATE ALL"))
	if string(resp) != string(appendMessage(appendMessage(nil, 'C', []byte("DEALLOCATE ALL\x00")), 'Z', []byte{'I'})) ||
		len(ps.stmts) != 0 || ps.desired["application_name"] != "other" {
		t.Fatalf("DEALLOCATE ALL: answer %q, statements %v, settings %v", resp, ps.stmts, ps.desired)
	}
	resp, _ = ps.answerReset(query("RESET ALL; SELECT pg_advisory_unlock_all()"))
	want = appendMessage(nil, 'C', []byte("RESET\x00"))
	want = appendMessage(want, 'T', []byte("\x00\x01pg_advisory_unlock_all\x00\x00\x00\x00\x00\x00\x00\x00\x00\x08\xe6\x00\x04\xff\xff\xff\xff\x00\x00"))
	want = appendMessage(want, 'D', []byte{0, 1, 0, 0, 0, 0})
	want = appendMessage(want, 'C', []byte("SELECT 1\x00"))
	want = appendParameterStatus(want, "application_name", "app")
	want = appendMessage(want, 'Z', []byte{'I'})
	if string(resp) != string(want) || ps.desired["application_name"] != "app" {
		t.Fatalf("RESET ALL: answer %q, want %q; settings %v", resp, want, ps.desired)
	}

	for name, setup := range map[string]func(*pooled){
		"holding a server": func(ps *pooled) { ps.server = sc },
		"pinned":           func(ps *pooled) { ps.pinned = pinTempTable },
		"in a transaction": func(ps *pooled) { ps.txStatus = 'T' },
		"mid-pipeline":     func(ps *pooled) { ps.dirty = true },
		"session mode":     func(ps *pooled) { ps.mode = PoolSession },
	} {
		ps := newPS()
		setup(ps)
		if _, n := ps.answerReset(query("DISCARD ALL")); n != 0 {
			t.Errorf("%s: answered by the proxy", name)
		}
	}
	if _, n := newPS().answerReset(query("DISCARD ALL")[:8]); n != 0 {
		t.Error("answered a message not read whole")
	}
}

// BenchmarkSessionResetMiss: every simple query that starts a transaction
// is read as a possible reset first; an ordinary one must cost little.
func BenchmarkSessionResetMiss(b *testing.B) {
	q := "SELECT abalance FROM pgbench_accounts WHERE aid = 841290;"
	var buf [maxResetStmts]int
	b.ReportAllocs()
	for range b.N {
		if sessionReset(q, buf[:0]) != nil {
			b.Fatal("a reset")
		}
	}
}
