package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// opTimeout bounds each helper's API calls.
const opTimeout = 15 * time.Second

func opContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

// Namespace creates a fresh namespace named t-<random> and returns its
// name. It is never deleted: without kube-controller-manager a deleted
// namespace stays Terminating, and Stop removes everything anyway.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	ctx, cancel := opContext()
	defer cancel()
	ns, err := e.Client.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "t-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: create namespace: %v", err)
	}
	return ns.Name
}

// ServiceAccount creates the ServiceAccount ns/name, a Role with rules in
// ns and a RoleBinding of one to the other, and returns a config that
// authenticates as that ServiceAccount. With no rules it only creates the
// account (the test applies its own RBAC, e.g. from configs/kubernetes).
func (e *Env) ServiceAccount(t testing.TB, ns, name string, rules ...rbacv1.PolicyRule) *rest.Config {
	t.Helper()
	ctx, cancel := opContext()
	defer cancel()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if _, err := e.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: create service account %s/%s: %v", ns, name, err)
	}
	if len(rules) > 0 {
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Rules: rules}
		if _, err := e.Client.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatalf("kubetest: create role %s/%s: %v", ns, name, err)
		}
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
		}
		if _, err := e.Client.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatalf("kubetest: create role binding %s/%s: %v", ns, name, err)
		}
	}
	return e.Token(t, ns, name)
}

// Token mints a one-hour token for the existing ServiceAccount ns/name
// (the TokenRequest API, as the kubelet does for a pod) and returns a
// config that authenticates with it. RBAC applies to it in full.
func (e *Env) Token(t testing.TB, ns, name string) *rest.Config {
	t.Helper()
	ctx, cancel := opContext()
	defer cancel()
	exp := int64(3600)
	tr, err := e.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: token for %s/%s: %v", ns, name, err)
	}
	cfg := rest.AnonymousClientConfig(e.Config)
	cfg.BearerToken = tr.Status.Token
	return cfg
}

// PodPort is the name of the container port CreatePod declares: the
// default port name pgrouter's Kubernetes discovery looks for.
const PodPort = "postgresql"

// CreatePod creates a Pending pod ns/name with labels and one container
// "postgres" whose port named PodPort is port (0: no ports). Nothing runs
// it: SetPodStatus plays the kubelet.
func (e *Env) CreatePod(t testing.TB, ns, name string, labels map[string]string, port int) *corev1.Pod {
	t.Helper()
	ctx, cancel := opContext()
	defer cancel()
	c := corev1.Container{Name: "postgres", Image: "postgres:15"}
	if port > 0 {
		c.Ports = []corev1.ContainerPort{{Name: PodPort, ContainerPort: int32(port), Protocol: corev1.ProtocolTCP}}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{c}},
	}
	out, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: create pod %s/%s: %v", ns, name, err)
	}
	return out
}

// PodState is what SetPodStatus reports for a pod, as a kubelet would.
type PodState struct {
	// IP is the pod IP ("" leaves the pod without one). The API server
	// accepts loopback addresses on pods (not in EndpointSlices).
	IP string
	// Ready sets the Ready and ContainersReady conditions and the
	// container's ready flag.
	Ready bool
}

// SetPodStatus patches ns/name's status: phase Running, the IP, the
// conditions and the container status. It is a JSON merge patch: a
// strategic merge patch merges podIPs by ip and is refused.
func (e *Env) SetPodStatus(t testing.TB, ns, name string, s PodState) {
	t.Helper()
	cond := corev1.ConditionFalse
	if s.Ready {
		cond = corev1.ConditionTrue
	}
	now := metav1.Now()
	status := map[string]any{
		"phase": corev1.PodRunning,
		"conditions": []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: cond, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: cond, LastTransitionTime: now},
		},
		"containerStatuses": []corev1.ContainerStatus{{
			Name: "postgres", Image: "postgres:15", ImageID: "postgres:15", Ready: s.Ready, Started: &s.Ready,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	if s.IP != "" {
		status["podIP"] = s.IP
		status["podIPs"] = []corev1.PodIP{{IP: s.IP}}
	} else {
		status["podIP"] = nil
		status["podIPs"] = nil
	}
	e.patch(t, ns, name, map[string]any{"status": status}, "status")
}

// SetLabels changes ns/name's labels: each key is set to its value, or
// removed when the value is nil.
func (e *Env) SetLabels(t testing.TB, ns, name string, labels map[string]*string) {
	t.Helper()
	e.patch(t, ns, name, map[string]any{"metadata": map[string]any{"labels": labels}}, "")
}

// Label is a helper for SetLabels: one key set to value.
func Label(key, value string) map[string]*string { return map[string]*string{key: &value} }

func (e *Env) patch(t testing.TB, ns, name string, body any, sub string) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	ctx, cancel := opContext()
	defer cancel()
	var subs []string
	if sub != "" {
		subs = []string{sub}
	}
	if _, err := e.Client.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{}, subs...); err != nil {
		t.Fatalf("kubetest: patch pod %s/%s %s: %v", ns, name, sub, fmt.Sprint(err))
	}
}

// Terminate leaves ns/name being deleted: it gets a finalizer nobody
// removes, then a delete, so it keeps a DeletionTimestamp (a pod never
// scheduled to a node is otherwise deleted at once).
func (e *Env) Terminate(t testing.TB, ns, name string) {
	t.Helper()
	e.patch(t, ns, name, map[string]any{"metadata": map[string]any{"finalizers": []string{"pgrouter.io/test"}}}, "")
	ctx, cancel := opContext()
	defer cancel()
	if err := e.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("kubetest: delete pod %s/%s: %v", ns, name, err)
	}
}
