package kubetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func TestKubeEnv(t *testing.T) {
	e := StartT(t)
	ns := e.Namespace(t)
	other := e.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	e.CreatePod(t, ns, "pg-0", map[string]string{"app": "pg"}, 5432)
	e.SetPodStatus(t, ns, "pg-0", PodState{IP: "127.0.0.1", Ready: true})
	e.SetLabels(t, ns, "pg-0", Label("role", "primary"))
	p, err := e.Client.CoreV1().Pods(ns).Get(ctx, "pg-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.PodIP != "127.0.0.1" || p.Labels["role"] != "primary" || p.Labels["app"] != "pg" {
		t.Fatalf("pod after patches: ip %q labels %v", p.Status.PodIP, p.Labels)
	}
	ready := false
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" && c.Status == "True" {
			ready = true
		}
	}
	if !ready {
		t.Fatalf("pod not Ready: %+v", p.Status.Conditions)
	}
	e.SetPodStatus(t, ns, "pg-0", PodState{IP: "127.0.0.1", Ready: false})
	e.SetLabels(t, ns, "pg-0", map[string]*string{"role": nil})
	if p, err = e.Client.CoreV1().Pods(ns).Get(ctx, "pg-0", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Labels["role"]; ok || p.Status.ContainerStatuses[0].Ready {
		t.Fatalf("pod after removing the label and readiness: labels %v, statuses %+v", p.Labels, p.Status.ContainerStatuses)
	}

	e.Terminate(t, ns, "pg-0")
	if p, err = e.Client.CoreV1().Pods(ns).Get(ctx, "pg-0", metav1.GetOptions{}); err != nil || p.DeletionTimestamp == nil {
		t.Fatalf("terminated pod: %v, deletionTimestamp %v", err, p.DeletionTimestamp)
	}

	// A ServiceAccount sees what its Role grants, in its namespace only.
	cfg := e.ServiceAccount(t, ns, "reader", rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}})
	sa := kubernetes.NewForConfigOrDie(cfg)
	if _, err := sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("list pods as the ServiceAccount: %v", err)
	}
	if _, err := sa.CoreV1().Pods(other).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list pods in another namespace: %v, want forbidden", err)
	}
	if err := sa.CoreV1().Pods(ns).Delete(ctx, "pg-0", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("delete a pod: %v, want forbidden", err)
	}
	rev, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: "watch", Resource: "pods"}}}, metav1.CreateOptions{})
	if err != nil || !rev.Status.Allowed {
		t.Fatalf("self access review: %v %+v", err, rev)
	}
	// Apply: a dry run stores nothing and strict validation refuses an
	// unknown field.
	svc := "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports: [{port: 80}]\n"
	if _, err := e.Apply(ns, []byte(svc), true); err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if _, err := e.Client.CoreV1().Services(ns).Get(ctx, "s", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry run stored the Service: %v", err)
	}
	if _, err := e.Apply(ns, []byte(svc+"  portz: []\n"), true); err == nil || !strings.Contains(err.Error(), "portz") {
		t.Fatalf("unknown field accepted: %v", err)
	}
	dir := t.TempDir()
	path, err := WriteKubeconfig(dir, "reader", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubeconfig %s", path)
}

func TestKubeBinDirChecksBinaries(t *testing.T) {
	t.Setenv(BinDirEnv, t.TempDir())
	if _, err := BinDir(); err == nil {
		t.Fatal("BinDir accepted a directory without binaries")
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a testing.TB that records Fatalf and Skipf instead of
// ending the test.
type recorder struct {
	testing.TB
	fatal, skip bool
}

func (r *recorder) Fatalf(string, ...any) { r.fatal = true }
func (r *recorder) Skipf(string, ...any)  { r.skip = true }

func TestKubeMissingBinariesSkipOrFailUnderCI(t *testing.T) {
	t.Setenv(BinDirEnv, "")
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		r := &recorder{TB: t}
		RequireBinaries(r)
		if r.fatal != (ci != "") || r.skip != (ci == "") {
			t.Errorf("CI=%q: fatal %v, skip %v", ci, r.fatal, r.skip)
		}
	}
}
