package health

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgrouter/pgrouter/topology"
)

var allRoles = []topology.Role{topology.RoleUnknown, topology.RolePrimary, topology.RoleStandby}

// Metrics are the health collectors. A nil *Metrics records nothing.
type Metrics struct {
	up            *prometheus.GaugeVec
	role          *prometheus.GaugeVec
	lagBytes      *prometheus.GaugeVec
	lagSeconds    *prometheus.GaugeVec
	checkDuration *prometheus.HistogramVec
	roleChanges   *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg; it panics if
// they are already registered there. A nil reg registers nothing.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgrouter_member_up",
			Help: "1 while the member answers health probes, 0 once it is marked down.",
		}, []string{"member"}),
		role: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgrouter_member_role",
			Help: "1 for the role the router acts on for the member, 0 for the others.",
		}, []string{"member", "role"}),
		lagBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgrouter_member_replay_lag_bytes",
			Help: "Bytes of WAL a standby's replay is behind the primary.",
		}, []string{"member"}),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgrouter_member_replay_lag_seconds",
			Help: "Age of the last replayed transaction while a standby has WAL left to replay.",
		}, []string{"member"}),
		checkDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pgrouter_health_check_duration_seconds",
			Help:    "Duration of health probes, failed ones included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"member"}),
		roleChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_role_changes_total",
			Help: "Changes of the role the router acts on for a member.",
		}, []string{"member", "from", "to"}),
	}
	if reg != nil {
		reg.MustRegister(m.up, m.role, m.lagBytes, m.lagSeconds, m.checkDuration, m.roleChanges)
	}
	return m
}

// set records the state of one member.
func (m *Metrics) set(ms topology.MemberState) {
	if m == nil {
		return
	}
	up := 0.0
	if ms.Health.Up {
		up = 1
	}
	m.up.WithLabelValues(ms.Name).Set(up)
	for _, r := range allRoles {
		v := 0.0
		if r == ms.Role {
			v = 1
		}
		m.role.WithLabelValues(ms.Name, r.String()).Set(v)
	}
	m.lagBytes.WithLabelValues(ms.Name).Set(float64(ms.Health.ReplayLagBytes))
	m.lagSeconds.WithLabelValues(ms.Name).Set(ms.Health.ReplayLag.Seconds())
}

// roleChanged counts one change of a member's effective role.
func (m *Metrics) roleChanged(member string, from, to topology.Role) {
	if m == nil {
		return
	}
	m.roleChanges.WithLabelValues(member, from.String(), to.String()).Inc()
}

// forget drops every series of a member that left the cluster.
func (m *Metrics) forget(member string) {
	if m == nil {
		return
	}
	l := prometheus.Labels{"member": member}
	m.up.DeletePartialMatch(l)
	m.role.DeletePartialMatch(l)
	m.lagBytes.DeletePartialMatch(l)
	m.lagSeconds.DeletePartialMatch(l)
	m.checkDuration.DeletePartialMatch(l)
	m.roleChanges.DeletePartialMatch(l)
}

// checkObserver returns the probe-duration child for one member, looked up
// once per checker.
func (m *Metrics) checkObserver(member string) prometheus.Observer {
	if m == nil {
		return nopObserver{}
	}
	return m.checkDuration.WithLabelValues(member)
}

type nopObserver struct{}

func (nopObserver) Observe(float64) {}
