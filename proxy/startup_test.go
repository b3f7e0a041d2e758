package proxy

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func startupBytes(version uint32, kv ...string) []byte {
	var ps []param
	for i := 0; i+1 < len(kv); i += 2 {
		ps = append(ps, param{kv[i], kv[i+1]})
	}
	return encodeStartup(version, ps)
}

func TestReadStartupPacket(t *testing.T) {
	cancel := encodeCancel(42, []byte{1, 2, 3, 4})
	longCancel := encodeCancel(42, bytes.Repeat([]byte{7}, 256))
	tooLongCancel := encodeCancel(42, bytes.Repeat([]byte{7}, 257))
	huge := make([]byte, 8)
	binary.BigEndian.PutUint32(huge, 1<<30)
	tests := []struct {
		name     string
		in       []byte
		kind     packetKind
		wantCode string // SQLSTATE of the refusal, "" for success
	}{
		{"startup 3.0", startupBytes(3<<16, "user", "app", "database", "db"), packetStartup, ""},
		{"startup 3.2 passes through", startupBytes(3<<16|2, "user", "app"), packetStartup, ""},
		{"ssl request", []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}, packetSSLRequest, ""},
		{"gssenc request", []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}, packetGSSENCRequest, ""},
		{"cancel 4-byte key", cancel, packetCancel, ""},
		{"cancel 256-byte key", longCancel, packetCancel, ""},
		{"cancel 257-byte key", tooLongCancel, 0, codeProtocolViolation},
		{"protocol 2.0", startupBytes(2<<16, "user", "app"), 0, codeFeatureNotSupported},
		{"protocol 4.0", startupBytes(4<<16, "user", "app"), 0, codeFeatureNotSupported},
		{"no user", startupBytes(3<<16, "database", "db"), 0, codeInvalidAuthSpec},
		{"length too short", []byte{0, 0, 0, 4, 0, 0, 0, 0}, 0, codeProtocolViolation},
		{"length too long", huge, 0, codeProtocolViolation},
		{"http garbage", []byte("GET / HTTP/1.1\r\n\r\n"), 0, codeProtocolViolation},
		{"missing terminator", []byte{0, 0, 0, 13, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0}, 0, codeProtocolViolation},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := readStartupPacket(bytes.NewReader(tc.in), 10000)
			if tc.wantCode != "" {
				ce, ok := asClientError(err)
				if !ok || ce.Code != tc.wantCode {
					t.Fatalf("err = %v, want SQLSTATE %s", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if p.kind != tc.kind {
				t.Fatalf("kind = %d, want %d", p.kind, tc.kind)
			}
		})
	}
}

func TestPrepareStartup(t *testing.T) {
	tests := []struct {
		name   string
		params []string
		want   sessionIntent
		sent   []param
	}{
		{"plain", []string{"user", "u", "database", "d"}, sessionIntent{user: "u", dbname: "d"},
			[]param{{"user", "u"}, {"database", "d"}}},
		{"database defaults to user", []string{"user", "u"}, sessionIntent{user: "u", dbname: "u"}, []param{{"user", "u"}}},
		{"default_transaction_read_only", []string{"user", "u", "default_transaction_read_only", "on"},
			sessionIntent{user: "u", dbname: "u", readOnly: true},
			[]param{{"user", "u"}, {"default_transaction_read_only", "on"}}},
		{"target_session_attrs stripped", []string{"user", "u", "target_session_attrs", "prefer-standby"},
			sessionIntent{user: "u", dbname: "u", readOnly: true}, []param{{"user", "u"}}},
		{"standby only", []string{"user", "u", "target_session_attrs", "standby"},
			sessionIntent{user: "u", dbname: "u", readOnly: true, standbyOnly: true}, []param{{"user", "u"}}},
		{"read-write wins over read only default", []string{"user", "u", "target_session_attrs", "read-write"},
			sessionIntent{user: "u", dbname: "u", primaryOnly: true}, []param{{"user", "u"}}},
		{"options -c target_session_attrs stripped, others kept", []string{"user", "u", "options", `-c target_session_attrs=read-only -c search_path=a\ b`},
			sessionIntent{user: "u", dbname: "u", readOnly: true}, []param{{"user", "u"}, {"options", `-c search_path=a\ b`}}},
		{"options --default-transaction-read-only", []string{"user", "u", "options", `--default-transaction-read-only=on`},
			sessionIntent{user: "u", dbname: "u", readOnly: true}, []param{{"user", "u"}, {"options", `--default-transaction-read-only=on`}}},
		{"options only proxy settings dropped entirely", []string{"user", "u", "options", `-ctarget_session_attrs=standby`},
			sessionIntent{user: "u", dbname: "u", readOnly: true, standbyOnly: true}, []param{{"user", "u"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parseStartupPacket(startupBytes(3<<16, tc.params...)[4:])
			if err != nil {
				t.Fatal(err)
			}
			in, sent, err := prepareStartup(&p)
			if err != nil {
				t.Fatal(err)
			}
			if in != tc.want {
				t.Errorf("intent = %+v, want %+v", in, tc.want)
			}
			if !reflect.DeepEqual(sent, tc.sent) {
				t.Errorf("sent = %q, want %q", sent, tc.sent)
			}
		})
	}
	t.Run("bad target_session_attrs", func(t *testing.T) {
		p, _ := parseStartupPacket(startupBytes(3<<16, "user", "u", "target_session_attrs", "bogus")[4:])
		if _, _, err := prepareStartup(&p); err == nil {
			t.Fatal("want error")
		}
	})
}

func TestWithoutChannelBinding(t *testing.T) {
	body := []byte{0, 0, 0, 10}
	body = append(body, "SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"...)
	got, offered := withoutChannelBinding(body)
	want := append([]byte{0, 0, 0, 10}, "SCRAM-SHA-256\x00\x00"...)
	if !bytes.Equal(got, want) || !offered {
		t.Fatalf("got %q (offered %v), want %q", got, offered, want)
	}
	if _, offered := withoutChannelBinding(want); offered {
		t.Fatal("binding reported offered by a list without it")
	}
}

func TestGS2Flag(t *testing.T) {
	initial := func(data string) []byte {
		body := append([]byte("SCRAM-SHA-256\x00"), 0, 0, 0, byte(len(data)))
		return appendMessage(nil, 'p', append(body, data...))
	}
	for data, want := range map[string]byte{
		"y,,n=,r=abc": 'y', "n,,n=,r=abc": 'n', "p=tls-server-end-point,,n=,r=abc": 'p', "": 0,
	} {
		if got := gs2Flag(initial(data)); got != want {
			t.Errorf("%q: %q, want %q", data, got, want)
		}
	}
	if got := gs2Flag(appendMessage(nil, 'p', []byte("md5abc\x00"))); got != 0 {
		t.Errorf("a password message: %q", got)
	}
}

func TestCancelRegistry(t *testing.T) {
	r := newCancelRegistry()
	// Two members handing out the same pid get different client keys, and
	// each key reaches its own backend.
	k1, _ := r.register(cancelTarget{addr: "a:1", pid: 7, realKey: []byte{1, 1, 1, 1}})
	k2, _ := r.register(cancelTarget{addr: "b:1", pid: 7, realKey: []byte{2, 2, 2, 2}})
	if t1, ok := r.lookup(7, k1); !ok || t1.addr != "a:1" {
		t.Fatalf("k1 -> %+v %v", t1, ok)
	}
	if t2, ok := r.lookup(7, k2); !ok || t2.addr != "b:1" {
		t.Fatalf("k2 -> %+v %v", t2, ok)
	}
	if _, ok := r.lookup(7, []byte{1, 1, 1, 1}); ok {
		t.Fatal("the backend's real key must not be accepted")
	}
	long, _ := r.register(cancelTarget{addr: "c:1", pid: 9, realKey: bytes.Repeat([]byte{3}, 32)})
	if len(long) != 32 {
		t.Fatalf("client key length %d, want the backend's 32", len(long))
	}
	r.remove(7, k1)
	if _, ok := r.lookup(7, k1); ok {
		t.Fatal("stale key still accepted")
	}
}

func TestListenUnixReplacesOnlyStaleSockets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ".s.PGSQL.6433")

	// A socket file whose process is gone: replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	ln, err := listenUnix(path)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o777 {
		t.Fatalf("socket mode: %v, %v; want 0777", fi, err)
	}

	// One that answers: in use, and left alone.
	if _, err := listenUnix(path); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("over a live socket: %v, want in use", err)
	}
	ln.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file after Close: %v, want removed", err)
	}

	// Anything else at the path: refused, not removed.
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("over a regular file: %v, want not a socket", err)
	}
}
