package proxy

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the proxy's Prometheus collectors. Sessions look up their
// label children once, at start, so the relay never touches a label map.
type Metrics struct {
	clientConns      *prometheus.GaugeVec
	clientConnsTotal *prometheus.CounterVec
	serverConns      *prometheus.GaugeVec
	bytes            *prometheus.CounterVec
	routes           *prometheus.CounterVec
	refused          *prometheus.CounterVec
	terminated       *prometheus.CounterVec
	cancels          *prometheus.CounterVec
	primaryWait      prometheus.Histogram
	pins             *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg (nil: none).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		clientConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgrouter_client_connections", Help: "Open client connections by listener.",
		}, []string{"listener"}),
		clientConnsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_client_connections_total", Help: "Client connections accepted by listener.",
		}, []string{"listener"}),
		serverConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgrouter_backend_connections", Help: "Open server connections by listener and member.",
		}, []string{"listener", "member"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_bytes_relayed_total", Help: "Bytes relayed after startup, by listener and direction (to_server, to_client).",
		}, []string{"listener", "direction"}),
		routes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_routing_decisions_total", Help: "Sessions routed, by listener, member and the role routed to.",
		}, []string{"listener", "member", "role"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_sessions_refused_total", Help: "Client connections refused before relaying, by listener and SQLSTATE or reason.",
		}, []string{"listener", "reason"}),
		terminated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_sessions_terminated_total", Help: "Sessions the proxy ended itself, by reason (role_change, shutdown).",
		}, []string{"reason"}),
		cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_cancel_requests_total", Help: "Cancel requests by outcome (forwarded, unknown_key, failed).",
		}, []string{"outcome"}),
		primaryWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pgrouter_primary_wait_seconds", Help: "Time read-write sessions waited for a primary to appear.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2, 5, 10, 15, 30},
		}),
		pins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_pool_pins_total", Help: "Transaction-pooled sessions pinned to their server, by the state that could not be carried.",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.clientConns, m.clientConnsTotal, m.serverConns, m.bytes, m.routes,
			m.refused, m.terminated, m.cancels, m.primaryWait, m.pins)
	}
	return m
}
