package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// clientUsers are the users of TestAuthenticateRealClients: their secrets
// as the fake server's lookup returns them, and the hba rules that pick
// their methods.
func clientUsers(t *testing.T) (map[string]Secret, []string) {
	t.Helper()
	random4096, err := NewSCRAMSecret("alice-pw", nil, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]Secret{
			"alice": random4096,
			"bob":   mustSCRAM(t, "bob-pw", 8, 10000),
			"carol": mustParse(t, md5Hash("carol-pw", "carol")),
			"dave":  mustParse(t, "dave-pw"), // plaintext in the auth file
			"frank": mustSCRAM(t, "frank-pw", 16, 4096),
		}, []string{
			"host all erin    127.0.0.1/32 trust",
			"host all carol   127.0.0.1/32 md5",
			"host all frank   127.0.0.1/32 password",
			"host all blocked all          reject",
			"host all all     127.0.0.1/32 scram-sha-256",
		}
}

func clientLookup(users map[string]Secret) func(context.Context, string) (Secret, error) {
	return func(_ context.Context, user string) (Secret, error) {
		if user == "broken" {
			return Secret{}, fmt.Errorf("%w: on 127.0.0.1:5432: ERROR: function pgrouter.user_lookup(text) does not exist (SQLSTATE 42883)", ErrAuthQuery)
		}
		if s, ok := users[user]; ok {
			return s, nil
		}
		return Secret{}, fmt.Errorf("%w: %q", ErrUnknownUser, user)
	}
}

// TestAuthenticateRealClients runs Authenticate at a fake server and
// connects to it with pgx and with psql (libpq), for every method and
// failure.
func TestAuthenticateRealClients(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql not installed")
	}
	users, hba := clientUsers(t)
	f := startFakeServer(t, hba, clientLookup(users), false)
	const failed = `password authentication failed for user "%s"`
	for _, tc := range []struct {
		name, user, password string
		method               Method
		code, msg            string // the client's error; "" means connected
	}{
		{"scram 4096 random salt", "alice", "alice-pw", MethodSCRAM, "", ""},
		{"scram 10000 8-byte salt", "bob", "bob-pw", MethodSCRAM, "", ""},
		{"md5", "carol", "carol-pw", MethodMD5, "", ""},
		{"scram with plaintext secret", "dave", "dave-pw", MethodSCRAM, "", ""},
		{"trust", "erin", "", MethodTrust, "", ""},
		{"password", "frank", "frank-pw", MethodPassword, "", ""},
		{"scram wrong password", "alice", "wrong", MethodSCRAM, "28P01", fmt.Sprintf(failed, "alice")},
		{"md5 wrong password", "carol", "wrong", MethodMD5, "28P01", fmt.Sprintf(failed, "carol")},
		{"password wrong password", "frank", "wrong", MethodPassword, "28P01", fmt.Sprintf(failed, "frank")},
		{"unknown user", "mallory", "whatever", MethodSCRAM, "28P01", fmt.Sprintf(failed, "mallory")},
		{"auth query fails", "broken", "whatever", MethodSCRAM, "28P01", fmt.Sprintf(failed, "broken")},
		{"reject", "blocked", "whatever", MethodReject, "28000", `pg_hba.conf rejects connection for host "127.0.0.1", user "blocked", database "app", no encryption`},
	} {
		t.Run("pgx/"+tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=%s password='%s' dbname=app sslmode=disable", f.port(), tc.user, tc.password))
			r := f.result(t)
			checkResult(t, tc.user, tc.method, tc.code, r)
			if tc.code != "" {
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != tc.code || pgErr.Message != tc.msg || pgErr.Detail != "" || pgErr.Hint != "" {
					t.Fatalf("pgx: %v, want only %s %q", err, tc.code, tc.msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("pgx: %v", err)
			}
			defer conn.Close(ctx)
			res, err := conn.Exec(ctx, "SELECT current_user").ReadAll()
			if err != nil || string(res[0].Rows[0][0]) != tc.user {
				t.Fatalf("query after login: %v %v", res, err)
			}
		})
		t.Run("psql/"+tc.name, func(t *testing.T) {
			out, err := runPsql(t, fmt.Sprintf("host=127.0.0.1 port=%s user=%s dbname=app sslmode=disable", f.port(), tc.user), tc.password)
			r := f.result(t)
			checkResult(t, tc.user, tc.method, tc.code, r)
			if tc.code != "" {
				if err == nil || !strings.Contains(out, "FATAL:  "+tc.msg+"\n") {
					t.Fatalf("psql: %v: %s\nwant FATAL:  %s", err, out, tc.msg)
				}
				return
			}
			if err != nil || strings.TrimSpace(out) != tc.user {
				t.Fatalf("psql: %v: %s", err, out)
			}
		})
	}
}

// checkResult checks what Authenticate returned at the fake server.
func checkResult(t *testing.T, user string, m Method, code string, r fakeResult) {
	t.Helper()
	if r.user != user || r.method != m {
		t.Fatalf("server saw user %q with method %s, want %q with %s", r.user, r.method, user, m)
	}
	if code == "" {
		if r.err != nil {
			t.Fatalf("Authenticate: %v", r.err)
		}
		if m == MethodSCRAM && r.creds.ClientKey == nil {
			t.Fatalf("no ClientKey after SCRAM: %v", r.creds)
		}
		if m == MethodPassword && r.creds.Password == "" {
			t.Fatalf("no password after method password: %v", r.creds)
		}
		return
	}
	var e *Error
	if !errors.As(r.err, &e) || e.Code != code {
		t.Fatalf("Authenticate: %v, want %s", r.err, code)
	}
	if user == "broken" && !errors.Is(r.err, ErrAuthQuery) {
		t.Fatalf("Authenticate: %v lost the auth query's failure for the log", r.err)
	}
}

// runPsql runs psql -c 'SELECT current_user' with a clean PG* environment.
func runPsql(t *testing.T, connString, password string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-At", "-w", "-c", "SELECT current_user", connString)
	env := []string{"PGCONNECT_TIMEOUT=10", "PGGSSENCMODE=disable"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	if password != "" {
		env = append(env, "PGPASSWORD="+password)
	}
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestChannelBindingOverTLS: the proxy terminates TLS, so it offers no
// SCRAM-SHA-256-PLUS. Clients that prefer channel binding log in with
// plain SCRAM (saying "y": they could bind but the server cannot); those
// that require it stop with their driver's own error.
func TestChannelBindingOverTLS(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql not installed")
	}
	users, hba := clientUsers(t)
	f := startFakeServer(t, hba, clientLookup(users), true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := fmt.Sprintf("host=127.0.0.1 port=%s user=alice password=alice-pw dbname=app sslmode=require", f.port())

	conn, err := pgconn.Connect(ctx, base+" channel_binding=prefer")
	if err != nil {
		t.Fatalf("pgx channel_binding=prefer: %v", err)
	}
	conn.Close(ctx)
	if r := f.result(t); r.err != nil || r.creds.ClientKey == nil {
		t.Fatalf("server: %v", r.err)
	}

	_, err = pgconn.Connect(ctx, base+" channel_binding=require")
	if err == nil || !strings.Contains(err.Error(), "channel binding required but server does not support SCRAM-SHA-256-PLUS") {
		t.Fatalf("pgx channel_binding=require: %v, want pgx's channel binding error", err)
	}
	f.result(t)

	psqlBase := fmt.Sprintf("host=127.0.0.1 port=%s user=alice dbname=app sslmode=require", f.port())
	if out, err := runPsql(t, psqlBase+" channel_binding=prefer", "alice-pw"); err != nil || strings.TrimSpace(out) != "alice" {
		t.Fatalf("psql channel_binding=prefer: %v: %s", err, out)
	}
	f.result(t)
	out, err := runPsql(t, psqlBase+" channel_binding=require", "alice-pw")
	if err == nil || !strings.Contains(out, "channel binding is required, but server did not offer an authentication method that supports channel binding") {
		t.Fatalf("psql channel_binding=require: %v: %s, want libpq's channel binding error", err, out)
	}
	f.result(t)
}
