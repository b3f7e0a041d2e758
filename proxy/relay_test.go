package proxy

import (
	"bytes"
	"testing"
)

func msg(typ byte, body string) []byte { return appendMessage(nil, typ, []byte(body)) }

// scanAll feeds stream to a scanner in pieces of size step and returns the
// watched messages it reported.
func scanAll(t testing.TB, stream []byte, step int) []string {
	var s frameScanner
	s.watch = serverWatch
	var got []string
	for off := 0; off < len(stream); off += step {
		end := min(off+step, len(stream))
		for b := stream[off:end]; len(b) > 0; {
			n, done, err := s.next(b)
			if err != nil {
				t.Fatal(err)
			}
			if done {
				got = append(got, string(s.typ())+string(s.msg()))
			}
			b = b[n:]
		}
	}
	if !s.atBoundary() {
		t.Fatal("stream ended inside a message")
	}
	return got
}

func TestFrameScannerAnySplit(t *testing.T) {
	var stream []byte
	stream = append(stream, msg('T', "rowdesc")...)
	stream = append(stream, msg('D', string(bytes.Repeat([]byte("x"), 3000)))...)
	stream = append(stream, msg('C', "SELECT 1\x00")...)
	stream = append(stream, msg('Z', "I")...)
	stream = append(stream, msg('Z', "T")...)
	for step := 1; step <= len(stream); step++ {
		got := scanAll(t, stream, step)
		if len(got) != 2 || got[0] != "ZI" || got[1] != "ZT" {
			t.Fatalf("step %d: got %q", step, got)
		}
	}
}

func TestFrameScannerBadLength(t *testing.T) {
	var s frameScanner
	_, _, err := s.next([]byte{'Z', 0, 0, 0, 3})
	if ce, ok := asClientError(err); !ok || ce.Code != codeProtocolViolation {
		t.Fatalf("err = %v", err)
	}
}
