package benchutil

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

func TestShort(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		n    int
		want string
	}{
		{"shorter", errors.New("abc"), 5, "abc"},
		{"exact", errors.New("abcde"), 5, "abcde"},
		{"cut", errors.New("abcdefgh"), 5, "abcde"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Short(tc.err, tc.n); got != tc.want {
				t.Errorf("Short(%q, %d) = %q, want %q", tc.err, tc.n, got, tc.want)
			}
		})
	}
}

func TestAppConnString(t *testing.T) {
	c := &Cluster{Cluster: &pgtest.Cluster{Users: pgtest.Users{AppUser: "app", AppPassword: "pw", AppDB: "db"}}}
	want := "host=127.0.0.1 port=6432 user=app password=pw dbname=db sslmode=disable"
	if got := c.AppConnString("127.0.0.1:6432"); got != want {
		t.Errorf("AppConnString = %q, want %q", got, want)
	}
}

func TestWaitReady(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := calls.Add(1); r.URL.Path != "/readyz" || n < 3 {
			http.Error(w, "no primary", http.StatusServiceUnavailable)
			return
		}
	}))
	t.Cleanup(srv.Close)
	if err := WaitReady(strings.TrimPrefix(srv.URL, "http://")); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d requests, want 3 (ready at the third)", n)
	}
}

func TestFreeAddr(t *testing.T) {
	a := FreeAddr()
	if !strings.HasPrefix(a, "127.0.0.1:") {
		t.Errorf("FreeAddr = %q, want a 127.0.0.1 address", a)
	}
}
