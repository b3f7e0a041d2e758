package health

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/topology"
)

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0/0", 0, true},
		{"0/16B3748", 0x16B3748, true},
		{"1/0", 1 << 32, true},
		{"FFFFFFFF/FFFFFFFF", 1<<64 - 1, true},
		{"a/b", 0xa<<32 | 0xb, true},
		{"", 0, false},
		{"16B3748", 0, false},
		{"1/2/3", 0, false},
		{"100000000/0", 0, false},
		{"x/0", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := topology.ParseLSN(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("topology.ParseLSN(%q) = %#x, %v; want %#x ok=%v", tc.in, got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestParseProbeRow(t *testing.T) {
	b := func(s string) []byte { return []byte(s) }
	tests := []struct {
		name string
		row  [][]byte
		want topology.Health
		ok   bool
	}{
		{"primary", [][]byte{b("f"), b("0/3000060"), b("1"), b("0")},
			topology.Health{Role: P, WALPosition: 0x3000060, Timeline: 1}, true},
		{"standby lagging", [][]byte{b("t"), b("1/10"), b("3"), b("2.5")},
			topology.Health{Role: S, WALPosition: 1<<32 | 0x10, Timeline: 3, ReplayLag: 2500 * time.Millisecond}, true},
		{"standby nulls", [][]byte{b("t"), nil, nil, nil}, topology.Health{Role: S}, true},
		{"clock skew gives no negative lag", [][]byte{b("t"), b("0/1"), b("1"), b("-0.2")},
			topology.Health{Role: S, WALPosition: 1, Timeline: 1}, true},
		{"bad bool", [][]byte{b("x"), b("0/1"), b("1"), b("0")}, topology.Health{}, false},
		{"bad lsn", [][]byte{b("f"), b("zz"), b("1"), b("0")}, topology.Health{}, false},
		{"bad timeline", [][]byte{b("f"), b("0/1"), b("-1"), b("0")}, topology.Health{}, false},
		{"bad lag", [][]byte{b("t"), b("0/1"), b("1"), b("soon")}, topology.Health{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProbeRow(tc.row)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestObserve(t *testing.T) {
	now := time.Unix(1000, 0)
	refused := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	warmErr := fmt.Errorf("failed to connect: %w", &pgconn.PgError{Severity: "FATAL", Code: "57P03",
		Message: "the database system is not accepting connections", Detail: "Hot standby mode is disabled."})
	startingErr := &pgconn.PgError{Severity: "FATAL", Code: "57P03", Message: "the database system is starting up"}
	otherPgErr := &pgconn.PgError{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"}
	primary := up(P, 1, 100)
	standby := up(S, 1, 90)

	tests := []struct {
		name         string
		prev         topology.Health
		failures     int
		got          topology.Health
		err          error
		wantUp       bool
		wantAccepts  bool
		wantRole     topology.Role
		wantFailures int
	}{
		{name: "first success", got: topology.Health{Role: P, Timeline: 1}, wantUp: true, wantAccepts: true, wantRole: P},
		{name: "success resets failures", prev: primary, failures: 2, got: topology.Health{Role: P},
			wantUp: true, wantAccepts: true, wantRole: P},
		{name: "role change at once", prev: standby, failures: 0, got: topology.Health{Role: P, Timeline: 2},
			wantUp: true, wantAccepts: true, wantRole: P},
		{name: "one failure keeps state", prev: primary, err: refused,
			wantUp: true, wantAccepts: true, wantRole: P, wantFailures: 1},
		{name: "second failure keeps state", prev: primary, failures: 1, err: refused,
			wantUp: true, wantAccepts: true, wantRole: P, wantFailures: 2},
		{name: "threshold marks down", prev: primary, failures: 2, err: refused,
			wantUp: false, wantRole: U, wantFailures: 3},
		{name: "stays down", prev: topology.Health{}, failures: 7, err: refused, wantFailures: 8},
		{name: "never up first failure", err: refused, wantFailures: 1},
		{name: "other server error counts as failure", prev: primary, err: otherPgErr,
			wantUp: true, wantAccepts: true, wantRole: P, wantFailures: 1},
		{name: "warm standby alive not accepting", prev: topology.Health{}, failures: 5, err: warmErr,
			wantUp: true, wantAccepts: false, wantRole: S},
		{name: "starting up role unknown at once", prev: primary, err: startingErr,
			wantUp: true, wantAccepts: false, wantRole: U},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, n := observe(tc.prev, tc.failures, tc.got, tc.err, time.Millisecond, now, 3)
			if h.Up != tc.wantUp || h.AcceptsConnections != tc.wantAccepts || h.Role != tc.wantRole || n != tc.wantFailures {
				t.Fatalf("observe = up %v accepts %v role %v failures %d; want %v %v %v %d",
					h.Up, h.AcceptsConnections, h.Role, n, tc.wantUp, tc.wantAccepts, tc.wantRole, tc.wantFailures)
			}
			if !h.CheckedAt.Equal(now) {
				t.Errorf("CheckedAt = %v", h.CheckedAt)
			}
			if (tc.err == nil) != (h.Err == "") {
				t.Errorf("Err = %q for error %v", h.Err, tc.err)
			}
		})
	}
}

func TestKV(t *testing.T) {
	if got := kv("password", `it's a \ test`); got != `password='it\'s a \\ test'` {
		t.Fatalf("kv = %s", got)
	}
	p, err := newPGProber(topology.Member{Name: "m", Addr: "127.0.0.1:6543"},
		Config{Password: `it's`}.WithDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if c := p.config; c.Host != "127.0.0.1" || c.Port != 6543 || c.Password != "it's" || c.User != "postgres" ||
		c.Database != "postgres" || c.ConnectTimeout != time.Second {
		t.Fatalf("config = %+v", c)
	}
	if _, err := newPGProber(topology.Member{Name: "m", Addr: "nope"}, Config{}.WithDefaults()); err == nil {
		t.Fatal("bad address accepted")
	}
}
