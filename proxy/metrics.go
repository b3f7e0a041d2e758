package proxy

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the proxy's Prometheus collectors. Sessions look up their
// label children once, at start, so the relay never touches a label map.
type Metrics struct {
	clientConns      *prometheus.GaugeVec
	clientConnsTotal *prometheus.CounterVec
	serverConns      *prometheus.GaugeVec
	bytes            *prometheus.CounterVec
	relays           *prometheus.CounterVec
	loopStartups     *prometheus.CounterVec
	routes           *prometheus.CounterVec
	refused          *prometheus.CounterVec
	terminated       *prometheus.CounterVec
	cancels          *prometheus.CounterVec
	primaryWait      prometheus.Histogram
	pins             *prometheus.CounterVec
	splitRoutes      *prometheus.CounterVec
	deferredPrepares prometheus.Counter
	plainFallbacks   prometheus.Counter
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
		relays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_relayed_sessions_total", Help: "Passthrough sessions relayed after startup, by listener and relay (loop: an epoll loop thread; goroutines: TLS on a side, or --relay-threads 0).",
		}, []string{"listener", "relay"}),
		loopStartups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_loop_startups_total", Help: "Clients accepted, started and relayed by a loop thread, without a goroutine, by listener (passthrough clients without TLS to either side; pooled trust clients whose pool had a server to lend).",
		}, []string{"listener"}),
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
			Name: "pgrouter_cancel_requests_total", Help: "Cancel requests by outcome (forwarded, unknown_key, failed, no_server, to_peers, to_peers_dropped, peer_unknown_key, peer_refused).",
		}, []string{"outcome"}),
		primaryWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pgrouter_primary_wait_seconds", Help: "Time read-write sessions waited for a primary to appear.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2, 5, 10, 15, 30},
		}),
		splitRoutes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_split_routes_total", Help: "Transactions routed by the statement split, by target (primary, standby) and reason.",
		}, []string{"target", "reason"}),
		pins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrouter_pool_pins_total", Help: "Transaction-pooled sessions pinned to their server, by the state that could not be carried.",
		}, []string{"reason"}),
		deferredPrepares: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgrouter_pool_deferred_prepares_total", Help: "Statements a transaction-pooled client prepared between transactions, answered by the proxy and prepared on a server at first use.",
		}),
		plainFallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgrouter_scram_plaintext_fallbacks_total", Help: "Passthrough logins whose server link was made again without TLS (--server-sslmode prefer), because the client supports SCRAM channel binding, which cannot cross pgrouter, and the server refuses plain SCRAM from such a client over TLS.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.clientConns, m.clientConnsTotal, m.serverConns, m.bytes, m.relays, m.loopStartups, m.routes,
			m.refused, m.terminated, m.cancels, m.primaryWait, m.pins, m.splitRoutes, m.deferredPrepares, m.plainFallbacks)
	}
	return m
}

// poolCollector exports pool statistics when Prometheus scrapes, so the
// lend path keeps no metric of its own.
type poolCollector struct{ s *Server }

var (
	poolServersDesc = prometheus.NewDesc("pgrouter_pool_servers", "Pooled server connections by state (active, idle).",
		[]string{"member", "database", "user", "state"}, nil)
	poolClientsDesc = prometheus.NewDesc("pgrouter_pool_clients_active", "Client sessions routed to a pool and not waiting for a server, holding one or between transactions.",
		[]string{"member", "database", "user"}, nil)
	poolWaitingDesc = prometheus.NewDesc("pgrouter_pool_clients_waiting", "Clients waiting for a pooled server connection.",
		[]string{"member", "database", "user"}, nil)
	poolMaxWaitDesc = prometheus.NewDesc("pgrouter_pool_max_wait_seconds", "Longest wait for a pooled server connection so far.",
		[]string{"member", "database", "user"}, nil)
	poolLentDesc = prometheus.NewDesc("pgrouter_pool_lent_total", "Server connections lent.",
		[]string{"member", "database", "user"}, nil)
	poolTimeoutsDesc = prometheus.NewDesc("pgrouter_pool_wait_timeouts_total", "Clients that waited longer than query-wait-timeout.",
		[]string{"member", "database", "user"}, nil)
	pausedDesc = prometheus.NewDesc("pgrouter_paused", "1 while new transactions are held (pause).", nil, nil)
)

// PoolCollector returns a collector of the proxy's pools, to register with
// the other metrics.
func (s *Server) PoolCollector() prometheus.Collector { return poolCollector{s} }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolServersDesc, poolClientsDesc, poolWaitingDesc, poolMaxWaitDesc, poolLentDesc, poolTimeoutsDesc, pausedDesc} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.s.PoolStats() {
		k := st.Key
		ch <- prometheus.MustNewConstMetric(poolServersDesc, prometheus.GaugeValue, float64(st.Active), k.Member, k.Database, k.User, "active")
		ch <- prometheus.MustNewConstMetric(poolServersDesc, prometheus.GaugeValue, float64(st.Idle), k.Member, k.Database, k.User, "idle")
		ch <- prometheus.MustNewConstMetric(poolClientsDesc, prometheus.GaugeValue, float64(st.Clients), k.Member, k.Database, k.User)
		ch <- prometheus.MustNewConstMetric(poolWaitingDesc, prometheus.GaugeValue, float64(st.Waiting), k.Member, k.Database, k.User)
		ch <- prometheus.MustNewConstMetric(poolMaxWaitDesc, prometheus.GaugeValue, st.MaxWait.Seconds(), k.Member, k.Database, k.User)
		ch <- prometheus.MustNewConstMetric(poolLentDesc, prometheus.CounterValue, float64(st.Lent), k.Member, k.Database, k.User)
		ch <- prometheus.MustNewConstMetric(poolTimeoutsDesc, prometheus.CounterValue, float64(st.WaitTimeouts), k.Member, k.Database, k.User)
	}
	paused := 0.0
	if c.s.Paused() {
		paused = 1
	}
	ch <- prometheus.MustNewConstMetric(pausedDesc, prometheus.GaugeValue, paused)
}
