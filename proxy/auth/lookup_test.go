package auth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

func TestNewLookupValidates(t *testing.T) {
	_, err := NewLookup(LookupConfig{AuthQuery: "SELECT 1", TTL: -time.Second, AuthFile: filepath.Join(t.TempDir(), "missing")}, nil, nil)
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"negative", "$1", "auth user", "primary", "auth file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestLookupAuthFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte(`"alice" "md5`+strings.Repeat("0", 32)+`"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := NewLookup(LookupConfig{AuthFile: path}, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	if s, err := l.Secret(ctx, "alice"); err != nil || s.Kind() != SecretMD5 {
		t.Fatalf("alice: %v, %v", s, err)
	}
	if _, err := l.Secret(ctx, "bob"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("bob: %v, want ErrUnknownUser", err)
	}
}

// fakeClock is a settable clock for TTL tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// setupAuthQuery creates what PgBouncer's documentation recommends for an
// auth query: a SECURITY DEFINER function over pg_shadow that only the auth
// user may call.
func setupAuthQuery(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnString(c.Primary(), c.SuperUser, c.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		"CREATE ROLE pgrouter_auth LOGIN PASSWORD 'auth-pw'",
		"CREATE SCHEMA pgrouter",
		`CREATE FUNCTION pgrouter.user_lookup(i_username text, OUT usename name, OUT passwd text)
		 RETURNS SETOF record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
		 AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = i_username $$`,
		"REVOKE ALL ON FUNCTION pgrouter.user_lookup(text) FROM PUBLIC",
		"GRANT USAGE ON SCHEMA pgrouter TO pgrouter_auth",
		"GRANT EXECUTE ON FUNCTION pgrouter.user_lookup(text) TO pgrouter_auth",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

const userLookupQuery = "SELECT usename, passwd FROM pgrouter.user_lookup($1)"

// TestLookupAuthQuery runs the auth query on a real primary: secrets as
// pg_authid has them, unknown users, the auth file first, TTL caching,
// shared concurrent lookups, failing queries (which clients see as 28P01
// only), and the whole chain: lookup, Authenticate with pgx, Login to the
// server with the recovered client key.
func TestLookupAuthQuery(t *testing.T) {
	c := pgtest.StartT(t, pgtest.Options{})
	setupAuthQuery(t, c)
	stored := storedSecrets(t, c, c.AppUser, c.Scram2User, c.MD5User)
	primaryOK := func() (string, bool) { return c.Primary().Addr, true }
	base := LookupConfig{AuthQuery: userLookupQuery, AuthUser: "pgrouter_auth", AuthPassword: "auth-pw"}
	newLookup := func(t *testing.T, cfg LookupConfig, primary func() (string, bool)) (*Lookup, *fakeClock, *observer.ObservedLogs) {
		t.Helper()
		core, logs := observer.New(zapcore.DebugLevel)
		l, err := NewLookup(cfg, primary, zap.New(core))
		if err != nil {
			t.Fatal(err)
		}
		clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
		l.now = clock.Now
		t.Cleanup(func() { l.Close() })
		return l, clock, logs
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("secrets as pg_authid has them", func(t *testing.T) {
		l, _, _ := newLookup(t, base, primaryOK)
		for _, u := range []string{c.AppUser, c.Scram2User, c.MD5User} {
			s, err := l.Secret(ctx, u)
			if err != nil || s.Encode() != stored[u].Encode() {
				t.Fatalf("%s: %v, %v; want %v", u, s, err, stored[u])
			}
		}
	})
	t.Run("unknown and passwordless users", func(t *testing.T) {
		l, _, _ := newLookup(t, base, primaryOK)
		for _, u := range []string{"nobody", c.TrustUser} {
			if _, err := l.Secret(ctx, u); !errors.Is(err, ErrUnknownUser) {
				t.Fatalf("%s: %v, want ErrUnknownUser", u, err)
			}
		}
	})
	t.Run("auth file first", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "userlist.txt")
		if err := os.WriteFile(path, []byte(`"app" "from-the-file"`+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := base
		cfg.AuthFile = path
		l, _, _ := newLookup(t, cfg, primaryOK)
		if s, err := l.Secret(ctx, c.AppUser); err != nil || s.Encode() != "from-the-file" || l.queries.Load() != 0 {
			t.Fatalf("app: %v, %v after %d queries", s, err, l.queries.Load())
		}
		if s, err := l.Secret(ctx, c.MD5User); err != nil || s.Kind() != SecretMD5 || l.queries.Load() != 1 {
			t.Fatalf("md5user: %v, %v after %d queries", s, err, l.queries.Load())
		}
	})
	t.Run("cached for the TTL", func(t *testing.T) {
		cfg := base
		cfg.TTL = 20 * time.Second
		l, clock, _ := newLookup(t, cfg, primaryOK)
		lookup := func(user string, wantQueries int64) {
			t.Helper()
			_, err := l.Secret(ctx, user)
			if err != nil && !errors.Is(err, ErrUnknownUser) {
				t.Fatal(err)
			}
			if got := l.queries.Load(); got != wantQueries {
				t.Fatalf("%s: %d queries so far, want %d", user, got, wantQueries)
			}
		}
		lookup(c.AppUser, 1)
		lookup(c.AppUser, 1)
		clock.Add(19 * time.Second)
		lookup(c.AppUser, 1)
		clock.Add(2 * time.Second)
		lookup(c.AppUser, 2)
		lookup("nobody", 3)
		lookup("nobody", 3)
		clock.Add(4 * time.Second)
		lookup("nobody", 3) // negative answers live min(TTL, 5s)
		clock.Add(2 * time.Second)
		lookup("nobody", 4)
		lookup(c.AppUser, 4)
	})
	t.Run("one query for concurrent lookups", func(t *testing.T) {
		l, _, _ := newLookup(t, base, primaryOK)
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for range 16 {
			wg.Go(func() {
				if _, err := l.Secret(ctx, c.Scram2User); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if got := l.queries.Load(); got != 1 {
			t.Fatalf("%d queries for 16 concurrent lookups, want 1", got)
		}
	})
	t.Run("failures", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			cfg     LookupConfig
			primary func() (string, bool)
			want    string
		}{
			{"missing function", LookupConfig{AuthQuery: "SELECT usename, passwd FROM pgrouter.no_such_function($1)", AuthUser: "pgrouter_auth", AuthPassword: "auth-pw"}, primaryOK, "does not exist"},
			{"not allowed", LookupConfig{AuthQuery: "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1", AuthUser: "pgrouter_auth", AuthPassword: "auth-pw"}, primaryOK, "permission denied"},
			{"wrong auth password", LookupConfig{AuthQuery: userLookupQuery, AuthUser: "pgrouter_auth", AuthPassword: "wrong"}, primaryOK, "password authentication failed"},
			{"one column", LookupConfig{AuthQuery: "SELECT passwd FROM pgrouter.user_lookup($1)", AuthUser: "pgrouter_auth", AuthPassword: "auth-pw"}, primaryOK, "returns 1 columns"},
			{"no primary", base, func() (string, bool) { return "", false }, "no primary"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				l, clock, logs := newLookup(t, tc.cfg, tc.primary)
				_, err := l.Secret(ctx, c.AppUser)
				if !errors.Is(err, ErrAuthQuery) || errors.Is(err, ErrUnknownUser) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Secret = %v, want ErrAuthQuery with %q", err, tc.want)
				}
				if n := logs.FilterMessage("auth query failed; clients of this user get 28P01").FilterField(zap.String("user", c.AppUser)).Len(); n != 1 {
					t.Fatalf("%d warnings logged, want 1: %v", n, logs.All())
				}
				// Failures are remembered briefly, then retried.
				q := l.queries.Load()
				if _, err2 := l.Secret(ctx, c.AppUser); err2 != err || l.queries.Load() != q {
					t.Fatalf("failure not cached: %v, %d queries", err2, l.queries.Load())
				}
				clock.Add(2 * time.Second)
				_, _ = l.Secret(ctx, c.AppUser)
				if logs.Len() != 2 {
					t.Fatalf("failure not retried after 2s: %d log entries", logs.Len())
				}
			})
		}
	})
	t.Run("clients of a failing auth query get 28P01 only", func(t *testing.T) {
		cfg := base
		cfg.AuthQuery = "SELECT usename, passwd FROM pgrouter.no_such_function($1)"
		l, _, _ := newLookup(t, cfg, primaryOK)
		f := startFakeServer(t, []string{"host all all 127.0.0.1/32 scram-sha-256"}, l.Secret, false)
		_, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=app password=%s dbname=app sslmode=disable", f.port(), c.AppPassword))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || pgErr.Message != `password authentication failed for user "app"` || pgErr.Detail != "" || pgErr.Hint != "" {
			t.Fatalf("client saw %v, want only 28P01", err)
		}
		if r := f.result(t); !errors.Is(r.err, ErrAuthQuery) || !strings.Contains(r.err.Error(), "no_such_function") {
			t.Fatalf("the proxy's error %v lost the cause", r.err)
		}
	})
	t.Run("lookup, authenticate, login", func(t *testing.T) {
		l, _, _ := newLookup(t, base, primaryOK)
		f := startFakeServer(t, []string{
			"host all md5user 127.0.0.1/32 md5",
			"host all all 127.0.0.1/32 scram-sha-256",
		}, l.Secret, false)
		for _, u := range []struct{ user, password string }{{c.AppUser, c.AppPassword}, {c.Scram2User, c.Scram2Password}, {c.MD5User, c.MD5Password}} {
			conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=app sslmode=disable", f.port(), u.user, u.password))
			if err != nil {
				t.Fatalf("%s at the fake server: %v", u.user, err)
			}
			conn.Close(ctx)
			r := f.result(t)
			if r.err != nil {
				t.Fatal(r.err)
			}
			creds := r.creds
			if creds.Password != "" {
				t.Fatalf("%s: the proxy should not know the password: %v", u.user, creds)
			}
			got, err := loginRaw(t, c.Primary().Addr, u.user, c.AppDB, creds)
			if err != nil || got != u.user {
				t.Fatalf("%s: Login: %v; current_user %q", u.user, err, got)
			}
		}
	})
}
