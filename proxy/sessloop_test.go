package proxy

import (
	"bytes"
	"testing"

	"github.com/pgrouter/pgrouter/proxy/pool"
)

// TestClientMessagesKeepTerminateFromServer cuts a client stream at every
// pair of places: whatever the cuts, everything before the Terminate is
// passed on, in order, and nothing of the Terminate or after it is; the
// messages that wait for a ReadyForQuery are counted.
func TestClientMessagesKeepTerminateFromServer(t *testing.T) {
	var before []byte
	before = appendMessage(before, 'Q', []byte("SELECT 1\x00"))
	before = appendMessage(before, 'P', []byte("s\x00SELECT $1\x00\x00\x00"))
	before = appendMessage(before, 'B', []byte("\x00s\x00\x00\x00\x00\x00\x00\x00"))
	before = appendMessage(before, 'E', []byte("\x00\x00\x00\x00\x00"))
	before = appendMessage(before, 'S', nil)
	stream := appendMessage(bytes.Clone(before), 'X', nil)
	stream = append(stream, 'Q', 0) // after the Terminate: never passed on
	for i := 0; i <= len(stream); i++ {
		for j := i; j <= len(stream); j++ {
			var u clientMessages
			var got []byte
			emit := func(b []byte) { got = append(got, b...) }
			quit := false
			for _, chunk := range [][]byte{stream[:i], stream[i:j], stream[j:]} {
				q, err := u.feed(chunk, emit)
				if err != nil {
					t.Fatalf("cuts %d,%d: %v", i, j, err)
				}
				if q {
					quit = true
					break
				}
			}
			if !quit || !bytes.Equal(got, before) {
				t.Fatalf("cuts %d,%d: quit %v, passed on %q, want %q", i, j, quit, got, before)
			}
			if u.asked != 2 || u.last != 'S' {
				t.Fatalf("cuts %d,%d: asked %d, last %q; want 2 and 'S'", i, j, u.asked, u.last)
			}
		}
	}
}

// TestClientMessagesPassHeadersOnceWhole: a header cut by the end of a
// read is passed on once, when it is whole and not a Terminate.
func TestClientMessagesPassHeadersOnceWhole(t *testing.T) {
	msg := appendMessage(nil, 'Q', []byte("SELECT 1\x00"))
	var u clientMessages
	var got []byte
	for k := range msg {
		if _, err := u.feed(msg[k:k+1], func(b []byte) { got = append(got, b...) }); err != nil {
			t.Fatal(err)
		}
		if k < 4 && len(got) != 0 {
			t.Fatalf("after %d header bytes, passed on %q", k+1, got)
		}
	}
	if !bytes.Equal(got, msg) || u.asked != 1 || !u.scan.atBoundary() {
		t.Fatalf("passed on %q (asked %d), want %q", got, u.asked, msg)
	}
	if _, err := u.feed([]byte{'Q', 0, 0, 0, 2}, func([]byte) {}); err == nil {
		t.Fatal("a length below 4 was accepted")
	}
}

// TestSessionServerIdle enumerates when a session-mode client leaves its
// server ready for another client: only when the server answered all it
// was sent and is outside a transaction.
func TestSessionServerIdle(t *testing.T) {
	z := func(status byte) []byte { return appendMessage(nil, 'Z', []byte{status}) }
	q := appendMessage(nil, 'Q', []byte("SELECT 1\x00"))
	parse := appendMessage(nil, 'P', []byte("\x00SELECT 1\x00\x00\x00"))
	sync := appendMessage(nil, 'S', nil)
	copyDone := appendMessage(nil, 'c', nil)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name           string
		client, server []byte
		idle           bool
	}{
		{"nothing sent", nil, nil, true},
		{"query answered", q, cat(appendMessage(nil, 'C', []byte("SELECT 1\x00")), z('I')), true},
		{"query not answered yet", q, nil, false},
		{"two queries, one answered", cat(q, q), z('I'), false},
		{"in a transaction", q, z('T'), false},
		{"in a failed transaction", q, z('E'), false},
		{"parse without its sync", parse, nil, false},
		{"parse and sync answered", cat(parse, sync), cat(appendMessage(nil, '1', nil), z('I')), true},
		{"copy done and answered", cat(q, appendMessage(nil, 'd', []byte("1\n")), copyDone), z('I'), true},
		{"copy data without its end", cat(q, appendMessage(nil, 'd', []byte("1\n"))), nil, false},
		{"server message cut", q, z('I')[:3], false},
	} {
		st := newSessionStreams()
		if _, err := st.up.feed(tc.client, func([]byte) {}); err != nil {
			t.Fatal(err)
		}
		if err := st.follow(tc.server); err != nil {
			t.Fatal(err)
		}
		if got := st.idle(); got != tc.idle {
			t.Errorf("%s: idle %v, want %v", tc.name, got, tc.idle)
		}
	}
}

// TestDowngradeFatal: a server's FATAL becomes an ERROR in place, fields
// and length unchanged otherwise; a body without one is left alone.
func TestDowngradeFatal(t *testing.T) {
	body := []byte("SFATAL\x00VFATAL\x00C57P01\x00Mterminating connection due to administrator command\x00\x00")
	want := []byte("SERROR\x00VERROR\x00C57P01\x00Mterminating connection due to administrator command\x00\x00")
	if !downgradeFatal(body) || !bytes.Equal(body, want) {
		t.Fatalf("got %q", body)
	}
	if !isFatal(appendErrorResponse(nil, &clientError{Severity: "PANIC", Code: "XX000", Message: "x"})[5:]) {
		t.Fatal("PANIC not seen as ending the connection")
	}
	plain := []byte("SERROR\x00VERROR\x00C42601\x00Msyntax error\x00\x00")
	if downgradeFatal(plain) || isFatal(plain) {
		t.Fatal("an ERROR was taken for a FATAL")
	}
}

// TestOwnQueryFollowsTheAnswer: the answer to the proxy's own query on a
// loop thread (the reset at a session's end), cut at every place. It ends
// at its ReadyForQuery, records reported settings, and fails on an error
// (short or too long to capture), on a server left in a transaction, or
// when the server sends more after it.
func TestOwnQueryFollowsTheAnswer(t *testing.T) {
	ready := appendMessage(nil, 'Z', []byte{'I'})
	discard := appendMessage(nil, 'C', []byte("DISCARD ALL\x00"))
	discard = appendParameterStatus(discard, "application_name", "")
	discard = append(discard, ready...)
	failed := appendMessage(nil, 'E', []byte("SERROR\x00C42601\x00Msyntax error\x00\x00"))
	failed = append(failed, ready...)
	long := appendMessage(nil, 'E', append(append([]byte("SERROR\x00M"), bytes.Repeat([]byte("x"), 2*maxCapture)...), 0, 0))
	long = append(long, ready...)
	inTx := appendMessage(appendMessage(nil, 'C', []byte("BEGIN\x00")), 'Z', []byte{'T'})
	for _, tc := range []struct {
		name   string
		answer []byte
		ok     bool
	}{{"reset", discard, true}, {"error", failed, false}, {"long error", long, false}, {"in a transaction", inTx, false}} {
		for cut := 0; cut <= len(tc.answer); cut++ {
			sc := &pool.ServerConn{Params: map[string]string{"application_name": "psql"}}
			q := ownQuery{scan: frameScanner{watch: serverWatchPooled}}
			used := 0
			for _, chunk := range [][]byte{tc.answer[:cut], tc.answer[cut:]} {
				if q.done {
					break
				}
				n, done, err := q.feed(sc, chunk)
				if err != nil {
					t.Fatalf("%s, cut at %d: %v", tc.name, cut, err)
				}
				used += n
				q.done = done
			}
			if !q.done || used != len(tc.answer) || q.ok() != tc.ok {
				t.Fatalf("%s, cut at %d: done %v, used %d of %d, ok %v (%v), want ok %v", tc.name, cut, q.done, used, len(tc.answer), q.ok(), q.failed, tc.ok)
			}
			if tc.ok && sc.Params["application_name"] != "" {
				t.Fatalf("%s, cut at %d: application_name %q after the reset reported it empty", tc.name, cut, sc.Params["application_name"])
			}
		}
	}
	// More after the ReadyForQuery: the caller sees bytes left over.
	q := ownQuery{scan: frameScanner{watch: serverWatchPooled}}
	both := append(bytes.Clone(discard), ready...)
	if n, done, _ := q.feed(&pool.ServerConn{Params: map[string]string{}}, both); !done || n != len(discard) {
		t.Fatalf("answer and more: used %d of %d (answer %d), done %v", n, len(both), len(discard), done)
	}
}
