package auth

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSecret(t *testing.T) {
	scram, err := NewSCRAMSecret("pencil", []byte("0123456789abcdef"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, in string
		kind     SecretKind
		err      string
	}{
		{"scram", scram.Encode(), SecretSCRAM, ""},
		{"md5", "md5" + strings.Repeat("0a", 16), SecretMD5, ""},
		{"md5 upper case is plaintext, as in PostgreSQL", "md5" + strings.Repeat("0A", 16), SecretPlain, ""},
		{"md5 too short is plaintext", "md5abc", SecretPlain, ""},
		{"plaintext", "hunter2", SecretPlain, ""},
		{"empty", "", SecretNone, "empty secret"},
		{"scram missing keys", "SCRAM-SHA-256$4096:c2FsdA==", SecretNone, "want SCRAM-SHA-256$"},
		{"scram zero iterations", strings.Replace(scram.Encode(), "$4096:", "$0:", 1), SecretNone, "invalid iteration count"},
		{"scram bad salt", strings.Replace(scram.Encode(), ":MDEy", ":!!!", 1), SecretNone, "invalid salt"},
		{"scram short key", "SCRAM-SHA-256$4096:c2FsdA==$c2FsdA==:c2FsdA==", SecretNone, "invalid StoredKey"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSecret(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseSecret(%q) = %v, want error containing %q", tc.in, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Kind() != tc.kind {
				t.Fatalf("kind %s, want %s", s.Kind(), tc.kind)
			}
			if s.Encode() != tc.in {
				t.Fatalf("Encode() = %q, want %q back", s.Encode(), tc.in)
			}
		})
	}
}

// TestSCRAMSecretMatchesPostgreSQL checks NewSCRAMSecret against a secret
// computed independently (Python's hashlib, RFC 7677's salt and password).
func TestSCRAMSecretMatchesPostgreSQL(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	s, err := NewSCRAMSecret("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	const want = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
	if got := s.Encode(); got != want {
		t.Fatalf("secret\n got %s\nwant %s", got, want)
	}
	if _, err := NewSCRAMSecret("x", nil, 0); err == nil {
		t.Fatal("0 iterations accepted")
	}
	a, _ := NewSCRAMSecret("x", nil, 1)
	b, _ := NewSCRAMSecret("x", nil, 1)
	if bytes.Equal(a.salt, b.salt) || len(a.salt) != 16 {
		t.Fatalf("nil salt should give 16 fresh random bytes: %x %x", a.salt, b.salt)
	}
}

func TestSecretsStayOutOfLogs(t *testing.T) {
	s, _ := ParseSecret("hunter2")
	c := Credentials{User: "alice", ClientKey: []byte("k3y-material"), Password: "hunter2", Secret: s}
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%+v %#v", s, s), fmt.Sprint(c), fmt.Sprintf("%+v %#v", c, c)} {
		if strings.Contains(out, "hunter2") || strings.Contains(out, "k3y") {
			t.Fatalf("secret material in %q", out)
		}
	}
}

func TestParseUserlist(t *testing.T) {
	scram, _ := NewSCRAMSecret("pw", nil, 4096)
	good := `;; PgBouncer userlist
# comment
"alice" "` + scram.Encode() + `"
  "bob"   "md5` + strings.Repeat("ab", 16) + `"   ; trailing comment
"quo""ted" "pa""ss"

"tab"	"x"
`
	users, err := parseUserlist(good)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"alice":   scram.Encode(),
		"bob":     "md5" + strings.Repeat("ab", 16),
		`quo"ted`: `pa"ss`,
		"tab":     "x",
	}
	if len(users) != len(want) {
		t.Fatalf("got %d users, want %d", len(users), len(want))
	}
	for u, w := range want {
		if got := users[u].Encode(); got != w {
			t.Errorf("user %q: secret %q, want %q", u, got, w)
		}
	}

	for _, tc := range []struct{ name, text, want string }{
		{"unquoted user", `alice "x"`, "line 1: user: want a double-quoted string"},
		{"missing secret", `"alice"`, `line 1: want "user" "secret"`},
		{"no space", `"alice""x"`, `line 1: want "user" "secret"`},
		{"unterminated", "\n\"alice\" \"x", `line 2: secret of "alice": unterminated`},
		{"trailing text", `"alice" "x" y`, "line 1: unexpected text"},
		{"empty secret", `"alice" ""`, "line 1: secret of \"alice\": empty secret"},
		{"empty user", `"" "x"`, "line 1: empty user name"},
		{"duplicate", "\"a\" \"x\"\n\"a\" \"y\"", `line 2: user "a" is listed twice`},
		{"bad scram", `"a" "SCRAM-SHA-256$x"`, "line 1: secret of \"a\": malformed SCRAM-SHA-256 secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseUserlist(tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseUserlist(%q) = %v, want error containing %q", tc.text, err, tc.want)
			}
		})
	}
}

func TestLoadAuthFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte(`"alice" "secret"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := LoadAuthFile(path)
	if err != nil || users["alice"].Encode() != "secret" {
		t.Fatalf("LoadAuthFile = %v, %v", users, err)
	}
	if err := os.WriteFile(path, []byte("\"alice\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAuthFile(path); err == nil || !strings.Contains(err.Error(), path+": line 1") {
		t.Fatalf("want an error naming the file and line, got %v", err)
	}
	if _, err := LoadAuthFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("missing file accepted")
	}
}
