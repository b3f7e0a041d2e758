package proxy

import (
	"bytes"
	"testing"
)

// FuzzStartup feeds arbitrary first packets to the startup decoder: it must
// never panic, and whatever it refuses it refuses with a client error.
func FuzzStartup(f *testing.F) {
	f.Add(startupBytes(3<<16, "user", "app", "database", "db", "options", `-c target_session_attrs=read-only`))
	f.Add(startupBytes(3<<16|2, "user", "u", "_pq_.x", "y"))
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	f.Add(encodeCancel(1, []byte{1, 2, 3, 4}))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := readStartupPacket(bytes.NewReader(b), 10000)
		if err != nil {
			return
		}
		if p.kind == packetStartup {
			in, sent, err := prepareStartup(&p)
			if err != nil {
				return
			}
			if in.user == "" {
				t.Fatal("accepted a startup without user")
			}
			for _, kv := range sent {
				if kv.name == "target_session_attrs" {
					t.Fatal("proxy-only parameter sent to the server")
				}
			}
			// Re-encoding what we send must parse again.
			if _, err := parseStartupPacket(encodeStartup(p.version, sent)[4:]); err != nil && len(sent) > 0 {
				t.Fatalf("re-encoded startup does not parse: %v", err)
			}
		}
	})
}

// FuzzFrame checks that the scanner finds the same messages however the
// stream is split, and never panics on garbage.
func FuzzFrame(f *testing.F) {
	f.Add(append(msg('Z', "I"), msg('D', "abc")...), 1)
	f.Add([]byte{'Z', 0, 0, 0, 3}, 2)
	f.Add(append(msg('C', "SELECT 1\x00"), msg('Z', "T")...), 3)
	f.Fuzz(func(t *testing.T, stream []byte, step int) {
		if step <= 0 || step > len(stream) {
			step = len(stream)
		}
		if step == 0 {
			return
		}
		whole, errWhole := scan(stream, len(stream))
		split, errSplit := scan(stream, step)
		if (errWhole == nil) != (errSplit == nil) {
			t.Fatalf("error depends on split: %v vs %v", errWhole, errSplit)
		}
		if errWhole == nil && !equalStrings(whole, split) {
			t.Fatalf("messages depend on split: %q vs %q", whole, split)
		}
	})
}

func scan(stream []byte, step int) ([]string, error) {
	var s frameScanner
	s.watch = serverWatch
	var got []string
	for off := 0; off < len(stream); off += step {
		for b := stream[off:min(off+step, len(stream))]; len(b) > 0; {
			n, done, err := s.next(b)
			if err != nil {
				return got, err
			}
			if done {
				got = append(got, string(s.typ())+string(s.msg()))
			}
			b = b[n:]
		}
	}
	return got, nil
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
