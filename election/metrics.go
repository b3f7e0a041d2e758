package election

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's collectors. A nil *Metrics records nothing.
type Metrics struct {
	leader        prometheus.Gauge
	roleChanges   *prometheus.CounterVec
	acquisitions  *prometheus.CounterVec
	releases      *prometheus.CounterVec
	fencings      *prometheus.CounterVec
	rejoins       *prometheus.CounterVec
	promotions    *prometheus.CounterVec
	demotions     prometheus.Counter
	switchovers   prometheus.Counter
	syncChanges   prometheus.Counter
	renewFailures prometheus.Counter
	renewDuration prometheus.Histogram
}

// NewMetrics creates the collectors and registers them on reg (nil: none).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgrouter_agent_leader",
			Help: "1 while this agent holds the leader lease.",
		}),
		roleChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_agent_role_changes_total",
			Help: "Changes of the local PostgreSQL's role (primary, standby, stopped).",
		}, []string{"from", "to"}),
		acquisitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_agent_leader_acquired_total",
			Help: "Leader leases taken, by kind: bootstrap, failover, switchover, resume.",
		}, []string{"kind"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_agent_leader_released_total",
			Help: "Leader leases given up or lost, by reason.",
		}, []string{"reason"}),
		fencings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_agent_fencings_total",
			Help: "Times the agent stopped its primary because it could not keep the lease.",
		}, []string{"reason"}),
		rejoins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_agent_rejoins_total",
			Help: "Standby (re)joins, by method: follow (re-pointed), rewind, clone.",
		}, []string{"method"}),
		promotions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_agent_promotions_total",
			Help: "Promotions of the local standby, by kind: failover, switchover.",
		}, []string{"kind"}),
		demotions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgrouter_agent_demotions_total",
			Help: "Times a primary found another leader and was demoted to a standby.",
		}),
		switchovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgrouter_agent_switchovers_total",
			Help: "Planned switchovers handed over by this agent.",
		}),
		syncChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgrouter_agent_sync_standby_changes_total",
			Help: "Changes of synchronous_standby_names by this agent as leader.",
		}),
		renewFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgrouter_agent_lease_renew_failures_total",
			Help: "Failed attempts to renew the leader lease.",
		}),
		renewDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgrouter_agent_lease_renew_duration_seconds",
			Help:    "Duration of leader lease renewals, failed ones included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2},
		}),
	}
	if reg != nil {
		reg.MustRegister(m.leader, m.roleChanges, m.acquisitions, m.releases, m.fencings, m.rejoins,
			m.promotions, m.demotions, m.switchovers, m.syncChanges, m.renewFailures, m.renewDuration)
	}
	return m
}

func (m *Metrics) roleChanged(from, to string) {
	if m != nil {
		m.roleChanges.WithLabelValues(from, to).Inc()
	}
}

func (m *Metrics) acquired(kind string) {
	if m != nil {
		m.acquisitions.WithLabelValues(kind).Inc()
		m.leader.Set(1)
	}
}

func (m *Metrics) released(reason string) {
	if m != nil {
		m.releases.WithLabelValues(reason).Inc()
		m.leader.Set(0)
	}
}

func (m *Metrics) fenced(reason string) {
	if m != nil {
		m.fencings.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) rejoined(method string) {
	if m != nil {
		m.rejoins.WithLabelValues(method).Inc()
	}
}

func (m *Metrics) promoted(kind string) {
	if m != nil {
		m.promotions.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) demoted() {
	if m != nil {
		m.demotions.Inc()
	}
}

func (m *Metrics) switchedOver() {
	if m != nil {
		m.switchovers.Inc()
	}
}

func (m *Metrics) syncChanged() {
	if m != nil {
		m.syncChanges.Inc()
	}
}

func (m *Metrics) renewal(took time.Duration, err error) {
	if m == nil {
		return
	}
	m.renewDuration.Observe(took.Seconds())
	if err != nil {
		m.renewFailures.Inc()
	}
}
