package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pgrouter/pgrouter/topology"
)

var _ Source = (*Kubernetes)(nil)

// RoleLabel says which pod label carries a member's role and which values
// mean primary and standby.
type RoleLabel struct {
	Key, Primary, Standby string
}

// RolePresets are the role labels of the operators pgrouter sits beside
// unchanged. "pgrouter" is the label pgrouter's own agents write with
// --dcs kubernetes (dcs.RoleLabel).
var RolePresets = map[string]RoleLabel{
	"kubedb":     {Key: "kubedb.com/role", Primary: "primary", Standby: "standby"},
	"kubeblocks": {Key: "kubeblocks.io/role", Primary: "primary", Standby: "secondary"},
	"cnpg":       {Key: "cnpg.io/instanceRole", Primary: "primary", Standby: "replica"},
	"zalando":    {Key: "spilo-role", Primary: "master", Standby: "replica"},
	"pgrouter":   {Key: "pgrouter.io/role", Primary: "primary", Standby: "standby"},
}

// PresetNames lists RolePresets' keys, sorted, for messages.
func PresetNames() []string {
	names := make([]string, 0, len(RolePresets))
	for n := range RolePresets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DefaultPortName is the container port name that carries PostgreSQL when
// neither KubernetesConfig.PortName nor Port is set.
const DefaultPortName = "postgresql"

// KubernetesConfig selects the pods of one cluster.
type KubernetesConfig struct {
	// Namespace holds the pods. Required.
	Namespace string
	// Selector is a label selector (app=pg,cluster=main). Empty selects
	// every pod of the namespace.
	Selector string
	// Role is the label that says which pod is the primary. Required.
	Role RoleLabel
	// PortName names the container port of PostgreSQL. Default
	// DefaultPortName.
	PortName string
	// Port, when not 0, is PostgreSQL's port on every pod, whatever the
	// container ports say.
	Port int
}

// Kubernetes publishes the pods of one namespace that match a label
// selector, from a client-go informer (a list, then a watch; no polling).
// A member is a pod that is Ready, not being deleted, and has an IP and a
// PostgreSQL port; it is named as the pod and reached at podIP:port. It
// claims primary when its role label has the primary value and standby
// otherwise (standby value, another value or no label): only the
// operator's label can send writes to a pod, and health checks still
// confirm it, so a pod labelled primary that is in recovery gets none.
//
// While the API server cannot be reached the informer keeps the last pods
// it saw and retries; the proxy keeps routing to them, as Services would,
// and health checks still verify every claim.
type Kubernetes struct {
	client kubernetes.Interface
	http   *http.Client
	cfg    KubernetesConfig
	sel    labels.Selector
	log    *zap.Logger
}

// RESTConfig returns in-cluster configuration (the pod's ServiceAccount)
// when kubeconfig is empty, else the current context of that file.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster kubernetes config (outside a cluster, give --kubeconfig): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

// NewKubernetes returns a source for the pods cfg selects, reached with rc.
// It does not contact the API server before Run.
func NewKubernetes(cfg KubernetesConfig, rc *rest.Config, log *zap.Logger) (*Kubernetes, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.Namespace == "" {
		return nil, errors.New("kubernetes discovery: no namespace")
	}
	if cfg.Role.Key == "" || cfg.Role.Primary == "" {
		return nil, errors.New("kubernetes discovery: no role label or primary value")
	}
	if cfg.PortName == "" {
		cfg.PortName = DefaultPortName
	}
	sel, err := labels.Parse(cfg.Selector)
	if err != nil {
		return nil, fmt.Errorf("kubernetes discovery: selector %q: %w", cfg.Selector, err)
	}
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "pgrouter-proxy"
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes discovery: %w", err)
	}
	client, err := kubernetes.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes discovery: %w", err)
	}
	return &Kubernetes{client: client, http: hc, cfg: cfg, sel: sel, log: log}, nil
}

// Close closes the idle connections to the API server; call it after Run
// returned.
func (k *Kubernetes) Close() error {
	k.http.CloseIdleConnections()
	return nil
}

// Run watches the pods and publishes the member list once the first list
// arrived and after every change that alters it, until ctx ends; then it
// returns nil.
func (k *Kubernetes) Run(ctx context.Context, publish func([]topology.Member)) error {
	lw := cache.NewFilteredListWatchFromClient(k.client.CoreV1().RESTClient(), "pods", k.cfg.Namespace,
		func(o *metav1.ListOptions) { o.LabelSelector = k.sel.String() })
	inf := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0, cache.Indexers{})
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default: // a wake-up is pending; it reads the newest store
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}); err != nil {
		return err
	}
	var (
		errMu   sync.Mutex
		lastErr string
	)
	// One line per distinct error: the reflector retries with backoff and
	// would repeat the same one.
	_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if s := err.Error(); s != lastErr {
			lastErr = s
			k.log.Warn("kubernetes watch failed; keeping the last pods seen and retrying",
				zap.String("namespace", k.cfg.Namespace), zap.Error(err))
		}
	})
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { inf.RunWithContext(ctx) })
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil // ctx ended first
	}
	k.log.Info("watching pods", zap.String("namespace", k.cfg.Namespace), zap.String("selector", k.sel.String()),
		zap.String("role_label", k.cfg.Role.Key))
	var (
		last      []topology.Member
		published bool
		reasons   = map[string]string{} // pod name -> why it is not routed to
	)
	for {
		var pods []*corev1.Pod
		for _, o := range inf.GetStore().List() {
			if p, ok := o.(*corev1.Pod); ok {
				pods = append(pods, p)
			}
		}
		next, why := k.members(pods)
		k.logExcluded(reasons, why)
		reasons = why
		if !published || !slices.Equal(next, last) {
			k.log.Info("members changed", zap.Stringer("members", memberList(next)))
			publish(slices.Clone(next))
			last, published = next, true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		}
	}
}

// logExcluded logs once each pod that starts or stops being left out, with
// why.
func (k *Kubernetes) logExcluded(before, now map[string]string) {
	for name, why := range now {
		if before[name] != why {
			k.log.Info("pod not routed to", zap.String("pod", name), zap.String("reason", why))
		}
	}
	for name := range before {
		if _, still := now[name]; !still {
			k.log.Info("pod routable again or gone", zap.String("pod", name))
		}
	}
}

// members turns pods into members, sorted by name, and says why each
// other pod is left out.
func (k *Kubernetes) members(pods []*corev1.Pod) ([]topology.Member, map[string]string) {
	var ms []topology.Member
	why := map[string]string{}
	for _, p := range pods {
		m, reason := k.member(p)
		if reason != "" {
			why[p.Name] = reason
			continue
		}
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b topology.Member) int { return strings.Compare(a.Name, b.Name) })
	return ms, why
}

// member returns p as a member, or why it is not one.
func (k *Kubernetes) member(p *corev1.Pod) (topology.Member, string) {
	switch {
	case p.DeletionTimestamp != nil:
		return topology.Member{}, "being deleted"
	case p.Status.PodIP == "":
		return topology.Member{}, "no pod IP"
	case !podReady(p):
		return topology.Member{}, "not Ready"
	}
	port := k.cfg.Port
	if port == 0 {
		if port = namedPort(p, k.cfg.PortName); port == 0 {
			return topology.Member{}, fmt.Sprintf("no container port named %q (or give --pg-port)", k.cfg.PortName)
		}
	}
	role := topology.RoleStandby
	if p.Labels[k.cfg.Role.Key] == k.cfg.Role.Primary {
		role = topology.RolePrimary
	}
	return topology.Member{Name: p.Name, Addr: net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port)), Claimed: role}, ""
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func namedPort(p *corev1.Pod, name string) int {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
				return int(cp.ContainerPort)
			}
		}
	}
	return 0
}
