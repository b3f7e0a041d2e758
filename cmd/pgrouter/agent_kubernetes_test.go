package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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

// TestKubernetesAgentFailover: three agents with --dcs kubernetes, each in
// a pod the test created and marked Ready with its PostgreSQL's address (no
// kubelet runs), elect one leader through a Lease and label their pods;
// the proxy follows the labels (--discovery kubernetes --role-preset
// pgrouter). Each process authenticates with a ServiceAccount token bound
// to its own Role only. When the leader's postmaster is killed a standby
// takes over: the Lease names it, its pod is labelled primary, the old
// leader rejoins and is labelled standby, and the proxy writes to the new
// primary.
func TestKubernetesAgentFailover(t *testing.T) {
	env := kubetest.StartT(t)
	ns := env.Namespace(t)
	agentCfg := env.ServiceAccount(t, ns, "pgrouter-agent", agentKubeRules...)
	proxyCfg := env.ServiceAccount(t, ns, "pgrouter-proxy", proxyKubeRules...)
	var agentKubeconfig, proxyKubeconfig string
	c := startAgentCluster(t, agentOptions{
		store: func(a *agentProc) []string {
			if agentKubeconfig == "" {
				dir := filepath.Dir(a.Dir)
				agentKubeconfig = writeKubeconfig(t, dir, "agent", agentCfg, a.cred)
				proxyKubeconfig = writeKubeconfig(t, dir, "proxy", proxyCfg, a.cred)
			}
			env.CreatePod(t, ns, a.Name, map[string]string{"app": "pg"}, a.PGPort)
			env.SetPodStatus(t, ns, a.Name, kubetest.PodState{IP: "127.0.0.1", Ready: true})
			return []string{"--dcs", "kubernetes", "--pod-name", a.Name, "--namespace", ns, "--kubeconfig", agentKubeconfig}
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
			p, err := env.Client.CoreV1().Pods(ns).Get(ctx, a.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			want := dcs.RoleLabelStandby
			if a == leader {
				want = dcs.RoleLabelPrimary
			}
			if got := p.Labels[dcs.RoleLabel]; got != want {
				return fmt.Errorf("pod %s: %s=%q, want %q", a.Name, dcs.RoleLabel, got, want)
			}
		}
		return nil
	}
	ld := c.waitHealthy(30 * time.Second)
	eventually(t, 10*time.Second, "lease and role labels", func() error { return roles(ld) })
	mustExecProxy(t, c, "CREATE TABLE acked (id bigint PRIMARY KEY)")

	pid, err := ld.postmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	nl := c.waitNewLeader(t, ld, 30*time.Second)
	eventually(t, 30*time.Second, "new primary labelled", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p, err := env.Client.CoreV1().Pods(ns).Get(ctx, nl.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := p.Labels[dcs.RoleLabel]; got != dcs.RoleLabelPrimary {
			return fmt.Errorf("%s=%q", dcs.RoleLabel, got)
		}
		return nil
	})
	labelled := time.Since(began)
	assertRWLandsOn(t, c, nl)
	routed := time.Since(began)
	mustExecProxy(t, c, "INSERT INTO acked VALUES (1)")
	if got := c.waitHealthy(90 * time.Second); got != nl {
		t.Fatalf("leader %s, want %s", got.Name, nl.Name)
	}
	eventually(t, 10*time.Second, "lease and role labels after failover", func() error { return roles(nl) })
	t.Logf("postmaster of %s killed: %s labelled primary after %v, proxy writes to it after %v",
		ld.Name, nl.Name, labelled.Round(time.Millisecond), routed.Round(time.Millisecond))
}
