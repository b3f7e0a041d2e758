package discovery

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pgrouter/pgrouter/internal/kubetest"
	"github.com/pgrouter/pgrouter/topology"
)

func pod(name, ip string, ready bool, lbl map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "pg", Ports: ports}}},
		Status:     corev1.PodStatus{PodIP: ip},
	}
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}
	return p
}

func TestKubernetesMember(t *testing.T) {
	pgPort := corev1.ContainerPort{Name: "postgresql", ContainerPort: 5432}
	role := RolePresets["cnpg"]
	deleting := pod("d", "10.0.0.4", true, nil, pgPort)
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	for _, tc := range []struct {
		name string
		cfg  KubernetesConfig
		pod  *corev1.Pod
		want topology.Member
		why  string
	}{
		{"primary", KubernetesConfig{}, pod("a", "10.0.0.1", true, map[string]string{role.Key: "primary"}, pgPort),
			topology.Member{Name: "a", Addr: "10.0.0.1:5432", Claimed: topology.RolePrimary}, ""},
		{"replica", KubernetesConfig{}, pod("b", "10.0.0.2", true, map[string]string{role.Key: "replica"}, pgPort),
			topology.Member{Name: "b", Addr: "10.0.0.2:5432", Claimed: topology.RoleStandby}, ""},
		{"no label claims standby", KubernetesConfig{}, pod("c", "fd00::3", true, nil, pgPort),
			topology.Member{Name: "c", Addr: "[fd00::3]:5432", Claimed: topology.RoleStandby}, ""},
		{"not ready", KubernetesConfig{}, pod("n", "10.0.0.5", false, nil, pgPort), topology.Member{}, "not Ready"},
		{"no ip", KubernetesConfig{}, pod("n", "", true, nil, pgPort), topology.Member{}, "no pod IP"},
		{"deleting", KubernetesConfig{}, deleting, topology.Member{}, "being deleted"},
		{"no named port", KubernetesConfig{}, pod("p", "10.0.0.6", true, nil), topology.Member{}, `no container port named "postgresql" (or give --pg-port)`},
		{"port name", KubernetesConfig{PortName: "pg"}, pod("p", "10.0.0.6", true, nil, pgPort, corev1.ContainerPort{Name: "pg", ContainerPort: 6000}),
			topology.Member{Name: "p", Addr: "10.0.0.6:6000", Claimed: topology.RoleStandby}, ""},
		{"port flag wins", KubernetesConfig{Port: 7000}, pod("p", "10.0.0.6", true, nil, pgPort),
			topology.Member{Name: "p", Addr: "10.0.0.6:7000", Claimed: topology.RoleStandby}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Namespace, tc.cfg.Role = "ns", role
			if tc.cfg.PortName == "" {
				tc.cfg.PortName = DefaultPortName
			}
			k := &Kubernetes{cfg: tc.cfg}
			m, why := k.member(tc.pod)
			if m != tc.want || why != tc.why {
				t.Fatalf("member = %+v, %q; want %+v, %q", m, why, tc.want, tc.why)
			}
		})
	}
}

// TestKubernetesFollowsPods runs the source against a real API server,
// with a ServiceAccount token that may only get, list and watch pods in
// the namespace, and checks that each preset's label flip, readiness and
// deletion reach the member list.
func TestKubernetesFollowsPods(t *testing.T) {
	env := kubetest.StartT(t)
	for _, preset := range PresetNames() {
		t.Run(preset, func(t *testing.T) {
			role := RolePresets[preset]
			ns := env.Namespace(t)
			cfg := env.ServiceAccount(t, ns, "pgrouter-proxy", rbacv1.PolicyRule{
				APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}})
			for i, name := range []string{"pg-0", "pg-1", "pg-2"} {
				lbl := map[string]string{"app": "pg", role.Key: role.Standby}
				if i == 0 {
					lbl[role.Key] = role.Primary
				}
				env.CreatePod(t, ns, name, lbl, 5432+i)
				env.SetPodStatus(t, ns, name, kubetest.PodState{IP: "127.0.0.1", Ready: true})
			}
			// Not selected: another app's pod.
			env.CreatePod(t, ns, "other", map[string]string{"app": "web", role.Key: role.Primary}, 80)
			env.SetPodStatus(t, ns, "other", kubetest.PodState{IP: "127.0.0.2", Ready: true})

			src, err := NewKubernetes(KubernetesConfig{Namespace: ns, Selector: "app=pg", Role: role}, cfg, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			w := runSource(t, src)
			w.waitFor(t, "initial", "pg-0=127.0.0.1:5432(primary), pg-1=127.0.0.1:5433(standby), pg-2=127.0.0.1:5434(standby)")

			// The operator fails over: pg-1 becomes primary, pg-0 a standby.
			env.SetLabels(t, ns, "pg-0", kubetest.Label(role.Key, role.Standby))
			began := time.Now()
			env.SetLabels(t, ns, "pg-1", kubetest.Label(role.Key, role.Primary))
			w.waitFor(t, "after the flip", "pg-0=127.0.0.1:5432(standby), pg-1=127.0.0.1:5433(primary), pg-2=127.0.0.1:5434(standby)")
			t.Logf("%s: second label patch sent to member list published: %v", preset, time.Since(began).Round(100*time.Microsecond))

			env.SetPodStatus(t, ns, "pg-2", kubetest.PodState{IP: "127.0.0.1", Ready: false})
			w.waitFor(t, "pg-2 not Ready", "pg-0=127.0.0.1:5432(standby), pg-1=127.0.0.1:5433(primary)")
			env.SetPodStatus(t, ns, "pg-2", kubetest.PodState{IP: "127.0.0.1", Ready: true})
			env.Terminate(t, ns, "pg-0")
			w.waitFor(t, "pg-0 deleting", "pg-1=127.0.0.1:5433(primary), pg-2=127.0.0.1:5434(standby)")
			env.SetLabels(t, ns, "pg-2", map[string]*string{role.Key: nil})
			env.SetLabels(t, ns, "pg-1", map[string]*string{"app": nil})
			w.waitFor(t, "pg-1 unselected, pg-2 unlabelled", "pg-2=127.0.0.1:5434(standby)")
		})
	}
}

// watcher collects what a source publishes.
type watcher struct {
	mu      sync.Mutex
	last    string
	changed chan struct{}
}

func runSource(t *testing.T, src *Kubernetes) *watcher {
	t.Helper()
	w := &watcher{changed: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(ms []topology.Member) {
			w.mu.Lock()
			w.last = memberList(ms).String()
			w.mu.Unlock()
			select {
			case w.changed <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		src.Close()
	})
	return w
}

// waitFor waits until the published list reads want.
func (w *watcher) waitFor(t *testing.T, step, want string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		w.mu.Lock()
		got := w.last
		w.mu.Unlock()
		if got == want {
			return
		}
		select {
		case <-w.changed:
		case <-deadline:
			t.Fatalf("%s: members %q, want %q", step, got, want)
		}
	}
}

func TestPresetNames(t *testing.T) {
	want := []string{"cnpg", "kubeblocks", "kubedb", "pgrouter", "zalando"}
	if got := PresetNames(); !slices.Equal(got, want) {
		t.Fatalf("PresetNames() = %v, want %v", got, want)
	}
}
