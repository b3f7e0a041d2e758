// Package admin serves pgrouter's HTTP admin API: liveness, readiness,
// Prometheus metrics, the topology as JSON, and the dashboard at / that
// shows it all live.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/topology"
)

// Server is the admin HTTP server.
type Server struct {
	ln   net.Listener
	http *http.Server
	log  *zap.Logger
}

// Sessions reports open sessions: per listener and per member.
type Sessions func() (listeners, members map[string]int)

// Hooks connect the API to the proxy. Nil hooks serve 404.
type Hooks struct {
	Sessions Sessions
	// Pools returns the pools for /api/v1/pools.
	Pools func() any
	// Pause waits for running transactions to end and holds new ones;
	// Resume lets them go.
	Pause  func(ctx context.Context) error
	Resume func()
	// Timeline holds the role changes the dashboard shows; nil shows none.
	Timeline *Timeline
}

// New binds addr and prepares the handlers; Run serves them.
func New(addr string, feed *topology.Feed, hooks Hooks, gather prometheus.Gatherer, log *zap.Logger) (*Server, error) {
	sessions := hooks.Sessions
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		snap, _ := feed.Load()
		if p, ok := router.Primary(snap); ok {
			_, _ = w.Write([]byte("ready: primary " + p.Name + "\n"))
			return
		}
		http.Error(w, "not ready: no primary known", http.StatusServiceUnavailable)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gather, promhttp.HandlerOpts{}))
	// Profiles are how we find where the relay's time goes under load.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /api/v1/topology", func(w http.ResponseWriter, _ *http.Request) {
		snap, _ := feed.Load()
		writeJSON(w, topologyView(snap, sessions))
	})
	serveDashboard(mux, feed, hooks)
	if hooks.Pools != nil {
		mux.HandleFunc("GET /api/v1/pools", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, hooks.Pools())
		})
	}
	if hooks.Pause != nil && hooks.Resume != nil {
		mux.HandleFunc("POST /api/v1/pause", func(w http.ResponseWriter, r *http.Request) {
			timeout := 30 * time.Second
			if v := r.URL.Query().Get("timeout"); v != "" {
				d, err := time.ParseDuration(v)
				if err != nil {
					http.Error(w, "bad timeout: "+err.Error(), http.StatusBadRequest)
					return
				}
				timeout = d
			}
			ctx, cancel := context.WithTimeout(r.Context(), timeout)
			defer cancel()
			start := time.Now()
			if err := hooks.Pause(ctx); err != nil {
				// Not every transaction ended in time: stay paused, say so.
				w.WriteHeader(http.StatusGatewayTimeout)
				writeJSON(w, map[string]any{"paused": true, "done": false, "error": err.Error()})
				return
			}
			log.Info("paused: no transaction running, new ones held", zap.Duration("waited", time.Since(start)))
			writeJSON(w, map[string]any{"paused": true, "done": true, "waited": time.Since(start).String()})
		})
		mux.HandleFunc("POST /api/v1/resume", func(w http.ResponseWriter, _ *http.Request) {
			hooks.Resume()
			log.Info("resumed")
			writeJSON(w, map[string]any{"paused": false})
		})
	}
	return &Server{ln: ln, log: log, http: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
	}}, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx ends. Requests' contexts end with ctx too, so the
// dashboard's event streams return instead of holding Shutdown up.
func (s *Server) Run(ctx context.Context) error {
	s.http.BaseContext = func(net.Listener) context.Context { return ctx }
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.http.Shutdown(sctx)
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type memberView struct {
	topology.MemberState
	Sessions int `json:"sessions"`
}

type topologyJSON struct {
	Version   uint64         `json:"version"`
	Primary   string         `json:"primary"`
	Members   []memberView   `json:"members"`
	Listeners map[string]int `json:"listeners"`
}

func topologyView(snap *topology.Snapshot, sessions Sessions) topologyJSON {
	out := topologyJSON{Version: snap.Version, Members: []memberView{}}
	if p, ok := router.Primary(snap); ok {
		out.Primary = p.Name
	}
	var perMember map[string]int
	if sessions != nil {
		out.Listeners, perMember = sessions()
	}
	for _, m := range snap.Members {
		out.Members = append(out.Members, memberView{MemberState: m, Sessions: perMember[m.Name]})
	}
	return out
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
