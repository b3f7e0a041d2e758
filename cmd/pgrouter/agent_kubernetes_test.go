package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pgrouter/pgrouter/dcs"
	"github.com/pgrouter/pgrouter/internal/kubetest"
	"github.com/pgrouter/pgrouter/internal/pgtest"
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

// agentRBAC is the agent's RBAC as shipped; the agents' tokens are bound
// to it and to nothing else.
const agentRBAC = "../../configs/kubernetes/agent-rbac.yaml"

// agentKubeRules is what the agent's Kubernetes store uses (listed at the
// top of dcs/kubernetes.go); TestKubeManifestRBAC checks that agentRBAC
// grants each of these and nothing in other namespaces.
var agentKubeRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch"}},
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "patch"}},
}

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

// primaryWatch records when each pod was first seen labelled primary,
// from a watch (the labels' own timing, not the test's polling).
type primaryWatch struct {
	stop func()
	mu   sync.Mutex
	at   map[string]time.Time
}

func watchPrimaries(t *testing.T, cs kubernetes.Interface, ns string) *primaryWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sel := dcs.RoleLabel + "=" + dcs.RoleLabelPrimary
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: list.ResourceVersion})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	pw := &primaryWatch{at: map[string]time.Time{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted || p.Labels[dcs.RoleLabel] != dcs.RoleLabelPrimary {
				continue
			}
			pw.mu.Lock()
			if pw.at[p.Name].IsZero() {
				pw.at[p.Name] = time.Now()
			}
			pw.mu.Unlock()
		}
	}()
	var once sync.Once
	pw.stop = func() {
		once.Do(func() {
			w.Stop()
			cancel()
			<-done
		})
	}
	t.Cleanup(pw.stop)
	return pw
}

// first returns when pod was first seen labelled primary; zero if not yet.
func (pw *primaryWatch) first(pod string) time.Time {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	return pw.at[pod]
}

// TestKubernetesAgentFailover: three synchronous agents with --dcs
// kubernetes, each in a pod the test created and marked Ready with its
// PostgreSQL's address (no kubelet runs), elect one leader through a Lease
// and label their pods; the proxy follows the labels (--discovery
// kubernetes --role-preset pgrouter). Each process authenticates with the
// token of its ServiceAccount from configs/kubernetes (agent-rbac.yaml,
// proxy-rbac.yaml), bound to that Role only, and each agent reaches
// the API server through its own fault proxy. Under a writer through the
// proxy, each fault in turn: the leader's postmaster killed, the leader's
// agent killed (its server keeps running as primary and its pod still says
// primary), a planned switchover (the Lease handed over), the leader cut
// off from the API server by a silent partition (it must fence itself
// before a standby is promoted, and rejoin once the network heals). After each: the Lease names the new
// leader, its pod alone is labelled primary, the others standby, the
// proxy writes to it, and no acknowledged row is lost.
func TestKubernetesAgentFailover(t *testing.T) {
	env := kubetest.StartT(t)
	ns := env.Namespace(t)
	env.ApplyFile(t, ns, agentRBAC, false)
	env.ApplyFile(t, ns, proxyRBAC, false)
	agentCfg := env.Token(t, ns, "pgrouter-agent")
	proxyCfg := env.Token(t, ns, "pgrouter-proxy")
	apiServer := strings.TrimPrefix(env.Config.Host, "https://")
	links := map[string]*faultLink{} // agent name -> its link to the API server
	var proxyKubeconfig string
	c := startAgentCluster(t, agentOptions{
		synchronous: true,
		store: func(a *agentProc) []string {
			dir := filepath.Dir(a.Dir)
			if proxyKubeconfig == "" {
				proxyKubeconfig = writeKubeconfig(t, dir, "proxy", proxyCfg, a.cred)
			}
			links[a.Name] = newFaultLink(t, apiServer)
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
				append(pgtest.ProcessEnv(), "PGROUTER_HEALTH_PASSWORD="+agentSuperPass))
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
			pw := watchPrimaries(t, env.Client, ns)
			began := time.Now()
			nl := fault(t, ld)
			var labelled time.Time
			eventually(t, 30*time.Second, "new primary labelled", func() error {
				if labelled = pw.first(nl.Name); labelled.IsZero() {
					return fmt.Errorf("%s not labelled %s=%s yet", nl.Name, dcs.RoleLabel, dcs.RoleLabelPrimary)
				}
				return nil
			})
			pw.stop()
			assertRWLandsOn(t, c, nl)
			var written time.Time
			eventually(t, 20*time.Second, "the writer's first write on the new primary", func() error {
				var ok bool
				if written, ok = w.firstAckAfter(began, ld.PGPort); !ok {
					return errors.New("none yet")
				}
				return nil
			})
			if got := c.waitHealthy(90 * time.Second); got != nl {
				t.Fatalf("leader %s, want %s", got.Name, nl.Name)
			}
			eventually(t, 10*time.Second, "lease and role labels after the fault", func() error { return roles(nl) })
			acked, errs, longest := w.settle(t, nl)
			next += 10_000_000
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

	scenario("planned-switchover", func(t *testing.T, ld *agentProc) *agentProc {
		var other *agentProc
		for _, a := range c.agents {
			if a != ld {
				other = a
			}
		}
		out, err := exec.Command(binPath, "switchover", "--force", "--api", other.API).CombinedOutput()
		if err != nil {
			t.Fatalf("pgrouter switchover: %v\n%s", err, out)
		}
		t.Logf("%s", bytes.TrimSpace(out))
		return c.waitNewLeader(t, ld, 30*time.Second)
	})

	scenario("leader-partitioned-from-api-server", func(t *testing.T, ld *agentProc) *agentProc {
		cut := time.Now()
		links[ld.Name].Silence(t)
		nl := fencedBeforePromoted(t, c, ld, cut)
		// The agent had to notice the partition by itself: its connections
		// stayed open and silent. Heal closes them; it reconnects.
		links[ld.Name].Heal(t)
		return nl
	})
}
