package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// storedSecrets reads the secrets of users from pg_authid as superuser.
func storedSecrets(t *testing.T, c *pgtest.Cluster, users ...string) map[string]Secret {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnString(c.Primary(), c.SuperUser, c.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	out := map[string]Secret{}
	for _, u := range users {
		var text string
		if err := conn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", u).Scan(&text); err != nil {
			t.Fatalf("secret of %s: %v", u, err)
		}
		out[u] = mustParse(t, text)
	}
	return out
}

// createRoles creates login roles whose passwords are the given secrets.
func createRoles(t *testing.T, c *pgtest.Cluster, roles map[string]Secret) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnString(c.Primary(), c.SuperUser, c.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for name, s := range roles {
		q := fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", pgx.Identifier{name}.Sanitize(), s.Encode())
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// loginRaw dials addr, sends a StartupMessage for user and runs Login. On
// success it finishes the startup and returns current_user.
func loginRaw(t *testing.T, addr, user, db string, creds Credentials) (string, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	startup := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": user, "database": db}}
	if err := writeMessage(conn, startup); err != nil {
		t.Fatal(err)
	}
	if err := Login(conn, creds); err != nil {
		return "", err
	}
	// The rest of the startup is the caller's, intact.
	fe := pgproto3.NewFrontend(conn, conn)
	for ready := false; !ready; {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("after Login: %v", err)
		}
		switch m := m.(type) {
		case *pgproto3.ReadyForQuery:
			ready = true
		case *pgproto3.ParameterStatus, *pgproto3.BackendKeyData:
		default:
			t.Fatalf("after Login: unexpected %T %+v", m, m)
		}
	}
	fe.Send(&pgproto3.Query{String: "SELECT current_user"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got string
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			got = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("query: %s", m.Message)
		case *pgproto3.ReadyForQuery:
			return got, nil
		}
	}
}

// TestLoginRealServer logs in to a real PostgreSQL 15 with Login, with
// credentials of every origin: recovered by Authenticate from real
// clients (pgx, psql), computed from the known password, and the stored
// md5 hash; and with wrong ones, where the server's error must surface.
func TestLoginRealServer(t *testing.T) {
	c := pgtest.StartT(t, pgtest.Options{})
	addr := c.Primary().Addr
	// PostgreSQL 15 always hashes with 4096 iterations and a 16-byte salt,
	// but it takes a ready secret as a password: these roles get secrets
	// made by NewSCRAMSecret with other salts and iteration counts.
	createRoles(t, c, map[string]Secret{
		"iter10000": mustSCRAM(t, "iter10000-pw", 8, 10000),
		"iter1":     mustSCRAM(t, "iter1-pw", 32, 1),
	})
	secrets := storedSecrets(t, c, c.AppUser, c.Scram2User, c.MD5User, "iter10000", "iter1")
	app, scram2, md5user := secrets[c.AppUser], secrets[c.Scram2User], secrets[c.MD5User]
	if app.Kind() != SecretSCRAM || scram2.Kind() != SecretSCRAM || md5user.Kind() != SecretMD5 {
		t.Fatalf("pg_authid secrets: %v %v %v", app, scram2, md5user)
	}
	if s := secrets["iter10000"]; s.iterations != 10000 || len(s.salt) != 8 {
		t.Fatalf("PostgreSQL did not keep the secret as given: %v", s)
	}

	// The proxy's side towards clients: a fake server holding the secrets
	// of pg_authid, as the auth query would return them.
	f := startFakeServer(t, []string{
		"host all " + c.MD5User + " 127.0.0.1/32 md5",
		"host all all 127.0.0.1/32 scram-sha-256",
	}, func(_ context.Context, user string) (Secret, error) {
		if s, ok := secrets[user]; ok {
			return s, nil
		}
		return Secret{}, ErrUnknownUser
	}, false)
	viaPgx := func(user, password string) Credentials {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=%s sslmode=disable", f.port(), user, password, c.AppDB))
		if err != nil {
			t.Fatalf("pgx at the fake server: %v", err)
		}
		conn.Close(ctx)
		r := f.result(t)
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.creds
	}
	viaPsql := func(user, password string) Credentials {
		out, err := runPsql(t, fmt.Sprintf("host=127.0.0.1 port=%s user=%s dbname=%s sslmode=disable", f.port(), user, c.AppDB), password)
		if err != nil {
			t.Fatalf("psql at the fake server: %v: %s", err, out)
		}
		r := f.result(t)
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.creds
	}
	clientKey := func(password string, s Secret) []byte {
		salted, err := saltedPassword(password, s.salt, s.iterations)
		if err != nil {
			t.Fatal(err)
		}
		return clientKeyOf(salted)
	}
	wrongApp, _ := NewSCRAMSecret("not-the-password", app.salt, app.iterations)
	staleApp, _ := NewSCRAMSecret(c.AppPassword, nil, app.iterations) // same password, new salt

	for _, tc := range []struct {
		name  string
		user  string
		creds func() Credentials
		code  string // "" means logged in
		msg   string
	}{
		{"app, client key recovered from pgx", c.AppUser, func() Credentials { return viaPgx(c.AppUser, c.AppPassword) }, "", ""},
		{"scram2, client key recovered from psql", c.Scram2User, func() Credentials { return viaPsql(c.Scram2User, c.Scram2Password) }, "", ""},
		{"md5user, md5 hash after pgx logged in with md5", c.MD5User, func() Credentials { return viaPgx(c.MD5User, c.MD5Password) }, "", ""},
		{"iter10000, client key recovered from pgx", "iter10000", func() Credentials { return viaPgx("iter10000", "iter10000-pw") }, "", ""},
		{"iter1, client key recovered from psql", "iter1", func() Credentials { return viaPsql("iter1", "iter1-pw") }, "", ""},
		{"app, client key computed from the password", c.AppUser, func() Credentials {
			return Credentials{User: c.AppUser, Secret: app, ClientKey: clientKey(c.AppPassword, app)}
		}, "", ""},
		{"scram2, clear-text password", c.Scram2User, func() Credentials { return Credentials{User: c.Scram2User, Password: c.Scram2Password} }, "", ""},
		{"md5user, hash from pg_authid", c.MD5User, func() Credentials { return Credentials{User: c.MD5User, Secret: md5user} }, "", ""},
		{"trustuser, nothing", c.TrustUser, func() Credentials { return Credentials{User: c.TrustUser} }, "", ""},
		{"app, wrong client key", c.AppUser, func() Credentials {
			return Credentials{User: c.AppUser, Secret: wrongApp, ClientKey: clientKey("not-the-password", wrongApp)}
		}, "28P01", `password authentication failed for user "app"`},
		{"md5user, wrong hash", c.MD5User, func() Credentials {
			return Credentials{User: c.MD5User, Secret: mustParse(t, md5Hash("wrong", c.MD5User))}
		}, "28P01", `password authentication failed for user "md5user"`},
		{"app, only an md5 hash", c.AppUser, func() Credentials {
			return Credentials{User: c.AppUser, Secret: mustParse(t, md5Hash(c.AppPassword, c.AppUser))}
		}, "28P01", "holds only an md5 hash"},
		{"app, stale secret", c.AppUser, func() Credentials {
			return Credentials{User: c.AppUser, Secret: staleApp, ClientKey: clientKey(c.AppPassword, staleApp)}
		}, "28P01", "does not match the server's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := loginRaw(t, addr, tc.user, c.AppDB, tc.creds())
			if tc.code == "" {
				if err != nil || got != tc.user {
					t.Fatalf("Login: %v; current_user %q", err, got)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("Login = %v, want %s %q", err, tc.code, tc.msg)
			}
			if strings.HasPrefix(tc.msg, "password authentication failed") && e.Fields['C'] != "28P01" {
				t.Fatalf("the server's fields are lost: %v", e.Fields)
			}
		})
	}
}
