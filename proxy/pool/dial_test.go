package pool

import "testing"

// TestDialTarget: a host that is an absolute path is a directory holding
// the server's Unix socket, named as PostgreSQL names it; anything else
// is dialed over TCP as written.
func TestDialTarget(t *testing.T) {
	for _, c := range []struct{ addr, network, target string }{
		{"/run/postgresql:5432", "unix", "/run/postgresql/.s.PGSQL.5432"},
		{"/tmp/pg dir:6543", "unix", "/tmp/pg dir/.s.PGSQL.6543"},
		{"127.0.0.1:5432", "tcp", "127.0.0.1:5432"},
		{"[::1]:5432", "tcp", "[::1]:5432"},
		{"db.example:5432", "tcp", "db.example:5432"},
		{"relative/dir:5432", "tcp", "relative/dir:5432"},
	} {
		if network, target := DialTarget(c.addr); network != c.network || target != c.target {
			t.Errorf("DialTarget(%q) = %s %q, want %s %q", c.addr, network, target, c.network, c.target)
		}
	}
}
