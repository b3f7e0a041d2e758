package admin

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"time"

	"github.com/pgrouter/pgrouter/topology"
)

// ui is the dashboard: one page, one script, one stylesheet, all in the
// binary so the page works on a host without any network access.
//
//go:embed ui
var ui embed.FS

// dashboardState is what /api/v1/events pushes: everything the page shows.
type dashboardState struct {
	At       time.Time        `json:"at"`
	Topology topologyJSON     `json:"topology"`
	Pools    any              `json:"pools"`
	Timeline []topology.Event `json:"timeline"`
}

// eventsRefresh is how often /api/v1/events pushes the state without a
// change of topology or timeline: session counts and pools move without
// one.
const eventsRefresh = time.Second

// timelineShown is how many of the newest events each push carries.
const timelineShown = 100

// serveDashboard adds / (the page), /ui/ (its assets), /api/v1/timeline
// and /api/v1/events (server-sent events) to mux.
func serveDashboard(mux *http.ServeMux, feed *topology.Feed, hooks Hooks) {
	sub, _ := fs.Sub(ui, "ui")
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, sub, "index.html")
	})
	mux.Handle("GET /ui/", http.StripPrefix("/ui/", http.FileServerFS(sub)))
	timeline := func() ([]topology.Event, <-chan struct{}) {
		if hooks.Timeline == nil {
			return []topology.Event{}, nil
		}
		return hooks.Timeline.Events()
	}
	mux.HandleFunc("GET /api/v1/timeline", func(w http.ResponseWriter, _ *http.Request) {
		evs, _ := timeline()
		writeJSON(w, evs)
	})
	mux.HandleFunc("GET /api/v1/events", func(w http.ResponseWriter, r *http.Request) {
		flusher, ok := w.(http.Flusher)
		if !ok {
			http.Error(w, "streaming unsupported", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		tick := time.NewTicker(eventsRefresh)
		defer tick.Stop()
		for {
			snap, topoChanged := feed.Load()
			evs, tlChanged := timeline()
			if len(evs) > timelineShown {
				evs = evs[len(evs)-timelineShown:]
			}
			st := dashboardState{At: time.Now().UTC(), Topology: topologyView(snap, hooks.Sessions), Timeline: evs}
			if hooks.Pools != nil {
				st.Pools = hooks.Pools()
			}
			b, err := json.Marshal(st)
			if err != nil {
				return
			}
			if _, err := w.Write(append(append([]byte("event: state\ndata: "), b...), '\n', '\n')); err != nil {
				return
			}
			flusher.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-topoChanged:
			case <-tlChanged:
			case <-tick.C:
			}
		}
	})
}
