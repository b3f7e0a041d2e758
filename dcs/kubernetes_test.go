package dcs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pgrouter/pgrouter/internal/kubetest"
)

func lease(holder string, seconds int32, ann map[string]string) *coordinationv1.Lease {
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "pgrouter-t", ResourceVersion: "7", Annotations: ann}}
	if holder != "" {
		l.Spec.HolderIdentity = &holder
	}
	if seconds > 0 {
		l.Spec.LeaseDurationSeconds = &seconds
	}
	rt := metav1.NewMicroTime(time.Unix(100, 123456000))
	l.Spec.RenewTime = &rt
	return l
}

func TestActiveHolder(t *testing.T) {
	seen := time.Unix(1000, 0)
	tests := []struct {
		name    string
		l       *coordinationv1.Lease
		elapsed time.Duration
		want    string
	}{
		{"no holder", lease("", 4, nil), 0, ""},
		{"fresh", lease("a", 4, nil), 3999 * time.Millisecond, "a"},
		{"expired at its duration", lease("a", 4, nil), 4 * time.Second, ""},
		{"its own duration, not the reader's", lease("a", 10, nil), 9 * time.Second, "a"},
		{"no duration: the reader's TTL", lease("a", 0, nil), 2 * time.Second, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := activeHolder(tc.l, seen, seen.Add(tc.elapsed), 2*time.Second); got != tc.want {
				t.Errorf("activeHolder = %q, want %q", got, tc.want)
			}
		})
	}
}

// The expiry clock restarts only on a new renewal: a new renewTime, a new
// holder or a new holding (token), not on other writes to the Lease.
func TestRenewalID(t *testing.T) {
	base := lease("a", 4, map[string]string{annToken: "t1", annStatus: "{}"})
	same := base.DeepCopy()
	same.Annotations[annStatus] = `{"lsn":5}`
	same.Annotations[annSwitchover] = `{}`
	same.ResourceVersion = "8"
	if renewalID(base) != renewalID(same) {
		t.Error("a write of the records changed the renewal")
	}
	for name, f := range map[string]func(*coordinationv1.Lease){
		"renewTime": func(l *coordinationv1.Lease) {
			rt := metav1.NewMicroTime(l.Spec.RenewTime.Add(time.Microsecond))
			l.Spec.RenewTime = &rt
		},
		"holder": func(l *coordinationv1.Lease) { h := "b"; l.Spec.HolderIdentity = &h },
		"token":  func(l *coordinationv1.Lease) { l.Annotations[annToken] = "t2" },
	} {
		l := base.DeepCopy()
		f(l)
		if renewalID(l) == renewalID(base) {
			t.Errorf("a new %s is not a new renewal", name)
		}
	}
}

// A stale copy (a cached Lease, a late watch event) never restarts the
// expiry clock.
func TestObserveIgnoresStaleCopies(t *testing.T) {
	now := time.Unix(1000, 0)
	k := &Kubernetes{now: func() time.Time { return now }, ttl: 4 * time.Second}
	old := lease("a", 4, map[string]string{annToken: "t1"})
	newer := old.DeepCopy()
	newer.ResourceVersion = "9"
	rt := metav1.NewMicroTime(old.Spec.RenewTime.Add(time.Second))
	newer.Spec.RenewTime = &rt
	k.observe(newer)
	now = now.Add(3 * time.Second)
	k.observe(old)
	if got := k.observe(newer); !got.Equal(time.Unix(1000, 0)) {
		t.Errorf("seen at %v after a stale copy, want the first sighting", got)
	}
	now = now.Add(time.Second)
	if h := k.holder(newer); h != "" {
		t.Errorf("holder %q after a whole lease duration", h)
	}
}

// Expiry is counted on the reader's clock from when it saw the renewal,
// never from renewTime, which is the leader's clock: a leader whose clock
// is an hour behind is not taken over early, nor one an hour ahead kept.
func TestExpiryIgnoresTheLeadersClock(t *testing.T) {
	now := time.Unix(5000, 0)
	for _, skew := range []time.Duration{-time.Hour, 0, time.Hour} {
		k := &Kubernetes{now: func() time.Time { return now }, ttl: 4 * time.Second}
		l := lease("a", 4, map[string]string{annToken: "t"})
		rt := metav1.NewMicroTime(now.Add(skew))
		l.Spec.RenewTime = &rt
		if h := k.holder(l); h != "a" {
			t.Errorf("skew %v: a renewal just seen is expired", skew)
		}
		now = now.Add(4 * time.Second)
		if h := k.holder(l); h != "" {
			t.Errorf("skew %v: a renewal seen a lease duration ago is still held by %q", skew, h)
		}
	}
}

func TestRoleLabelValue(t *testing.T) {
	tests := []struct {
		role    string
		holding bool
		last    string
		want    string
	}{
		{RolePrimary, true, "", RoleLabelPrimary},
		{RolePrimary, false, RoleLabelPrimary, ""}, // a primary without the lease gets no traffic
		{RoleStandby, false, "", RoleLabelStandby},
		{RoleStandby, true, RoleLabelStandby, RoleLabelStandby}, // the leader while it promotes
		{RoleStopped, true, RoleLabelPrimary, ""},
		{RoleStopped, false, RoleLabelStandby, ""},
		{RoleUnknown, false, RoleLabelStandby, RoleLabelStandby}, // a busy standby keeps its label
		{RoleUnknown, true, RoleLabelPrimary, RoleLabelPrimary},
		{RoleUnknown, false, RoleLabelPrimary, ""},
		{RoleUnknown, false, "", ""},
		{RoleUnknown, false, "-", ""},
	}
	for _, tc := range tests {
		if got := roleLabelValue(tc.role, tc.holding, tc.last); got != tc.want {
			t.Errorf("roleLabelValue(%q, %v, %q) = %q, want %q", tc.role, tc.holding, tc.last, got, tc.want)
		}
	}
}

// The bootstrapping marker counts only while its member holds the lease.
func TestDecodeLeaseBootstrapMarker(t *testing.T) {
	k := &Kubernetes{now: time.Now, ttl: 4 * time.Second}
	var c Cluster
	k.decodeLease(lease("a", 4, map[string]string{annInitialize: bootstrapPrefix + "a"}), &c)
	if c.Leader != "a" || c.Bootstrapping != "a" || c.Initialized != "" {
		t.Errorf("live marker: %+v", c)
	}
	c = Cluster{}
	k.decodeLease(lease("", 4, map[string]string{annInitialize: bootstrapPrefix + "a", annSync: `{"leader":"a"}`}), &c)
	if c.Bootstrapping != "" || c.Initialized != "" || c.Sync.Leader != "a" {
		t.Errorf("marker of a released lease: %+v", c)
	}
}

func TestNewKubernetesValidates(t *testing.T) {
	cs := kubernetes.New(nil)
	ok := KubernetesConfig{Client: cs, Namespace: "db", Scope: "pg", Name: "pg-0", PodName: "pg-0", TTL: 4 * time.Second}
	if _, err := NewKubernetes(ok); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(*KubernetesConfig){
		"upper-case scope": func(c *KubernetesConfig) { c.Scope = "PG" },
		"underscore scope": func(c *KubernetesConfig) { c.Scope = "p_g" },
		"no pod":           func(c *KubernetesConfig) { c.PodName = "" },
		"bad namespace":    func(c *KubernetesConfig) { c.Namespace = "a.b" },
		"fractional ttl":   func(c *KubernetesConfig) { c.TTL = 2500 * time.Millisecond },
		"no client":        func(c *KubernetesConfig) { c.Client = nil },
	} {
		c := ok
		f(&c)
		if _, err := NewKubernetes(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// ---- against a real API server (internal/kubetest) ----

// agentRBAC is the agent's RBAC as shipped: the store runs with a token
// bound to it and to nothing else.
const agentRBAC = "../configs/kubernetes/agent-rbac.yaml"

type kubeFixture struct {
	env *kubetest.Env
	ns  string
	cs  kubernetes.Interface // the agent's ServiceAccount
}

func startKube(t *testing.T) *kubeFixture {
	t.Helper()
	env := kubetest.StartT(t)
	ns := env.Namespace(t)
	env.ApplyFile(t, ns, agentRBAC, false)
	cfg := env.Token(t, ns, "pgrouter-agent")
	cfg.QPS = -1
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &kubeFixture{env: env, ns: ns, cs: cs}
}

// store returns a store for member name on pod name (a read-only one for
// "").
func (f *kubeFixture) store(t *testing.T, scope, name string) *Kubernetes {
	t.Helper()
	s, err := NewKubernetes(KubernetesConfig{Client: f.cs, Namespace: f.ns, Scope: scope, Name: name, PodName: name, TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// loadCluster reads the whole cluster as s sees it.
func loadCluster(t *testing.T, s Store) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestKubernetesLease is TestEtcdLease on a Lease: the bootstrap race, one
// winner, renewal, leader-only writes, expiry without renewal and the
// old leader's writes refused after it, adoption after a restart, release
// and handover; and a bootstrap that died with its lease.
func TestKubernetesLease(t *testing.T) {
	f := startKube(t)
	ctx := context.Background()
	a, b := f.store(t, "t", "a"), f.store(t, "t", "b")

	checkBootstrap(t, ctx, a, b)
	if err := b.Acquire(ctx, false); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("second acquire = %v, want ErrNotLeader", err)
	}
	// Renewing keeps it past the TTL, also with other writes in between.
	for i := range 6 {
		if err := a.Renew(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.SetStatus(ctx, Status{Leader: "a", LSN: uint64(i)}); err != nil {
			t.Fatal(err)
		}
		if c := loadCluster(t, b); c.Leader != "a" {
			t.Fatalf("renewed leader lost: %+v", c)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Without renewal the lease expires for b, which takes it; a's
	// leader-only writes and renewals are then refused.
	waitFor(t, 10*time.Second, "lease expiry", func() error {
		if c := loadCluster(t, b); c.Leader != "" {
			return fmt.Errorf("leader still %q", c.Leader)
		}
		return nil
	})
	if err := b.Acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := a.SetStatus(ctx, Status{Leader: "a"}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("old leader's write after the takeover = %v, want ErrNotLeader", err)
	}
	if err := a.Renew(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("renew after takeover = %v, want ErrLost", err)
	}
	if c := loadCluster(t, a); c.Leader != "b" || c.Status.Leader != "a" || c.Status.LSN != 5 {
		t.Fatalf("after takeover: leader %q status %+v", c.Leader, c.Status)
	}
	// A restarted b (new Store, same name) adopts its own lease; the old
	// holding is void.
	b2 := f.store(t, "t", "b")
	if err := b2.Acquire(ctx, false); err != nil {
		t.Fatalf("adopt own lease: %v", err)
	}
	if err := b.Renew(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("old holding after adoption: renew = %v, want ErrLost", err)
	}
	if err := b.SetSync(ctx, Sync{Leader: "b"}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("old holding after adoption: write = %v, want ErrNotLeader", err)
	}
	if err := b2.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if c := checkHandoverAndRelease(t, ctx, b2, a, b); c.Initialized != "42" {
		t.Fatalf("after release: %+v", c)
	}
	l, err := f.cs.CoordinationV1().Leases(f.ns).Get(ctx, LeaseName("t"), metav1.GetOptions{})
	if err != nil || l.Spec.LeaseTransitions == nil || *l.Spec.LeaseTransitions != 3 {
		t.Fatalf("lease transitions: %+v %v", l.Spec, err)
	}

	// A bootstrap whose agent died frees the cluster when its lease
	// expires: another member may bootstrap.
	x, y := f.store(t, "boot", "x"), f.store(t, "boot", "y")
	if err := x.Acquire(ctx, true); err != nil {
		t.Fatal(err)
	}
	if c := loadCluster(t, y); c.Bootstrapping != "x" {
		t.Fatalf("bootstrapping: %+v", c)
	}
	waitFor(t, 10*time.Second, "bootstrap marker expiry", func() error {
		if c := loadCluster(t, y); c.Bootstrapping != "" || c.Leader != "" {
			return fmt.Errorf("%+v", c)
		}
		return nil
	})
	if err := y.Acquire(ctx, true); err != nil {
		t.Fatalf("bootstrap after a dead one: %v", err)
	}
	if err := x.SetInitialized(ctx, "1"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("dead bootstrap's write = %v", err)
	}
}

// TestKubernetesMembersAndWatch: member records and role labels on the
// pods, their expiry when the agent stops publishing, and the watches:
// control changes only, or members too, and the lease's expiry.
func TestKubernetesMembersAndWatch(t *testing.T) {
	f := startKube(t)
	f.env.CreatePod(t, f.ns, "a", map[string]string{"app": "pg"}, 5432)
	// b's agent died while it led: its pod still says primary.
	f.env.CreatePod(t, f.ns, "b", map[string]string{"app": "pg", ScopeLabel: "w", RoleLabel: RoleLabelPrimary}, 5432)
	a, reader := f.store(t, "w", "a"), f.store(t, "w", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	control, all := make(chan struct{}, 1000), make(chan struct{}, 1000)
	done := make(chan struct{}, 2)
	go func() { _ = reader.Watch(ctx, false, func() { control <- struct{}{} }); done <- struct{}{} }()
	go func() { _ = reader.Watch(ctx, true, func() { all <- struct{}{} }); done <- struct{}{} }()
	time.Sleep(500 * time.Millisecond) // let both watches start
	drain := func(ch chan struct{}) {
		for {
			select {
			case <-ch:
			default:
				return
			}
		}
	}
	drain(control)
	drain(all)
	pod := func() (labels, ann map[string]string) {
		p, err := f.env.Client.CoreV1().Pods(f.ns).Get(ctx, "a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Labels, p.Annotations
	}

	m := Member{ConnAddr: "10.0.0.5:5432", Role: RoleStandby, ReceivedLSN: 7}
	if err := a.PublishMember(ctx, m, false); err != nil {
		t.Fatal(err)
	}
	if c := loadCluster(t, reader); c.Members["a"].ReceivedLSN != 7 || c.Members["a"].Name != "a" || c.Members["a"].Rev == 0 {
		t.Fatalf("members %+v", c.Members)
	}
	labels, ann := pod()
	var rec Member
	if err := json.Unmarshal([]byte(ann[MemberAnnotation]), &rec); err != nil || rec.ConnAddr != m.ConnAddr {
		t.Fatalf("annotation %q: %v", ann[MemberAnnotation], err)
	}
	if labels[RoleLabel] != RoleLabelStandby || labels[ScopeLabel] != "w" || labels["app"] != "pg" {
		t.Fatalf("labels %v", labels)
	}
	select {
	case <-all:
	case <-time.After(5 * time.Second):
		t.Fatal("member watch did not fire")
	}
	select {
	case <-control:
		t.Fatal("control watch fired for a member record")
	case <-time.After(300 * time.Millisecond):
	}
	// The leader's pod is labelled primary once it publishes as primary,
	// and the label goes as soon as it releases the lease. Taking the
	// lease removes the stale primary label of b.
	if err := a.Acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	if p, err := f.env.Client.CoreV1().Pods(f.ns).Get(ctx, "b", metav1.GetOptions{}); err != nil || p.Labels[RoleLabel] != "" || p.Labels["app"] != "pg" {
		t.Fatalf("stale primary's labels after another member took the lease: %v %v", p.Labels, err)
	}
	select {
	case <-control:
	case <-time.After(5 * time.Second):
		t.Fatal("control watch did not fire for the leader")
	}
	m.Role = RolePrimary
	if err := a.PublishMember(ctx, m, false); err != nil {
		t.Fatal(err)
	}
	if labels, _ := pod(); labels[RoleLabel] != RoleLabelPrimary {
		t.Fatalf("leader's labels %v", labels)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if labels, _ := pod(); labels[RoleLabel] != "" {
		t.Fatalf("labels after release %v", labels)
	}
	// A primary that publishes without the lease is not labelled primary.
	if err := a.PublishMember(ctx, m, false); err != nil {
		t.Fatal(err)
	}
	if labels, _ := pod(); labels[RoleLabel] != "" {
		t.Fatalf("primary without the lease: labels %v", labels)
	}
	// The watch wakes when a lease nobody renews expires.
	if err := a.Acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	drain(control)
	select {
	case <-control:
	case <-time.After(5 * time.Second):
		t.Fatal("control watch did not fire when the lease expired")
	}
	if c := loadCluster(t, reader); c.Leader != "" {
		t.Fatalf("leader %q after expiry", c.Leader)
	}
	// An agent that stops publishing disappears after the TTL.
	waitFor(t, 10*time.Second, "member record expiry", func() error {
		if c := loadCluster(t, reader); len(c.Members) != 0 {
			return fmt.Errorf("members %v", c.Members)
		}
		return nil
	})
	// Publishing again brings it back; DeleteMember removes it and its
	// role label.
	m.Role = RoleStandby
	if err := a.PublishMember(ctx, m, false); err != nil {
		t.Fatal(err)
	}
	if c := loadCluster(t, reader); c.Members["a"].ConnAddr != m.ConnAddr {
		t.Fatalf("republished: %+v", c.Members)
	}
	if err := a.DeleteMember(ctx); err != nil {
		t.Fatal(err)
	}
	labels, ann = pod()
	if _, ok := ann[MemberAnnotation]; ok || labels[RoleLabel] != "" {
		t.Fatalf("after DeleteMember: labels %v annotations %v", labels, ann)
	}
	if c := loadCluster(t, reader); len(c.Members) != 0 {
		t.Fatalf("members after delete: %v", c.Members)
	}
	cancel()
	<-done
	<-done
}
