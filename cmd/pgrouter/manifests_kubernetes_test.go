package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"

	"github.com/pgrouter/pgrouter/configs"
	"github.com/pgrouter/pgrouter/internal/kubetest"
)

const manifestDir = "../../configs/kubernetes"

// manifests lists the object files of configs/kubernetes (all but the
// kustomization) and checks that the kustomization lists exactly them.
func manifests(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return filepath.Base(f) == "kustomization.yaml" })
	k, err := os.ReadFile(filepath.Join(manifestDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, m := range regexp.MustCompile(`(?m)^\s+-\s+(\S+\.yaml)\s*$`).FindAllStringSubmatch(string(k), -1) {
		listed = append(listed, filepath.Join(manifestDir, m[1]))
	}
	slices.Sort(listed)
	if !slices.Equal(listed, files) {
		t.Errorf("kustomization.yaml lists %v, the directory holds %v", listed, files)
	}
	return files
}

// TestKubeManifestsDryRun has the API server validate, default and admit
// every object of configs/kubernetes (a server-side dry run, with strict
// field validation, so an unknown or misspelt field fails).
func TestKubeManifestsDryRun(t *testing.T) {
	env := kubetest.StartT(t)
	ns := env.Namespace(t)
	kinds := map[string]int{}
	for _, f := range manifests(t) {
		for _, o := range env.ApplyFile(t, ns, f, true) {
			kinds[o.GetKind()]++
		}
	}
	t.Logf("accepted in a dry run: %v", kinds)
	for _, k := range []string{"Deployment", "StatefulSet", "Service", "Role", "RoleBinding", "ServiceAccount"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in %s", k, manifestDir)
		}
	}
}

// TestKubeManifestRBAC applies the RBAC of configs/kubernetes, mints a
// token for each ServiceAccount and asks the API server what it may do:
// the proxy's (standalone and sidecar) may read pods in its namespace and
// nothing more; the agent's may do all that the agents' test
// (TestKubernetesAgentFailover) runs them with. The proxy also runs as its
// ServiceAccount in TestKubeProxyFollowsLabels.
func TestKubeManifestRBAC(t *testing.T) {
	env := kubetest.StartT(t)
	ns := env.Namespace(t)
	other := env.Namespace(t)
	for _, f := range []string{"proxy-rbac.yaml", "agent-rbac.yaml", "app-with-proxy-sidecar.yaml"} {
		env.ApplyFile(t, ns, filepath.Join(manifestDir, f), false)
	}
	type access struct {
		group, resource, verb string
		namespace             string
		allowed               bool
	}
	readPods := func(nsName string, allowed bool) []access {
		var as []access
		for _, v := range []string{"get", "list", "watch"} {
			as = append(as, access{"", "pods", v, nsName, allowed})
		}
		return as
	}
	proxyWants := append(readPods(ns, true), readPods(other, false)...)
	proxyWants = append(proxyWants, access{"", "pods", "patch", ns, false}, access{"", "secrets", "get", ns, false},
		access{"coordination.k8s.io", "leases", "get", ns, false})
	var agentWants []access
	for _, r := range agentKubeRules {
		for _, v := range r.Verbs {
			agentWants = append(agentWants, access{r.APIGroups[0], r.Resources[0], v, ns, true}, access{r.APIGroups[0], r.Resources[0], v, other, false})
		}
	}
	agentWants = append(agentWants, access{"", "pods", "delete", ns, false}, access{"", "secrets", "get", ns, false})

	for _, tc := range []struct {
		sa    string
		wants []access
	}{{"pgrouter-proxy", proxyWants}, {"myapp", proxyWants}, {"pgrouter-agent", agentWants}} {
		t.Run(tc.sa, func(t *testing.T) {
			cs := kubernetes.NewForConfigOrDie(env.Token(t, ns, tc.sa))
			for _, a := range tc.wants {
				if got := mayDo(t, cs, a.group, a.resource, a.verb, a.namespace); got != a.allowed {
					t.Errorf("%s may %s %s.%s in %s: %v, want %v", tc.sa, a.verb, a.resource, a.group, a.namespace, got, a.allowed)
				}
			}
		})
	}
}

func mayDo(t *testing.T, cs kubernetes.Interface, group, resource, verb, ns string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: verb, Group: group, Resource: resource}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Status.Allowed
}

// TestKubeManifestArgs parses the arguments of every pgrouter container in
// configs/kubernetes with pgrouter's own flags and validates the result,
// so a renamed flag or an invalid value fails here, not in a cluster.
func TestKubeManifestArgs(t *testing.T) {
	t.Setenv("PGROUTER_HEALTH_PASSWORD", "x")
	t.Setenv("PGROUTER_SUPERUSER_PASSWORD", "x")
	t.Setenv("PGROUTER_REPLICATION_PASSWORD", "x")
	seen := map[string]int{}
	for _, f := range manifests(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := kubetest.Decode(data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, o := range objs {
			for _, c := range podContainers(o) {
				args := c.args
				if len(c.command) > 0 && strings.HasSuffix(c.command[0], "/pgrouter") {
					args = append(c.command[1:], args...)
				} else if !strings.HasPrefix(c.image, "pgrouter") {
					continue
				}
				what := filepath.Base(f) + " " + o.GetName() + "/" + c.name
				args = expandEnv(args, c.env)
				if len(args) == 0 {
					t.Fatalf("%s: no arguments", what)
				}
				fs := pflag.NewFlagSet(args[0], pflag.ContinueOnError)
				switch args[0] {
				case "proxy":
					fl := configs.BindProxyFlags(fs)
					if err := fs.Parse(args[1:]); err != nil {
						t.Fatalf("%s: %v", what, err)
					}
					if _, err := fl.Resolve(); err != nil {
						t.Errorf("%s: %v", what, err)
					}
				case "agent":
					fl := configs.BindAgentFlags(fs)
					if err := fs.Parse(args[1:]); err != nil {
						t.Fatalf("%s: %v", what, err)
					}
					if _, err := fl.Resolve(); err != nil {
						t.Errorf("%s: %v", what, err)
					}
				case "install-binary":
					if len(args) != 2 {
						t.Errorf("%s: install-binary takes one directory: %v", what, args)
					}
				default:
					t.Errorf("%s: unknown subcommand %q", what, args[0])
				}
				seen[args[0]]++
			}
		}
	}
	if seen["proxy"] < 2 || seen["agent"] < 1 || seen["install-binary"] < 1 {
		t.Fatalf("pgrouter containers found: %v", seen)
	}
}

type container struct {
	name, image   string
	command, args []string
	env           map[string]string // fieldRef values stand in as <path>
}

// podContainers returns the containers and init containers of a workload.
func podContainers(o *unstructured.Unstructured) []container {
	spec, ok, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
	if !ok {
		return nil
	}
	var out []container
	for _, key := range []string{"initContainers", "containers"} {
		list, _, _ := unstructured.NestedSlice(spec, key)
		for _, item := range list {
			m, _ := item.(map[string]any)
			c := container{env: map[string]string{}}
			c.name, _, _ = unstructured.NestedString(m, "name")
			c.image, _, _ = unstructured.NestedString(m, "image")
			c.command, _, _ = unstructured.NestedStringSlice(m, "command")
			c.args, _, _ = unstructured.NestedStringSlice(m, "args")
			envs, _, _ := unstructured.NestedSlice(m, "env")
			for _, e := range envs {
				em, _ := e.(map[string]any)
				name, _, _ := unstructured.NestedString(em, "name")
				if v, ok, _ := unstructured.NestedString(em, "value"); ok {
					c.env[name] = v
				} else if p, ok, _ := unstructured.NestedString(em, "valueFrom", "fieldRef", "fieldPath"); ok {
					c.env[name] = "x-" + strings.ReplaceAll(p, ".", "-")
				}
			}
			out = append(out, c)
		}
	}
	return out
}

// expandEnv replaces $(VAR) as the kubelet does.
func expandEnv(args []string, env map[string]string) []string {
	re := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = re.ReplaceAllStringFunc(a, func(m string) string {
			if v, ok := env[m[2:len(m)-1]]; ok {
				return v
			}
			return m
		})
	}
	return out
}
