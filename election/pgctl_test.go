package election

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/dcs"
)

func newTestPGCtl(t *testing.T, warm bool) *PGCtl {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	p, err := NewPGCtl(PGConfig{Name: "n1", DataDir: dir, Listen: "127.0.0.1:5433", SuperUser: "postgres",
		ReplUser: "repl", ReplPassword: `pa'ss\word`, Params: map[string]string{"work_mem": "8MB"}, Warm: warm}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWipeRefusesForeignDirectories(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		ok    bool
	}{
		{"missing", nil, true},
		{"empty", []string{}, true},
		{"someone's files", []string{"notes.txt"}, false},
		{"a data directory", []string{"PG_VERSION", "base"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPGCtl(t, false)
			if tc.files != nil {
				if err := os.MkdirAll(p.cfg.DataDir, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			for _, f := range tc.files {
				if err := os.WriteFile(filepath.Join(p.cfg.DataDir, f), []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			err := p.Wipe()
			if (err == nil) != tc.ok {
				t.Fatalf("Wipe() = %v, want ok=%v", err, tc.ok)
			}
			ents, _ := os.ReadDir(p.cfg.DataDir)
			if tc.ok && len(ents) != 0 || !tc.ok && len(ents) != len(tc.files) {
				t.Fatalf("left %d entries", len(ents))
			}
		})
	}
	t.Run("partial fill by the agent", func(t *testing.T) {
		p := newTestPGCtl(t, false)
		if err := os.MkdirAll(p.cfg.DataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p.cfg.DataDir, "backup_label"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		done, err := p.markPartial()
		if err != nil {
			t.Fatal(err)
		}
		defer done()
		if err := p.Wipe(); err != nil {
			t.Fatalf("Wipe() of a half-made clone = %v", err)
		}
	})
}

func TestConfigure(t *testing.T) {
	p := newTestPGCtl(t, true)
	if err := os.MkdirAll(p.cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.path("postgresql.conf"), []byte("# initdb's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := dcs.Member{Name: "n2", ConnAddr: "10.0.0.2:5432"}
	for range 2 { // idempotent: one include line
		if err := p.configure(ServerOptions{Standby: true, Upstream: &up}); err != nil {
			t.Fatal(err)
		}
	}
	conf, _ := os.ReadFile(p.path(confFile))
	main, _ := os.ReadFile(p.path("postgresql.conf"))
	for _, want := range []string{
		"# pgrouter-upstream: n2\n",
		"port = '5433'\n",
		"listen_addresses = '127.0.0.1'\n",
		"hot_standby = 'off'\n",
		"wal_log_hints = 'on'\n",
		"work_mem = '8MB'\n",
		`primary_conninfo = 'host=''10.0.0.2'' port=''5432'' user=''repl'' password=''pa\''ss\\word'' application_name=''n1''`,
		"synchronous_standby_names = ''\n",
	} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("%s lacks %q:\n%s", confFile, want, conf)
		}
	}
	if n := strings.Count(string(main), includeLine); n != 1 {
		t.Errorf("postgresql.conf includes %s %d times", confFile, n)
	}
	if u, s := p.readManaged(); u != "n2" || s != "" {
		t.Errorf("readManaged = %q, %q", u, s)
	}
	if err := p.configure(ServerOptions{SyncStandby: "n3"}); err != nil {
		t.Fatal(err)
	}
	conf, _ = os.ReadFile(p.path(confFile))
	if !strings.Contains(string(conf), `synchronous_standby_names = 'FIRST 1 ("n3")'`) || !strings.Contains(string(conf), "primary_conninfo = ''") {
		t.Errorf("primary configuration:\n%s", conf)
	}
	if u, s := p.readManaged(); u != "" || s != "n3" {
		t.Errorf("readManaged = %q, %q", u, s)
	}
	if _, err := NewPGCtl(PGConfig{DataDir: "/d", Listen: "127.0.0.1:1", Params: map[string]string{"primary_conninfo": "x"}}, nil); err == nil {
		t.Error("a managed parameter was accepted")
	}
}
