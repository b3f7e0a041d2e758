package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/pgrouter/pgrouter/dcs"
	"github.com/pgrouter/pgrouter/internal/kubetest"
)

func TestAdvertise(t *testing.T) {
	tests := []struct{ addr, ip, want string }{
		{"127.0.0.1:5432", "10.1.2.3", "127.0.0.1:5432"},
		{"0.0.0.0:5432", "10.1.2.3", "10.1.2.3:5432"},
		{"[::]:8008", "10.1.2.3", "10.1.2.3:8008"},
		{":5432", "fd00::7", "[fd00::7]:5432"},
		{"db.example:5432", "10.1.2.3", "db.example:5432"},
		{"0.0.0.0:5432", "", "0.0.0.0:5432"}, // no pod IP known
	}
	for _, tc := range tests {
		if got := advertise(tc.addr, tc.ip); got != tc.want {
			t.Errorf("advertise(%q, %q) = %q, want %q", tc.addr, tc.ip, got, tc.want)
		}
	}
}

// The RBAC each process runs with: the agent's Role (as listed at the top
// of dcs/kubernetes.go) and the proxy's (read pods).
var (
	agentKubeRules = []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "patch"}},
	}
	proxyKubeRules = []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
	}
)

// writeKubeconfig writes a kubeconfig for cfg into dir that the agents' OS
// user can read, with its own copy of the API server's CA.
func writeKubeconfig(t *testing.T, dir, name string, cfg *rest.Config, cred *syscall.Credential) string {
	t.Helper()
	ca := cfg.CAData
	if len(ca) == 0 {
		var err error
		if ca, err = os.ReadFile(cfg.CAFile); err != nil {
			t.Fatal(err)
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.CAFile, cfg.CAData = filepath.Join(dir, name+"-ca.crt"), nil
	if err := os.WriteFile(cfg.CAFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	path, err := kubetest.WriteKubeconfig(dir, name, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// TestKubernetesAgentFailover: three synchronous agents with --dcs
// kubernetes, each in a pod the test created and marked Ready with its
// PostgreSQL's address (no kubelet runs), elect one leader through a Lease
// and label their pods; the proxy follows the labels (--discovery
// kubernetes --role-preset pgrouter). Each process authenticates with a
// ServiceAccount token bound to its own Role only, and each agent reaches
// the API server through its own fault proxy. Under a writer through the
// proxy, each fault in turn: the leader's postmaster killed, the leader's
// agent killed (its server keeps running as primary and its pod still says
// primary), the leader cut off from the API server (it must fence itself
// before a standby is promoted). After each: the Lease names the new
// leader, its pod alone is labelled primary, the others standby, the
// proxy writes to it, and no acknowledged row is lost.
func TestKubernetesAgentFailover(t *testing.T) {
	env := kubetest.StartT(t)
	ns := env.Namespace(t)
	agentCfg := env.ServiceAccount(t, ns, "pgrouter-agent", agentKubeRules...)
	proxyCfg := env.ServiceAccount(t, ns, "pgrouter-proxy", proxyKubeRules...)
	apiServer := strings.TrimPrefix(env.Config.Host, "https://")
	links := map[string]*faultProxy{} // agent name -> its link to the API server
	var proxyKubeconfig string
	c := startAgentCluster(t, agentOptions{
		synchronous: true,
		store: func(a *agentProc) []string {
			dir := filepath.Dir(a.Dir)
			if proxyKubeconfig == "" {
				proxyKubeconfig = writeKubeconfig(t, dir, "proxy", proxyCfg, a.cred)
			}
			links[a.Name] = newFaultProxy(t, apiServer)
			cfg := rest.CopyConfig(agentCfg)
			cfg.Host = "https://" + links[a.Name].Addr()
			kubeconfig := writeKubeconfig(t, dir, "agent-"+a.Name, cfg, a.cred)
			env.CreatePod(t, ns, a.Name, map[string]string{"app": "pg"}, a.PGPort)
			env.SetPodStatus(t, ns, a.Name, kubetest.PodState{IP: "127.0.0.1", Ready: true})
			return []string{"--dcs", "kubernetes", "--pod-name", a.Name, "--namespace", ns, "--kubeconfig", kubeconfig}
		},
		proxy: func(bin string) *proxyProc {
			p := newProxyProc(t)
			p.launch(bin, []string{"proxy", "--discovery", "kubernetes", "--namespace", ns, "--selector", "app=pg",
				"--role-preset", "pgrouter", "--kubeconfig", proxyKubeconfig,
				"--listen", p.Any, "--listen-rw", p.RW, "--listen-ro", p.RO, "--admin-listen", p.Admin,
				"--health-user", agentSuper, "--health-interval", "200ms", "--primary-wait", "20s", "--log-level", "debug"},
				append(cleanAgentEnv(), "PGROUTER_HEALTH_PASSWORD="+agentSuperPass))
			p.waitReady()
			return p
		},
	})
	label := func(a *agentProc) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p, err := env.Client.CoreV1().Pods(ns).Get(ctx, a.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return p.Labels[dcs.RoleLabel], nil
	}
	// roles checks the Lease and the role labels against leader.
	roles := func(leader *agentProc) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l, err := env.Client.CoordinationV1().Leases(ns).Get(ctx, dcs.LeaseName(agentScope), metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h := l.Spec.HolderIdentity; h == nil || *h != leader.Name {
			return fmt.Errorf("lease holder %v, want %s", h, leader.Name)
		}
		for _, a := range c.agents {
			want := dcs.RoleLabelStandby
			if a == leader {
				want = dcs.RoleLabelPrimary
			}
			if got, err := label(a); err != nil || got != want {
				return fmt.Errorf("pod %s: %s=%q (%v), want %q", a.Name, dcs.RoleLabel, got, err, want)
			}
		}
		return nil
	}
	c.waitHealthy(30 * time.Second)
	mustExecProxy(t, c, "CREATE TABLE acked (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
	next := int64(1)
	scenario := func(name string, fault func(t *testing.T, ld *agentProc) *agentProc) {
		t.Run(name, func(t *testing.T) {
			ld := c.waitHealthy(90 * time.Second)
			eventually(t, 10*time.Second, "lease and role labels", func() error { return roles(ld) })
			w := startWriter(t, c.proxy.RW, next)
			eventually(t, 20*time.Second, "writes flowing", func() error {
				if n := w.count(); n < 20 {
					return fmt.Errorf("%d acknowledged", n)
				}
				return nil
			})
			began := time.Now()
			nl := fault(t, ld)
			labelled := time.Time{}
			eventually(t, 30*time.Second, "new primary labelled", func() error {
				if got, err := label(nl); err != nil || got != dcs.RoleLabelPrimary {
					return fmt.Errorf("%s=%q (%v)", dcs.RoleLabel, got, err)
				}
				labelled = time.Now()
				return nil
			})
			assertRWLandsOn(t, c, nl)
			written, _ := w.firstAckAfter(began, ld.PGPort)
			if got := c.waitHealthy(90 * time.Second); got != nl {
				t.Fatalf("leader %s, want %s", got.Name, nl.Name)
			}
			eventually(t, 10*time.Second, "lease and role labels after the fault", func() error { return roles(nl) })
			before := w.count()
			eventually(t, 20*time.Second, "writes flowing again", func() error {
				if n := w.count(); n < before+20 {
					return fmt.Errorf("%d acknowledged since healthy", n-before)
				}
				return nil
			})
			acked, errs, longest := w.finish()
			next += 10_000_000
			if missing := missingRows(t, nl.PGAddr, acked); len(missing) > 0 {
				t.Errorf("%d of %d acknowledged rows missing on %s, e.g. %v", len(missing), len(acked), nl.Name, missing[:min(5, len(missing))])
			}
			t.Logf("%s: leader %s -> %s labelled primary after %v, first write on it after %v; %d writes acknowledged, %d client errors, longest gap %v",
				name, ld.Name, nl.Name, labelled.Sub(began).Round(time.Millisecond), written.Sub(began).Round(time.Millisecond),
				len(acked), errs, longest.Round(time.Millisecond))
		})
	}

	scenario("kill-primary-postmaster", func(t *testing.T, ld *agentProc) *agentProc {
		pid, err := ld.postmasterPID()
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		return c.waitNewLeader(t, ld, 30*time.Second)
	})

	scenario("kill-leader-agent", func(t *testing.T, ld *agentProc) *agentProc {
		ld.kill() // its PostgreSQL keeps running as a primary, its pod labelled primary
		nl := c.waitNewLeader(t, ld, 30*time.Second)
		// The new leader removes the orphan's label: it gets no writes.
		eventually(t, 10*time.Second, "orphaned primary unlabelled", func() error {
			if got, err := label(ld); err != nil || got == dcs.RoleLabelPrimary {
				return fmt.Errorf("%s=%q (%v)", dcs.RoleLabel, got, err)
			}
			return nil
		})
		assertRWLandsOn(t, c, nl)
		ld.start() // a supervisor restarts the agent: it demotes and rewinds
		return nl
	})

	scenario("leader-partitioned-from-api-server", func(t *testing.T, ld *agentProc) *agentProc {
		cut := time.Now()
		links[ld.Name].Cut()
		var fenced, promoted time.Time
		var nl *agentProc
		eventually(t, 30*time.Second, "old primary fenced and a new leader promoted", func() error {
			if fenced.IsZero() && !acceptsConnections(ld) {
				fenced = time.Now()
			}
			if promoted.IsZero() {
				if l, err := c.leader(); err == nil && l != ld {
					promoted, nl = time.Now(), l
				}
			}
			if fenced.IsZero() || promoted.IsZero() {
				return fmt.Errorf("fenced %v, promoted %v", !fenced.IsZero(), !promoted.IsZero())
			}
			return nil
		})
		if !fenced.Before(promoted) {
			t.Errorf("the old primary still accepted connections %v after the new leader was promoted", fenced.Sub(promoted))
		}
		if n := ld.metric("pgrouter_agent_fencings_total", ""); n < 1 {
			t.Errorf("fencings_total on %s = %v, want ≥ 1", ld.Name, n)
		}
		t.Logf("partition: old primary fenced %v after the cut, new leader at %v",
			fenced.Sub(cut).Round(time.Millisecond), promoted.Sub(cut).Round(time.Millisecond))
		links[ld.Name].Restore()
		return nl
	})
}
