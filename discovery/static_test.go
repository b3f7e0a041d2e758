package discovery

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgrouter/pgrouter/topology"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseAddrs(t *testing.T) {
	tests := []struct {
		name  string
		addrs []string
		ok    bool
	}{
		{"one", []string{"127.0.0.1:5432"}, true},
		{"several", []string{"db1:5432", "db2:5433", "[::1]:5432"}, true},
		{"empty list", nil, false},
		{"no port", []string{"db1"}, false},
		{"empty host", []string{":5432"}, false},
		{"port zero", []string{"db1:0"}, false},
		{"port too big", []string{"db1:65536"}, false},
		{"named port", []string{"db1:postgres"}, false},
		{"spaces", []string{" db1:5432"}, false},
		{"duplicate", []string{"db1:5432", "db1:5432"}, false},
		{"one bad among good", []string{"db1:5432", "db2"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ParseAddrs(tc.addrs)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseAddrs(%q) = %v, want ok=%v", tc.addrs, err, tc.ok)
			}
			if _, err2 := NewStatic(tc.addrs); (err2 == nil) != tc.ok {
				t.Fatalf("NewStatic(%q) = %v, want ok=%v", tc.addrs, err2, tc.ok)
			}
		})
	}
}

func names(ms []topology.Member) []string {
	var out []string
	for _, m := range ms {
		if m.Name != m.Addr || m.Claimed != topology.RoleUnknown {
			return []string{"bad member " + m.Name}
		}
		out = append(out, m.Name)
	}
	return out
}

func TestStaticRun(t *testing.T) {
	s, err := NewStatic([]string{"a:1", "b:2"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan []topology.Member, 10)
	done := make(chan error, 1)
	go func() {
		done <- s.Run(ctx, func(ms []topology.Member) { got <- ms })
	}()
	next := func() []string {
		t.Helper()
		select {
		case ms := <-got:
			return names(ms)
		case <-time.After(5 * time.Second):
			t.Fatal("no publish")
			return nil
		}
	}

	first := <-got
	if n := names(first); !slices.Equal(n, []string{"a:1", "b:2"}) {
		t.Fatalf("first publish = %v", n)
	}
	first[0].Name = "scribbled" // the slice belongs to the receiver

	if err := s.Update([]string{"c:3"}); err != nil {
		t.Fatal(err)
	}
	if n := next(); !slices.Equal(n, []string{"c:3"}) {
		t.Fatalf("after update = %v", n)
	}
	if err := s.Update([]string{"bad"}); err == nil {
		t.Fatal("Update accepted an invalid address")
	}
	if err := s.Update([]string{"c:3", "d:4"}); err != nil {
		t.Fatal(err)
	}
	if n := next(); !slices.Equal(n, []string{"c:3", "d:4"}) {
		t.Fatalf("after second update = %v (invalid update leaked?)", n)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v", err)
	}
	select {
	case ms := <-got:
		t.Fatalf("unexpected publish %v", names(ms))
	default:
	}
}

func TestStaticUpdateBeforeRun(t *testing.T) {
	s, err := NewStatic([]string{"a:1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update([]string{"b:2"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var calls [][]string
	// Cancel from the first publish: Run still holds the wake-up from
	// Update and must not publish the same list again for it.
	publish := func(ms []topology.Member) { calls = append(calls, names(ms)); cancel() }
	if err := s.Run(ctx, publish); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || !slices.Equal(calls[0], []string{"b:2"}) {
		t.Fatalf("publishes = %v, want one of [b:2]", calls)
	}
}
