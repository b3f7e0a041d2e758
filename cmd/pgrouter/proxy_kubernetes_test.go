package main

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/pgrouter/pgrouter/discovery"
	"github.com/pgrouter/pgrouter/internal/kubetest"
	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// proxyRBAC is the proxy's RBAC as shipped; the tests bind the proxy's
// token to it and to nothing else.
const proxyRBAC = "../../configs/kubernetes/proxy-rbac.yaml"

// TestKubeProxyFollowsLabels runs the proxy binary with --discovery
// kubernetes against a real API server, as the ServiceAccount of
// configs/kubernetes/proxy-rbac.yaml, in front of pods that point at real
// PostgreSQL servers, and plays each operator: for every role preset the
// read-write port follows a label flip, a pod that is not Ready gets no
// sessions, and a pod labelled primary that is in recovery gets no writes.
//
// Pods a and b point at two independent primaries, so that the label alone
// decides which one is the cluster's primary (the other is observed
// primary but claimed standby: it gets nothing); c and d point at hot
// standbys of a.
func TestKubeProxyFollowsLabels(t *testing.T) {
	env := kubetest.StartT(t)
	c1 := sharedCluster(t)
	c2 := pgtest.StartT(t, pgtest.Options{})
	backend := map[string]*pgtest.Node{"pg-a": c1.Nodes[0], "pg-b": c2.Primary(), "pg-c": c1.Nodes[1], "pg-d": c1.Nodes[2]}

	for _, preset := range discovery.PresetNames() {
		t.Run(preset, func(t *testing.T) {
			role := discovery.RolePresets[preset]
			ns := env.Namespace(t)
			env.ApplyFile(t, ns, proxyRBAC, false)
			kc, err := kubetest.WriteKubeconfig(t.TempDir(), "proxy", env.Token(t, ns, "pgrouter-proxy"))
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"pg-a", "pg-b", "pg-c", "pg-d"} {
				value := role.Standby
				if name == "pg-a" {
					value = role.Primary
				}
				env.CreatePod(t, ns, name, map[string]string{"app": "pg", role.Key: value}, backend[name].Port)
				env.SetPodStatus(t, ns, name, kubetest.PodState{IP: "127.0.0.1", Ready: true})
			}
			p := startKubeProxy(t, c1, kc, ns, "--role-preset", preset)
			waitStandby(t, p, "pg-c")
			waitStandby(t, p, "pg-d")
			assertRWPort(t, p, c1, backend["pg-a"].Port)

			// The operator fails over from a to b.
			began := time.Now()
			env.SetLabels(t, ns, "pg-a", kubetest.Label(role.Key, role.Standby))
			env.SetLabels(t, ns, "pg-b", kubetest.Label(role.Key, role.Primary))
			waitPrimary(t, p, "pg-b")
			t.Logf("%s: label flip to the proxy's topology in %v", preset, time.Since(began).Round(time.Millisecond))
			assertRWPort(t, p, c1, backend["pg-b"].Port)

			// c stops being Ready: read-only sessions all go to d.
			env.SetPodStatus(t, ns, "pg-c", kubetest.PodState{IP: "127.0.0.1", Ready: false})
			eventually(t, 10*time.Second, "pg-c gone from the topology", func() error {
				for _, m := range getTopology(t, p.Admin).Members {
					if m.Name == "pg-c" {
						return fmt.Errorf("still there")
					}
				}
				return nil
			})
			for range 4 {
				if port, rec := where(t, mustConnect(t, c1, p.RO, nil)); port != backend["pg-d"].Port || !rec {
					t.Fatalf("read-only session on port %d (recovery %v), want pg-d's %d", port, rec, backend["pg-d"].Port)
				}
			}

			// d is labelled primary but is in recovery, and b loses the
			// label: nobody gets writes.
			env.SetLabels(t, ns, "pg-b", kubetest.Label(role.Key, role.Standby))
			env.SetLabels(t, ns, "pg-d", kubetest.Label(role.Key, role.Primary))
			eventually(t, 10*time.Second, "no primary", func() error {
				doc := getTopology(t, p.Admin)
				if doc.Primary != "" {
					return fmt.Errorf("primary %q", doc.Primary)
				}
				for _, m := range doc.Members {
					if m.Name == "pg-d" && m.Role == "standby" {
						return nil
					}
				}
				return fmt.Errorf("pg-d not a standby: %+v", doc.Members)
			})
			if conn, err := connect(t, p.RW, c1.SuperUser, c1.SuperPassword, nil); err == nil {
				port, rec := where(t, conn)
				conn.Close(t.Context())
				t.Fatalf("read-write session accepted on port %d (recovery %v) with only a recovering pod labelled primary", port, rec)
			}
		})
	}
}

// startKubeProxy runs the proxy with Kubernetes discovery of the pods
// labelled app=pg in ns, reached with the kubeconfig kc, and waits until
// its admin server answers.
func startKubeProxy(t *testing.T, c *pgtest.Cluster, kc, ns string, extra ...string) *proxyProc {
	t.Helper()
	p := newProxyProc(t)
	args := append([]string{"proxy", "--discovery", "kubernetes", "--kubeconfig", kc, "--namespace", ns, "--selector", "app=pg",
		"--listen", p.Any, "--listen-rw", p.RW, "--listen-ro", p.RO, "--admin-listen", p.Admin,
		"--health-user", c.SuperUser, "--health-database", "postgres", "--health-interval", "200ms",
		"--primary-wait", "1s", "--log-level", "debug"}, extra...)
	p.launch(binPath, args, append(os.Environ(), "PGROUTER_HEALTH_PASSWORD="+c.SuperPassword))
	p.waitAdmin()
	return p
}

func waitPrimary(t *testing.T, p *proxyProc, member string) {
	t.Helper()
	eventually(t, 10*time.Second, "primary "+member, func() error {
		if got := getTopology(t, p.Admin).Primary; got != member {
			return fmt.Errorf("primary %q", got)
		}
		return nil
	})
}

// assertRWPort checks that a new read-write session lands on port.
func assertRWPort(t *testing.T, p *proxyProc, c *pgtest.Cluster, port int) {
	t.Helper()
	conn := mustConnect(t, c, p.RW, nil)
	if got, rec := where(t, conn); got != port || rec {
		t.Fatalf("read-write session on port %d (recovery %v), want %d", got, rec, port)
	}
}
