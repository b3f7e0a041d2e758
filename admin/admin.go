// Package admin serves pgrouter's HTTP admin API: liveness, readiness,
// Prometheus metrics and the topology as JSON.
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

// New binds addr and prepares the handlers; Run serves them.
func New(addr string, feed *topology.Feed, sessions Sessions, gather prometheus.Gatherer, log *zap.Logger) (*Server, error) {
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
	return &Server{ln: ln, log: log, http: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
	}}, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
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
