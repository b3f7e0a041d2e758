// The Store on the Kubernetes API.
//
// RBAC the agent needs in its namespace (a Role bound to the agent's
// ServiceAccount; configs/kubernetes keeps the manifest):
//
//	apiGroups: ["coordination.k8s.io"]  resources: ["leases"]
//	    verbs: ["get", "list", "watch", "create", "update", "patch"]
//	apiGroups: [""]  resources: ["pods"]
//	    verbs: ["get", "list", "watch", "patch"]
//
// The Store itself uses get, watch, create and update on leases and get,
// list, watch and patch on pods; list and patch on leases are what
// client-go's leader election asks for, kept so one Role serves both.
// Pods are patched on the agent's own pod (record, labels) and, by the
// leader, to remove a stale primary label from another member's pod.
//
// Objects, in the agent's namespace:
//
//	Lease pgrouter-<scope>   the leader lease: spec.holderIdentity is the
//	                         leader's member name; annotations hold the
//	                         cluster-wide records (initialize, sync, status,
//	                         switchover) and the holder's token
//	each agent's own Pod     annotation pgrouter.io/member (JSON Member),
//	                         labels pgrouter.io/scope=<scope> (so members
//	                         can be listed) and pgrouter.io/role=primary|
//	                         standby (for Services and the proxy's
//	                         --role-preset pgrouter)
//
// Every write to the Lease is an update conditional on the resourceVersion
// read, so the API server serializes them as etcd's transactions would:
// a leader-only write first checks the holder and the token, and fails
// with a conflict if anyone (a follower taking over) changed the Lease in
// between.

package dcs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

var _ Store = (*Kubernetes)(nil)

// Labels and annotations the Kubernetes store writes. RoleLabel is the
// public one: Services and the proxy's discovery (--role-preset pgrouter)
// select the primary with pgrouter.io/role=primary.
const (
	// RoleLabel on an agent's pod is RoleLabelPrimary while its member
	// holds the leader lease and runs as primary, RoleLabelStandby while it
	// runs as a standby, and absent otherwise (stopped, fenced, unknown).
	RoleLabel        = "pgrouter.io/role"
	RoleLabelPrimary = "primary"
	RoleLabelStandby = "standby"
	// ScopeLabel on an agent's pod names its cluster; the store lists the
	// members by it.
	ScopeLabel = "pgrouter.io/scope"
	// MemberAnnotation on an agent's pod is its JSON Member record.
	MemberAnnotation = "pgrouter.io/member"

	annToken      = "pgrouter.io/leader-token"
	annInitialize = "pgrouter.io/initialize"
	annSync       = "pgrouter.io/sync"
	annStatus     = "pgrouter.io/status"
	annSwitchover = "pgrouter.io/switchover"
)

// LeaseName is the name of the Lease that holds scope's leader lease.
func LeaseName(scope string) string { return "pgrouter-" + scope }

// KubernetesConfig says how to reach the API server and who this member is.
type KubernetesConfig struct {
	// Client talks to the API server.
	Client kubernetes.Interface
	// Namespace holds the Lease and the members' pods.
	Namespace string
	// Scope names the cluster: Lease pgrouter-<scope>, label
	// pgrouter.io/scope=<scope>.
	Scope string
	// Name is this member; empty for a read-only Store (discovery).
	Name string
	// PodName is this member's own pod, which carries its record and role
	// label. Required with Name.
	PodName string
	// TTL is the lease duration and the member records' lifetime, in whole
	// seconds (a Lease counts whole seconds).
	TTL time.Duration
	// Log receives the store's rare warnings; nil logs nothing.
	Log *zap.Logger
}

// Kubernetes is the Store on the Kubernetes API.
//
// The API server keeps no clock for a Lease: whether one has expired is
// decided by each reader, from its own monotonic clock, as client-go's
// leader election does. A reader notes when it first saw each renewal
// (holder, token, renewTime); the lease is expired once that renewal is
// LeaseDurationSeconds old by the reader's clock. A renewal happens at or
// before the moment a reader sees it, so a reader never takes over earlier
// than TTL after the leader's last renewal, whatever the clocks' skew. A
// reader that just started waits a whole TTL before it takes over. Member
// records expire the same way: unchanged for TTL by the reader's clock.
type Kubernetes struct {
	cs    kubernetes.Interface
	ns    string
	lease string
	scope string
	name  string
	pod   string
	ttl   time.Duration
	log   *zap.Logger
	now   func() time.Time

	mu        sync.Mutex
	seen      renewal               // the last renewal of the Lease seen, and when
	members   map[string]sighting   // member name -> record and when it last changed
	cached    *coordinationv1.Lease // the Lease as last read or written
	token     string                // this holding's token; "" when not holding
	renewedAt time.Time             // last successful Acquire or Renew
	lastRec   string                // last record written, UpdatedAt zeroed
	lastLabel string                // role label last written ("" for none)
	lastPut   time.Time
}

// renewal identifies one renewal of the Lease and when this reader first
// saw it.
type renewal struct {
	id string
	at time.Time
}

// sighting is a member record and when this reader saw it change.
type sighting struct {
	rec string
	at  time.Time
}

// NewKubernetes checks the configuration and returns a Store. It does not
// contact the API server.
func NewKubernetes(c KubernetesConfig) (*Kubernetes, error) {
	var errs []error
	if c.Client == nil {
		errs = append(errs, errors.New("kubernetes: no client"))
	}
	if msgs := validation.IsDNS1123Label(c.Namespace); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("kubernetes: namespace %q: %s", c.Namespace, strings.Join(msgs, "; ")))
	}
	if err := ValidKubernetesScope(c.Scope); err != nil {
		errs = append(errs, err)
	}
	ttl := c.TTL / time.Second
	if c.Name != "" {
		if !ValidName(c.Name) {
			errs = append(errs, fmt.Errorf("kubernetes: invalid member name %q", c.Name))
		}
		if msgs := validation.IsDNS1123Subdomain(c.PodName); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("kubernetes: pod name %q: %s", c.PodName, strings.Join(msgs, "; ")))
		}
	}
	if ttl < 2 || c.TTL%time.Second != 0 {
		errs = append(errs, fmt.Errorf("kubernetes: lease TTL %v must be whole seconds, at least 2s", c.TTL))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	log := c.Log
	if log == nil {
		log = zap.NewNop()
	}
	return &Kubernetes{
		cs: c.Client, ns: c.Namespace, lease: LeaseName(c.Scope), scope: c.Scope, name: c.Name, pod: c.PodName,
		ttl: c.TTL, log: log, now: time.Now, members: map[string]sighting{},
	}, nil
}

// ValidKubernetesScope reports whether scope can name a Lease and be a
// label value: lower-case letters, digits and '-', starting and ending
// with a letter or digit, at most 54 characters.
func ValidKubernetesScope(scope string) error {
	if !ValidName(scope) {
		return fmt.Errorf("kubernetes: invalid scope %q", scope)
	}
	if msgs := validation.IsDNS1123Label(LeaseName(scope)); len(msgs) > 0 {
		return fmt.Errorf("kubernetes: scope %q must make a valid Lease name %q: %s", scope, LeaseName(scope), strings.Join(msgs, "; "))
	}
	return nil
}

// bound gives ctx a deadline of one TTL unless it has one: a request to
// an API server that does not answer must not hold the agent's loop
// forever.
func (k *Kubernetes) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, k.ttl)
}

// Close does nothing: the client holds no connection of its own.
func (k *Kubernetes) Close() error { return nil }

// ---- reading ----

// renewalID identifies a renewal: a new holder, a new holding or a new
// renewTime each make a new one.
func renewalID(l *coordinationv1.Lease) string {
	var rt int64
	if l.Spec.RenewTime != nil {
		rt = l.Spec.RenewTime.UnixMicro()
	}
	return holderOf(l) + "|" + l.Annotations[annToken] + "|" + strconv.FormatInt(rt, 10)
}

func holderOf(l *coordinationv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func leaseDuration(l *coordinationv1.Lease, def time.Duration) time.Duration {
	if l.Spec.LeaseDurationSeconds == nil || *l.Spec.LeaseDurationSeconds <= 0 {
		return def
	}
	return time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
}

// activeHolder is the holder of l unless the lease expired: its renewal,
// first seen at seenAt, is a lease duration old at now.
func activeHolder(l *coordinationv1.Lease, seenAt, now time.Time, def time.Duration) string {
	h := holderOf(l)
	if h == "" || now.Sub(seenAt) >= leaseDuration(l, def) {
		return ""
	}
	return h
}

// observe notes l's renewal and returns when it was first seen. A copy
// older than the newest seen (a stale cache, a late watch event) changes
// nothing: the renewal it shows is not news.
func (k *Kubernetes) observe(l *coordinationv1.Lease) time.Time {
	id := renewalID(l)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cached != nil && k.cached.UID == l.UID && olderRV(l.ResourceVersion, k.cached.ResourceVersion) {
		if k.seen.id == id {
			return k.seen.at
		}
		return k.now()
	}
	if k.seen.id != id {
		k.seen = renewal{id: id, at: k.now()}
	}
	if k.cached == nil || l.ResourceVersion != k.cached.ResourceVersion {
		k.cached = l.DeepCopy()
	}
	return k.seen.at
}

// olderRV reports whether resourceVersion a is older than b. They are
// opaque strings to clients, but etcd's revisions in practice; if either
// does not parse, a is taken as news.
func olderRV(a, b string) bool {
	x, err1 := strconv.ParseUint(a, 10, 64)
	y, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil && x < y
}

// holder observes l and returns its active holder.
func (k *Kubernetes) holder(l *coordinationv1.Lease) string {
	seenAt := k.observe(l)
	return activeHolder(l, seenAt, k.now(), k.ttl)
}

func (k *Kubernetes) getLease(ctx context.Context) (*coordinationv1.Lease, error) {
	l, err := k.cs.CoordinationV1().Leases(k.ns).Get(ctx, k.lease, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	k.observe(l)
	return l, nil
}

// Load reads the Lease and the members' pods (two reads: the Lease's
// resourceVersion is the revision reported).
func (k *Kubernetes) Load(ctx context.Context) (*Cluster, error) {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	c := &Cluster{Members: map[string]Member{}}
	l, err := k.getLease(ctx)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("kubernetes load lease %s/%s: %w", k.ns, k.lease, err)
	}
	var errs []error
	if l != nil {
		c.Rev, _ = strconv.ParseInt(l.ResourceVersion, 10, 64)
		errs = k.decodeLease(l, c)
	}
	pods, err := k.cs.CoreV1().Pods(k.ns).List(ctx, metav1.ListOptions{LabelSelector: ScopeLabel + "=" + k.scope})
	if err != nil {
		return nil, fmt.Errorf("kubernetes load pods: %w", err)
	}
	now := k.now()
	k.mu.Lock()
	seen := make(map[string]sighting, len(pods.Items))
	for i := range pods.Items {
		p := &pods.Items[i]
		rec, ok := p.Annotations[MemberAnnotation]
		if !ok {
			continue
		}
		var m Member
		if err := json.Unmarshal([]byte(rec), &m); err != nil {
			errs = append(errs, fmt.Errorf("pod %s annotation %s: %w", p.Name, MemberAnnotation, err))
			continue
		}
		if !ValidName(m.Name) {
			continue
		}
		s, ok := k.members[m.Name]
		if !ok || s.rec != rec {
			s = sighting{rec: rec, at: now}
		}
		seen[m.Name] = s
		if now.Sub(s.at) >= k.ttl {
			continue // its agent stopped publishing
		}
		m.Rev, _ = strconv.ParseInt(p.ResourceVersion, 10, 64)
		c.Members[m.Name] = m
	}
	k.members = seen
	k.mu.Unlock()
	return c, errors.Join(errs...)
}

// decodeLease fills c's leader and cluster-wide records from l.
func (k *Kubernetes) decodeLease(l *coordinationv1.Lease, c *Cluster) []error {
	c.Leader = k.holder(l)
	var errs []error
	a := l.Annotations
	if v, ok := a[annInitialize]; ok {
		if b, found := strings.CutPrefix(v, bootstrapPrefix); found {
			// The marker lives only as long as its holder's lease.
			if b == c.Leader {
				c.Bootstrapping = b
			}
		} else {
			c.Initialized = v
		}
	}
	dec := func(key string, v any) bool {
		s, ok := a[key]
		if !ok {
			return false
		}
		if err := json.Unmarshal([]byte(s), v); err != nil {
			errs = append(errs, fmt.Errorf("lease %s annotation %s: %w", l.Name, key, err))
			return false
		}
		return true
	}
	dec(annSync, &c.Sync)
	dec(annStatus, &c.Status)
	var sw Switchover
	if dec(annSwitchover, &sw) {
		c.Switchover = &sw
	}
	return errs
}

// ---- watching ----

// Watch notifies after changes of the Lease's holder or of its records
// (the leader's status only when members is set), when the lease expires,
// and, when members is set, after every change of a member's pod. It
// watches the API server (no polling) and reconnects by itself.
func (k *Kubernetes) Watch(ctx context.Context, members bool, notify func()) error {
	var wg sync.WaitGroup
	if members {
		wg.Go(func() { k.watchPods(ctx, notify) })
	}
	k.watchLease(ctx, members, notify)
	wg.Wait()
	return nil
}

// controlDigest is what of the Lease wakes a watcher.
func controlDigest(l *coordinationv1.Lease, status bool) string {
	a := l.Annotations
	d := holderOf(l) + "\x00" + a[annToken] + "\x00" + a[annInitialize] + "\x00" + a[annSync] + "\x00" + a[annSwitchover]
	if status {
		d += "\x00" + a[annStatus]
	}
	return d
}

func (k *Kubernetes) watchLease(ctx context.Context, status bool, notify func()) {
	expiry := time.NewTimer(time.Hour)
	expiry.Stop()
	defer expiry.Stop()
	last := ""
	name := fields.OneTermEqualSelector("metadata.name", k.lease).String()
	k.watchLoop(ctx, notify, expiry.C, func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
		opts.FieldSelector = name
		return k.cs.CoordinationV1().Leases(k.ns).Watch(ctx, opts)
	}, func(ev watch.Event) {
		l, ok := ev.Object.(*coordinationv1.Lease)
		if !ok {
			return
		}
		d := controlDigest(l, status)
		if ev.Type == watch.Deleted {
			d = ""
		} else if holderOf(l) != "" {
			// Wake when this renewal would expire, unless renewed before.
			seenAt := k.observe(l)
			expiry.Reset(max(0, seenAt.Add(leaseDuration(l, k.ttl)).Sub(k.now())+10*time.Millisecond))
		}
		if d != last {
			last = d
			notify()
		}
	})
}

func (k *Kubernetes) watchPods(ctx context.Context, notify func()) {
	k.watchLoop(ctx, notify, nil, func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
		opts.LabelSelector = ScopeLabel + "=" + k.scope
		return k.cs.CoreV1().Pods(k.ns).Watch(ctx, opts)
	}, func(watch.Event) { notify() })
}

// watchLoop runs watches one after the other until ctx ends, calling
// handle for each event and notify after each reconnection (changes may
// have been missed) and on each tick of extra. Each watch lasts at most
// watchSpan: a watch whose connection died silently (a network partition)
// delivers nothing and might otherwise never end.
func (k *Kubernetes) watchLoop(ctx context.Context, notify func(), extra <-chan time.Time,
	start func(context.Context, metav1.ListOptions) (watch.Interface, error), handle func(watch.Event)) {
	span := int64(watchSpan / time.Second)
	for ctx.Err() == nil {
		began := time.Now()
		wctx, cancel := context.WithTimeout(ctx, watchSpan+5*time.Second)
		w, err := start(wctx, metav1.ListOptions{TimeoutSeconds: &span})
		if err == nil {
			k.drain(wctx, w, extra, notify, handle)
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		notify()
		if err == nil && time.Since(began) > time.Second {
			continue // it ran its course: watch again at once
		}
		t := time.NewTimer(500 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// watchSpan is how long one watch request lasts.
const watchSpan = time.Minute

func (k *Kubernetes) drain(ctx context.Context, w watch.Interface, extra <-chan time.Time, notify func(), handle func(watch.Event)) {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-extra:
			notify()
		case ev, ok := <-w.ResultChan():
			if !ok || ev.Type == watch.Error {
				return
			}
			if ev.Type != watch.Bookmark {
				handle(ev)
			}
		}
	}
}

// ---- members ----

// PublishMember writes the member record into an annotation of this
// member's pod and sets its role label, in one merge patch, when either
// changed or every TTL/3 (which keeps the record alive for readers).
func (k *Kubernetes) PublishMember(ctx context.Context, m Member, force bool) error {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	if k.name == "" {
		return errors.New("kubernetes: read-only store")
	}
	m.Name = k.name
	same, data, err := encodeMember(m)
	if err != nil {
		return err
	}
	k.mu.Lock()
	label := roleLabelValue(m.Role, k.token != "", k.lastLabel)
	relabel := label != k.lastLabel
	changed := string(same) != k.lastRec || relabel
	due := k.now().Sub(k.lastPut) >= k.ttl/3
	k.mu.Unlock()
	if !force && !changed && !due {
		return nil
	}
	if relabel && label == RoleLabelPrimary {
		k.clearOtherPrimaries(ctx)
	}
	if err := k.patchPod(ctx, string(data), label); err != nil {
		return fmt.Errorf("kubernetes publish member: %w", err)
	}
	k.mu.Lock()
	k.lastRec, k.lastLabel, k.lastPut = string(same), label, k.now()
	k.mu.Unlock()
	return nil
}

// roleLabelValue is the role label of a member publishing role, last
// being the label it has: primary only while it holds the leader lease, so
// that a server that runs as primary without the lease (fenced, demoting,
// adopting) gets no traffic through a Service selecting the label; none
// for a stopped server; unchanged while the server runs but does not
// answer (a busy standby's label does not flap), except primary without
// the lease.
func roleLabelValue(role string, holding bool, last string) string {
	switch {
	case role == RolePrimary && holding:
		return RoleLabelPrimary
	case role == RoleStandby:
		return RoleLabelStandby
	case role == RoleUnknown && (last == RoleLabelStandby || last == RoleLabelPrimary && holding):
		return last
	}
	return ""
}

// patchPod merge-patches this member's pod: record "" removes the
// annotation, label "" removes the role label.
func (k *Kubernetes) patchPod(ctx context.Context, record, label string) error {
	var rec, role any
	if record != "" {
		rec = record
	}
	if label != "" {
		role = label
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels":      map[string]any{ScopeLabel: k.scope, RoleLabel: role},
		"annotations": map[string]any{MemberAnnotation: rec},
	}})
	if err != nil {
		return err
	}
	_, err = k.cs.CoreV1().Pods(k.ns).Patch(ctx, k.pod, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// unlabel removes the role label from pod.
func (k *Kubernetes) unlabel(ctx context.Context, pod string) error {
	patch := []byte(`{"metadata":{"labels":{"` + RoleLabel + `":null}}}`)
	_, err := k.cs.CoreV1().Pods(k.ns).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// DeleteMember removes the record and the role label from this member's
// pod.
func (k *Kubernetes) DeleteMember(ctx context.Context) error {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	if k.name == "" {
		return nil
	}
	k.mu.Lock()
	k.lastRec, k.lastLabel, k.lastPut = "", "", time.Time{}
	k.mu.Unlock()
	return k.patchPod(ctx, "", "")
}

// dropPrimaryLabel removes the primary role label at once when this
// member gives the lease up, rather than at its next publish.
func (k *Kubernetes) dropPrimaryLabel(ctx context.Context) {
	k.mu.Lock()
	was := k.lastLabel == RoleLabelPrimary
	if was {
		k.lastLabel = "-" // unknown: the next publish writes the label
	}
	k.mu.Unlock()
	if !was {
		return
	}
	if err := k.unlabel(ctx, k.pod); err != nil {
		k.log.Warn("remove the primary role label", zap.String("pod", k.pod), zap.Error(err))
	}
}

// PodIP returns the IP address of this member's pod, "" while it has
// none.
func (k *Kubernetes) PodIP(ctx context.Context) (string, error) {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	p, err := k.cs.CoreV1().Pods(k.ns).Get(ctx, k.pod, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("kubernetes get pod %s/%s: %w", k.ns, k.pod, err)
	}
	return p.Status.PodIP, nil
}

// ---- the lease ----

// newToken returns a random token naming one holding of the lease, so an
// agent that restarted (same name) and adopted its key makes the old
// process's holding invalid.
func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// update writes the Lease modified by mutate, conditional on the
// resourceVersion it was read at; on a conflict it reads the Lease again
// and retries. It starts from the cached copy, which usually is current.
// mutate returns an error to give up without writing. A missing Lease is
// returned as NotFound, for the caller to create.
func (k *Kubernetes) update(ctx context.Context, mutate func(l *coordinationv1.Lease) error) (*coordinationv1.Lease, error) {
	k.mu.Lock()
	l := k.cached.DeepCopy()
	k.mu.Unlock()
	for {
		if l == nil || l.Name != k.lease {
			var err error
			if l, err = k.getLease(ctx); err != nil {
				return nil, err
			}
		}
		if err := mutate(l); err != nil {
			return nil, err
		}
		out, err := k.cs.CoordinationV1().Leases(k.ns).Update(ctx, l, metav1.UpdateOptions{})
		if err == nil {
			k.observe(out)
			return out, nil
		}
		if !apierrors.IsConflict(err) {
			return nil, err
		}
		l = nil // someone else wrote it: read it again
	}
}

// Acquire takes the leader lease: it writes this member as holder with a
// new token when no one holds it, the holder's lease expired, or it names
// this member already (an agent that restarted). With bootstrap it also
// sets the initialize record to the bootstrapping marker, which lives only
// as long as this holding.
func (k *Kubernetes) Acquire(ctx context.Context, bootstrap bool) error {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	if k.name == "" {
		return errors.New("kubernetes: read-only store")
	}
	token := newToken()
	take := func(l *coordinationv1.Lease) error {
		h := k.holder(l)
		init, hasInit := l.Annotations[annInitialize]
		if b, ok := strings.CutPrefix(init, bootstrapPrefix); hasInit && ok && b != h {
			hasInit = false // a bootstrap that died with its lease
			delete(l.Annotations, annInitialize)
		}
		switch {
		case bootstrap && hasInit:
			return ErrInitialized
		case bootstrap && h != "":
			return ErrNotLeader
		case h != "" && h != k.name:
			return ErrNotLeader
		}
		now := metav1.NewMicroTime(k.now())
		if holderOf(l) != k.name {
			n := int32(1)
			if l.Spec.LeaseTransitions != nil {
				n = *l.Spec.LeaseTransitions + 1
			}
			l.Spec.LeaseTransitions = &n
		}
		l.Spec.HolderIdentity = &k.name
		l.Spec.LeaseDurationSeconds = ptr(int32(k.ttl / time.Second))
		l.Spec.AcquireTime, l.Spec.RenewTime = &now, &now
		if l.Annotations == nil {
			l.Annotations = map[string]string{}
		}
		l.Annotations[annToken] = token
		if bootstrap {
			l.Annotations[annInitialize] = bootstrapPrefix + k.name
		}
		return nil
	}
	began := k.now()
	for {
		_, err := k.update(ctx, take)
		if apierrors.IsNotFound(err) {
			err = k.create(ctx, take)
			if apierrors.IsAlreadyExists(err) {
				continue
			}
		}
		if err != nil {
			if !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrInitialized) {
				err = fmt.Errorf("kubernetes acquire: %w", err)
			}
			return err
		}
		k.mu.Lock()
		k.token, k.renewedAt = token, began
		k.mu.Unlock()
		k.clearOtherPrimaries(ctx)
		return nil
	}
}

// clearOtherPrimaries removes the primary role label from the other pods
// of the scope: it is left behind by a leader whose agent died while its
// server still runs, and a Service or proxy selecting on the label would
// send writes there. Only the lease holder calls it; it is best effort,
// as the health checks still verify any claim.
func (k *Kubernetes) clearOtherPrimaries(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, k.ttl/2)
	defer cancel()
	pods, err := k.cs.CoreV1().Pods(k.ns).List(ctx, metav1.ListOptions{
		LabelSelector: ScopeLabel + "=" + k.scope + "," + RoleLabel + "=" + RoleLabelPrimary})
	if err != nil {
		k.log.Warn("list pods labelled primary", zap.Error(err))
		return
	}
	for _, p := range pods.Items {
		if p.Name == k.pod {
			continue
		}
		if err := k.unlabel(ctx, p.Name); err != nil {
			k.log.Warn("remove a stale primary role label", zap.String("pod", p.Name), zap.Error(err))
			continue
		}
		k.log.Info("removed a stale primary role label", zap.String("pod", p.Name),
			zap.String("reason", "this member holds the leader lease"))
	}
}

// create makes the Lease with this member as holder.
func (k *Kubernetes) create(ctx context.Context, take func(*coordinationv1.Lease) error) error {
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: k.lease, Namespace: k.ns,
		Labels: map[string]string{ScopeLabel: k.scope}}}
	if err := take(l); err != nil {
		return err
	}
	out, err := k.cs.CoordinationV1().Leases(k.ns).Create(ctx, l, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	k.observe(out)
	return nil
}

func ptr[T any](v T) *T { return &v }

func (k *Kubernetes) heldToken() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.token
}

// mine fails with ErrNotLeader unless l names this member with token.
func (k *Kubernetes) mine(l *coordinationv1.Lease, token string) error {
	if token == "" || holderOf(l) != k.name || l.Annotations[annToken] != token {
		return ErrNotLeader
	}
	return nil
}

// Renew writes a new renewTime while the Lease still names this member
// with this holding's token. ErrLost when it does not, or when this
// member failed to renew for a whole TTL (readers may have taken over).
func (k *Kubernetes) Renew(ctx context.Context) error {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	token := k.heldToken()
	if token == "" {
		return ErrLost
	}
	k.mu.Lock()
	stale := k.now().Sub(k.renewedAt) >= k.ttl
	k.mu.Unlock()
	began := k.now()
	_, err := k.update(ctx, func(l *coordinationv1.Lease) error {
		if stale {
			return ErrNotLeader
		}
		if err := k.mine(l, token); err != nil {
			return err
		}
		now := metav1.NewMicroTime(k.now())
		l.Spec.RenewTime = &now
		l.Spec.LeaseDurationSeconds = ptr(int32(k.ttl / time.Second))
		return nil
	})
	switch {
	case errors.Is(err, ErrNotLeader) || apierrors.IsNotFound(err):
		k.lose(token)
		return ErrLost
	case err != nil:
		return fmt.Errorf("kubernetes renew: %w", err)
	}
	k.mu.Lock()
	if k.token == token {
		k.renewedAt = began
	}
	k.mu.Unlock()
	return nil
}

// lose forgets the holding named token.
func (k *Kubernetes) lose(token string) {
	k.mu.Lock()
	if k.token == token {
		k.token = ""
	}
	k.mu.Unlock()
}

// free clears the holder in l (and a bootstrapping marker of this
// holding, which dies with it).
func (k *Kubernetes) free(l *coordinationv1.Lease) {
	l.Spec.HolderIdentity = nil
	delete(l.Annotations, annToken)
	if l.Annotations[annInitialize] == bootstrapPrefix+k.name {
		delete(l.Annotations, annInitialize)
	}
}

// Release clears the holder at once, if this member still holds it, and
// removes its pod's primary label.
func (k *Kubernetes) Release(ctx context.Context) error {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	token := k.heldToken()
	if token == "" {
		return nil
	}
	k.lose(token)
	defer k.dropPrimaryLabel(ctx)
	_, err := k.update(ctx, func(l *coordinationv1.Lease) error {
		if err := k.mine(l, token); err != nil {
			return err
		}
		k.free(l)
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotLeader) && !apierrors.IsNotFound(err) {
		return fmt.Errorf("kubernetes release: %w", err)
	}
	return nil
}

// Handover clears the holder and records sw in one conditional update.
func (k *Kubernetes) Handover(ctx context.Context, sw Switchover) error {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	token := k.heldToken()
	if token == "" {
		return ErrNotLeader
	}
	data, err := json.Marshal(sw)
	if err != nil {
		return err
	}
	_, err = k.update(ctx, func(l *coordinationv1.Lease) error {
		if err := k.mine(l, token); err != nil {
			return err
		}
		k.free(l)
		l.Annotations[annSwitchover] = string(data)
		return nil
	})
	switch {
	case errors.Is(err, ErrNotLeader) || apierrors.IsNotFound(err):
		k.lose(token)
		return ErrNotLeader
	case err != nil:
		return fmt.Errorf("kubernetes handover: %w", err)
	}
	k.lose(token)
	k.dropPrimaryLabel(ctx)
	return nil
}

// setAsLeader writes annotations (a "" value deletes one) only while this
// member holds the lease.
func (k *Kubernetes) setAsLeader(ctx context.Context, ann map[string]string) error {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	token := k.heldToken()
	if token == "" {
		return ErrNotLeader
	}
	_, err := k.update(ctx, func(l *coordinationv1.Lease) error {
		if err := k.mine(l, token); err != nil {
			return err
		}
		setAnnotations(l, ann)
		return nil
	})
	switch {
	case errors.Is(err, ErrNotLeader) || apierrors.IsNotFound(err):
		return ErrNotLeader
	case err != nil:
		return fmt.Errorf("kubernetes write %v: %w", slicesOfKeys(ann), err)
	}
	return nil
}

func setAnnotations(l *coordinationv1.Lease, ann map[string]string) {
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	for key, v := range ann {
		if v == "" {
			delete(l.Annotations, key)
		} else {
			l.Annotations[key] = v
		}
	}
}

func slicesOfKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

func (k *Kubernetes) setJSONAsLeader(ctx context.Context, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return k.setAsLeader(ctx, map[string]string{key: string(data)})
}

// SetInitialized replaces the bootstrapping marker with the system id.
func (k *Kubernetes) SetInitialized(ctx context.Context, systemID string) error {
	return k.setAsLeader(ctx, map[string]string{annInitialize: systemID})
}

// SetSync writes the sync record.
func (k *Kubernetes) SetSync(ctx context.Context, s Sync) error {
	return k.setJSONAsLeader(ctx, annSync, s)
}

// SetStatus writes the leader's status.
func (k *Kubernetes) SetStatus(ctx context.Context, s Status) error {
	return k.setJSONAsLeader(ctx, annStatus, s)
}

// RequestSwitchover records sw; any member may. It creates the Lease
// (with no holder) if there is none yet.
func (k *Kubernetes) RequestSwitchover(ctx context.Context, sw Switchover) error {
	data, err := json.Marshal(sw)
	if err != nil {
		return err
	}
	return k.setAnyone(ctx, string(data))
}

// ClearSwitchover removes the switchover record.
func (k *Kubernetes) ClearSwitchover(ctx context.Context) error {
	return k.setAnyone(ctx, "")
}

// setAnyone writes (or with "" removes) the switchover record whoever
// holds the lease.
func (k *Kubernetes) setAnyone(ctx context.Context, sw string) error {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	set := func(l *coordinationv1.Lease) error {
		setAnnotations(l, map[string]string{annSwitchover: sw})
		return nil
	}
	for {
		_, err := k.update(ctx, set)
		if apierrors.IsNotFound(err) {
			if sw == "" {
				return nil
			}
			l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: k.lease, Namespace: k.ns,
				Labels: map[string]string{ScopeLabel: k.scope}}}
			_ = set(l)
			out, cerr := k.cs.CoordinationV1().Leases(k.ns).Create(ctx, l, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(cerr) {
				continue
			}
			if cerr == nil {
				k.observe(out)
			}
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("kubernetes switchover record: %w", err)
		}
		return nil
	}
}
