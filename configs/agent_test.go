package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestAgentExampleLoadsAndValidates(t *testing.T) {
	t.Setenv("PGROUTER_SUPERUSER_PASSWORD", "s")
	t.Setenv("PGROUTER_REPLICATION_PASSWORD", "r")
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	f := BindAgentFlags(fs)
	if err := fs.Parse([]string{"--config", "agent.example.yaml"}); err != nil {
		t.Fatal(err)
	}
	c, err := f.Resolve()
	if err != nil {
		t.Fatalf("agent.example.yaml: %v", err)
	}
	d := AgentDefaults()
	if c.Election != d.Election || c.PostgreSQL.Listen != d.PostgreSQL.Listen || c.API != d.API {
		t.Errorf("the example's defaults differ from AgentDefaults: %+v vs %+v", c.Election, d.Election)
	}
	if c.Name != "node1" || c.PostgreSQL.SuperUserPassword != "s" || c.PostgreSQL.Parameters["shared_buffers"] != "256MB" {
		t.Errorf("example not read: %+v", c)
	}
}

func TestAgentFlags(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "repl")
	if err := os.WriteFile(pw, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGROUTER_SUPERUSER_PASSWORD", "super")
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	f := BindAgentFlags(fs)
	err := fs.Parse([]string{"--name", "n1", "--scope", "demo", "--dcs", "etcd", "--etcd-endpoints", "127.0.0.1:2379,127.0.0.1:2380",
		"--pgdata", "/data/n1", "--pg-listen", "127.0.0.1:5433", "--api-listen", "127.0.0.1:8009",
		"--synchronous", "--standby-mode", "warm", "--replication-password-file", pw,
		"--pg-hba", "host all all 10.0.0.0/8 scram-sha-256", "--pg-hba", "host replication all 10.0.0.0/8 scram-sha-256",
		"--pg-param", "work_mem=8MB", "--pg-param", "search_path=a,b",
		"--ttl", "2s", "--renew-deadline", "600ms", "--retry-period", "200ms", "--max-lag-on-failover", "4096"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := f.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	p := c.PostgreSQL
	switch {
	case c.Name != "n1" || c.Scope != "demo" || len(c.Etcd.Endpoints) != 2:
		t.Errorf("identity: %+v", c)
	case !c.Election.Synchronous || p.StandbyMode != "warm" || c.Election.TTL != 2*time.Second || c.Election.MaxLagOnFailover != 4096:
		t.Errorf("election: %+v", c.Election)
	case p.SuperUserPassword != "super" || p.ReplicationPassword != "from-file":
		t.Errorf("passwords: %q %q", p.SuperUserPassword, p.ReplicationPassword)
	case len(p.HBA) != 2 || p.Parameters["search_path"] != "a,b" || p.Parameters["work_mem"] != "8MB":
		t.Errorf("postgres: %+v", p)
	case p.SuperUser != "postgres" || p.ReplicationUser != "replicator":
		t.Errorf("default users: %q %q", p.SuperUser, p.ReplicationUser)
	}
}

// With dcs kubernetes the member is named after its pod unless --name
// says otherwise, and no etcd endpoint is needed.
func TestAgentKubernetesFlags(t *testing.T) {
	t.Setenv("PGROUTER_SUPERUSER_PASSWORD", "s")
	t.Setenv("PGROUTER_REPLICATION_PASSWORD", "r")
	for _, tc := range []struct {
		args []string
		name string
	}{
		{nil, "pg-1"},
		{[]string{"--name", "n1"}, "n1"},
	} {
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		f := BindAgentFlags(fs)
		args := append([]string{"--scope", "demo", "--dcs", "kubernetes", "--pod-name", "pg-1", "--namespace", "db",
			"--kubeconfig", "/k/config", "--pgdata", "/data"}, tc.args...)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		c, err := f.Resolve()
		if err != nil {
			t.Fatal(err)
		}
		k := c.Kubernetes
		if c.Name != tc.name || k.PodName != "pg-1" || k.Namespace != "db" || k.Kubeconfig != "/k/config" {
			t.Errorf("%v: name %q, kubernetes %+v", tc.args, c.Name, k)
		}
	}
}

// The same from YAML.
func TestAgentKubernetesYAML(t *testing.T) {
	t.Setenv("PGROUTER_SUPERUSER_PASSWORD", "s")
	t.Setenv("PGROUTER_REPLICATION_PASSWORD", "r")
	path := filepath.Join(t.TempDir(), "agent.yaml")
	yaml := "scope: demo\ndcs: kubernetes\nkubernetes:\n  namespace: db\n  podName: pg-2\npostgresql:\n  dataDir: /data\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	f := BindAgentFlags(fs)
	if err := fs.Parse([]string{"--config", path}); err != nil {
		t.Fatal(err)
	}
	c, err := f.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "pg-2" || c.Kubernetes.Namespace != "db" || c.Kubernetes.Kubeconfig != "" {
		t.Errorf("name %q, kubernetes %+v", c.Name, c.Kubernetes)
	}
}

func TestAgentValidate(t *testing.T) {
	base := func() Agent {
		c := AgentDefaults()
		c.Name, c.Scope, c.Etcd.Endpoints = "n1", "demo", []string{"127.0.0.1:2379"}
		c.PostgreSQL.DataDir = "/data/n1"
		c.PostgreSQL.SuperUserPassword, c.PostgreSQL.ReplicationPassword = "s", "r"
		return c
	}
	tests := []struct {
		name   string
		modify func(*Agent)
		want   []string // substrings of the error; none for valid
	}{
		{"valid", func(*Agent) {}, nil},
		{"fencing arithmetic", func(c *Agent) { c.Election.TTL = 3 * time.Second }, []string{"ttl 3s must exceed renew-deadline 2s + retry-period 500ms + 1s"}},
		{"no passwords", func(c *Agent) { c.PostgreSQL.SuperUserPassword, c.PostgreSQL.ReplicationPassword = "", "" },
			[]string{"PGROUTER_SUPERUSER_PASSWORD", "PGROUTER_REPLICATION_PASSWORD"}},
		{"everything at once", func(c *Agent) {
			c.Name, c.Etcd.Endpoints, c.PostgreSQL.DataDir, c.PostgreSQL.StandbyMode, c.DCS = "", nil, "rel/dir", "cold", "consul"
		}, []string{"name", "dcs \"consul\"", "absolute", "standby-mode"}},
		{"same listen", func(c *Agent) { c.API.Listen = c.PostgreSQL.Listen }, []string{"both use"}},
		{"kubernetes", func(c *Agent) {
			c.DCS, c.Etcd.Endpoints, c.Kubernetes = "kubernetes", nil, AgentKubernetes{Namespace: "db", PodName: "pg-0"}
		}, nil},
		{"kubernetes without pod", func(c *Agent) { c.DCS = "kubernetes" }, []string{"--namespace and --pod-name"}},
		{"kubernetes names", func(c *Agent) {
			c.DCS, c.Scope, c.Kubernetes = "kubernetes", "Demo_1", AgentKubernetes{Namespace: "a.b", PodName: "pg_0"}
		}, []string{"namespace \"a.b\"", "pod-name \"pg_0\"", "scope \"Demo_1\""}},
		{"bad parameter", func(c *Agent) { c.PostgreSQL.Parameters = map[string]string{"a b": "1"} }, []string{"not a setting name"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.modify(&c)
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate() accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}
