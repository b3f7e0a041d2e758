package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestExampleLoadsAndValidates(t *testing.T) {
	c, err := Load("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Proxy.ListenRW != "127.0.0.1:6433" || len(c.Discovery.Backends) != 3 || c.Health.Interval != 500*time.Millisecond {
		t.Fatalf("unexpected: %+v", c)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Defaults()
	c.Proxy.Listen = "nope"
	c.Routing.Balance = "random"
	c.Proxy.TLSCertFile = "x"
	c.Health.FailureThreshold = -1
	err := c.Validate()
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"listen", "balance", "tls-key", "failureThreshold", "backends"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	c = Defaults()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "no listener") {
		t.Fatalf("want no listener error, got %v", err)
	}
}

func TestUnixSocketDirMustBeAbsoluteAndShort(t *testing.T) {
	for dir, want := range map[string]string{
		"run/pgrouter":                 "not an absolute path",
		"/" + strings.Repeat("d", 100): "too long for a socket path",
		"/var/run/pgrouter":            "",
	} {
		c := Defaults()
		c.Proxy.ListenRW = "127.0.0.1:6433"
		c.Discovery.Backends = []string{"127.0.0.1:5432"}
		c.Proxy.UnixSocketDir = dir
		err := c.Validate()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("unix-socket-dir %q: Validate() = %v, want %q", dir, err, want)
		}
	}
}

func TestFlagsOverrideFileOnlyWhenGiven(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	os.WriteFile(path, []byte("proxy:\n  listenRW: 127.0.0.1:7000\n  primaryWait: 3s\ndiscovery:\n  backends: [127.0.0.1:5432]\n"), 0o600)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	f := BindProxyFlags(fs)
	if err := fs.Parse([]string{"--config", path, "--listen-ro", "127.0.0.1:7001", "--primary-wait", "5s"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGROUTER_HEALTH_PASSWORD", "s3cret")
	c, err := f.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if c.Proxy.ListenRW != "127.0.0.1:7000" || c.Proxy.ListenRO != "127.0.0.1:7001" || c.Proxy.PrimaryWait != 5*time.Second {
		t.Fatalf("merge wrong: %+v", c.Proxy)
	}
	if c.Health.Password != "s3cret" {
		t.Fatal("health password not read from the environment")
	}
}

func TestUnknownKeyIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("proxy:\n  listen_rw: 127.0.0.1:7000\n"), 0o600)
	if _, err := Load(path); err == nil {
		t.Fatal("typo accepted")
	}
}

func TestKubernetesDiscoveryConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		k    Kubernetes
		want string // substring of the error; "" = valid
		key  string // resolved role label key
	}{
		{"preset", Kubernetes{RolePreset: "cnpg"}, "", "cnpg.io/instanceRole"},
		{"preset with override", Kubernetes{RolePreset: "zalando", PrimaryValue: "leader"}, "", "spilo-role"},
		{"own label", Kubernetes{RoleLabel: "example.com/role", PrimaryValue: "rw"}, "", "example.com/role"},
		{"unknown preset", Kubernetes{RolePreset: "stolon"}, "want one of cnpg, kubeblocks, kubedb, pgrouter, zalando", ""},
		{"no role", Kubernetes{}, "needs --role-preset", ""},
		{"label without value", Kubernetes{RoleLabel: "role"}, "needs --role-preset", ""},
		{"bad label", Kubernetes{RoleLabel: "a b", PrimaryValue: "p"}, "role-label", ""},
		{"bad selector", Kubernetes{RolePreset: "kubedb", Selector: "app in (x"}, "selector", ""},
		{"kubeconfig needs namespace", Kubernetes{RolePreset: "kubedb", Kubeconfig: "/k"}, "needs --namespace", ""},
		{"bad port", Kubernetes{RolePreset: "kubedb", PGPort: 70000}, "pg-port", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			c.Proxy.Listen = "127.0.0.1:6432"
			c.Discovery.Kind = "kubernetes"
			c.Discovery.Kubernetes = tc.k
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if r, _ := tc.k.Role(); r.Key != tc.key {
					t.Fatalf("role label %q, want %q", r.Key, tc.key)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestKubernetesFlags(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	f := BindProxyFlags(fs)
	if err := fs.Parse([]string{"--listen", "127.0.0.1:6432", "--discovery", "kubernetes", "--namespace", "db",
		"--selector", "app=pg", "--role-preset", "kubeblocks", "--standby-value", "follower", "--kubeconfig", "/k",
		"--pg-port-name", "tcp-postgresql", "--pg-port", "5433"}); err != nil {
		t.Fatal(err)
	}
	c, err := f.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	k := c.Discovery.Kubernetes
	if k.Namespace != "db" || k.Selector != "app=pg" || k.Kubeconfig != "/k" || k.PGPortName != "tcp-postgresql" || k.PGPort != 5433 {
		t.Fatalf("flags not applied: %+v", k)
	}
	if r, _ := k.Role(); r.Key != "kubeblocks.io/role" || r.Primary != "primary" || r.Standby != "follower" {
		t.Fatalf("role %+v", r)
	}
}

func TestKubernetesDiscoveryYAML(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte(`proxy:
  listen: 127.0.0.1:6432
discovery:
  kind: kubernetes
  kubernetes:
    namespace: db
    selector: cnpg.io/cluster=pg
    rolePreset: cnpg
    pgPortName: pg
    pgPort: 5433
`), 0o600)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	k := c.Discovery.Kubernetes
	if k.Namespace != "db" || k.Selector != "cnpg.io/cluster=pg" || k.RolePreset != "cnpg" || k.PGPortName != "pg" || k.PGPort != 5433 {
		t.Fatalf("loaded %+v", k)
	}
}
