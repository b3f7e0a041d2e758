package auth

import (
	"bytes"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzSCRAMServer feeds arbitrary client-first and client-final messages
// to the server side: it must refuse them without panicking, and never
// accept a proof for a doomed exchange.
func FuzzSCRAMServer(f *testing.F) {
	f.Add("n,,n=,r=rOprNGfwEbeRWgbNEkqO", "c=biws,r=rOprNGfwEbeRWgbNEkqOX,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
	f.Add("y,,n=user,r=abc,ext=1", "c=eSws,r=abcX,x=1,p=")
	f.Add("p=tls-server-end-point,,n=,r=a", "c=,r=,p=AAAA")
	f.Add("n,a=x,n=,r=a", ",p=")
	secret, err := NewSCRAMSecret("pencil", []byte("0123456789abcdef"), 1)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, first, final string) {
		for _, doomed := range []bool{false, true} {
			s := newScramServer(secret, doomed)
			s.serverNonce = "X"
			if _, err := s.first(first); err != nil {
				continue
			}
			if _, key, err := s.final(final); err == nil && (doomed || key == nil) {
				t.Fatalf("accepted %q / %q (doomed %t)", first, final, doomed)
			}
		}
	})
}

// FuzzLogin feeds arbitrary server bytes to Login.
func FuzzLogin(f *testing.F) {
	seed := func(msgs ...encoder) []byte {
		var b []byte
		for _, m := range msgs {
			b, _ = m.Encode(b)
		}
		return b
	}
	f.Add(seed(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}},
		&pgproto3.AuthenticationSASLContinue{Data: []byte("r=abc,s=c2FsdA==,i=1")},
		&pgproto3.AuthenticationSASLFinal{Data: []byte("v=AAAA")}))
	f.Add(seed(&pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}}, &pgproto3.AuthenticationOk{}))
	f.Add(seed(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "no"}))
	f.Add([]byte("R\x00\x00\x00\x04"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, creds := range []Credentials{
			{User: "u", Password: "pw"},
			{User: "u", Secret: mustParse(t, md5Hash("pw", "u"))},
		} {
			_ = Login(&fakeBackend{Reader: bytes.NewReader(data)}, creds)
		}
	})
}

// FuzzParseConfig: the hba, secret and userlist parsers never panic.
func FuzzParseConfig(f *testing.F) {
	f.Add(`host "a b",c all 10.0.0.0/8 md5 # x`)
	f.Add(`"alice" "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB"`)
	f.Add("hostssl all all 10.0.0.1 255.255.255.0 trust")
	f.Fuzz(func(t *testing.T, text string) {
		if h, err := ParseHBA(strings.Split(text, "\n")); err == nil {
			h.Match("db", "user", nil, false)
		}
		_, _ = ParseSecret(text)
		_, _ = parseUserlist(text)
	})
}
