package election

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgrouter/pgrouter/dcs"

	"github.com/pgrouter/pgrouter/topology"
)

// View is the agent's state as the HTTP API shows it (/status).
type View struct {
	Name        string       `json:"name"`
	Scope       string       `json:"scope"`
	Role        string       `json:"role"`
	State       string       `json:"state"`
	Leader      string       `json:"leader"`
	IsLeader    bool         `json:"is_leader"`
	Timeline    uint32       `json:"timeline"`
	ReceivedLSN string       `json:"received_lsn,omitempty"`
	ReplayedLSN string       `json:"replayed_lsn,omitempty"`
	Streaming   bool         `json:"streaming"`
	Upstream    string       `json:"upstream,omitempty"`
	Warm        bool         `json:"warm,omitempty"`
	SyncStandby string       `json:"sync_standby,omitempty"`
	Sync        *dcs.Sync    `json:"sync,omitempty"`
	Members     []dcs.Member `json:"members,omitempty"`
	PGError     string       `json:"pg_error,omitempty"`
	StoreError  string       `json:"store_error,omitempty"`
	UpdatedAt   time.Time    `json:"updated_at"`
}

// setView publishes the newest observation for the API. cl is nil when
// the store could not be read; the cluster part then keeps its last value.
func (a *Agent) setView(st PGState, cl *dcs.Cluster, storeErr error) {
	prev := a.view.Load()
	v := &View{
		Name: a.cfg.Name, Scope: a.cfg.Scope, Role: st.Role(), State: a.getState(), IsLeader: a.isLeader.Load(),
		Timeline: st.Timeline, Streaming: st.Streaming, Upstream: st.Upstream, Warm: st.Warm,
		SyncStandby: st.SyncStandby, UpdatedAt: a.now().UTC(),
	}
	if st.Running && st.Answering {
		v.ReceivedLSN, v.ReplayedLSN = topology.FormatLSN(st.ReceivedLSN), topology.FormatLSN(st.ReplayedLSN)
	}
	if st.Err != nil {
		v.PGError = st.Err.Error()
	}
	if v.Role == dcs.RolePrimary {
		v.Upstream = ""
	}
	if storeErr != nil {
		v.StoreError = storeErr.Error()
	}
	if cl == nil {
		v.Leader, v.Sync, v.Members = prev.Leader, prev.Sync, prev.Members
	} else {
		v.Leader = cl.Leader
		s := cl.Sync
		v.Sync = &s
		for _, m := range cl.Members {
			v.Members = append(v.Members, m)
		}
		slices.SortFunc(v.Members, func(x, y dcs.Member) int { return strings.Compare(x.Name, y.Name) })
		if st.Warm && cl.Leader != "" && !v.IsLeader {
			v.Streaming = a.streamingFrom(st, cl, cl.Members[cl.Leader])
		}
	}
	a.view.Store(v)
}

// Status returns the agent's current view.
func (a *Agent) Status() View { return *a.view.Load() }

// Handler serves the agent's HTTP API:
//
//	GET /health      200 while PostgreSQL runs and answers
//	GET /primary     200 only on the leader whose server is a primary
//	GET /replica     200 only on a standby streaming from the leader
//	GET /status      the View as JSON
//	POST /switchover {"to": "name"} (optional): a planned switchover;
//	                 answers when a new leader holds the key
//	GET /metrics     Prometheus metrics from gather (when not nil)
//
// Every health endpoint answers the View as JSON too, as Patroni's do,
// so HAProxy's httpchk and humans read the same thing.
func (a *Agent) Handler(gather prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	check := func(ok func(View) bool) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			v := a.Status()
			code := http.StatusOK
			if !ok(v) {
				code = http.StatusServiceUnavailable
			}
			writeJSON(w, code, v)
		}
	}
	mux.HandleFunc("/health", check(func(v View) bool {
		return v.Role == dcs.RolePrimary || v.Role == dcs.RoleStandby
	}))
	mux.HandleFunc("/primary", check(func(v View) bool {
		return v.IsLeader && v.Role == dcs.RolePrimary
	}))
	mux.HandleFunc("/replica", check(func(v View) bool {
		return !v.IsLeader && v.Role == dcs.RoleStandby && v.Streaming && v.Leader != ""
	}))
	mux.HandleFunc("GET /status", check(func(View) bool { return true }))
	mux.HandleFunc("POST /switchover", a.handleSwitchover)
	if gather != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(gather, promhttp.HandlerOpts{}))
	}
	return mux
}

// SwitchoverRequest is the body of POST /switchover.
type SwitchoverRequest struct {
	// To is the member to promote; empty lets the leader choose.
	To string `json:"to,omitempty"`
}

// SwitchoverResult is the answer of POST /switchover.
type SwitchoverResult struct {
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// TookMS is from the request until a new leader held the key.
	TookMS int64  `json:"took_ms"`
	Error  string `json:"error,omitempty"`
}

func (a *Agent) handleSwitchover(w http.ResponseWriter, r *http.Request) {
	var req SwitchoverRequest
	if r.ContentLength != 0 {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, SwitchoverResult{Error: "bad request body: " + err.Error()})
			return
		}
	}
	if to := r.URL.Query().Get("to"); to != "" {
		req.To = to
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
	defer cancel()
	res, code := a.requestSwitchover(ctx, req.To)
	writeJSON(w, code, res)
}

// requestSwitchover records the request and waits for its outcome.
func (a *Agent) requestSwitchover(ctx context.Context, to string) (SwitchoverResult, int) {
	began := a.now()
	cl, err := a.store.Load(ctx)
	if err != nil {
		return SwitchoverResult{Error: err.Error()}, http.StatusServiceUnavailable
	}
	res := SwitchoverResult{From: cl.Leader, To: to}
	switch {
	case cl.Leader == "":
		res.Error = "no leader"
		return res, http.StatusServiceUnavailable
	case to == cl.Leader:
		res.Error = to + " is already the leader"
		return res, http.StatusBadRequest
	case to != "":
		if _, ok := cl.Members[to]; !ok {
			res.Error = to + " is not a member"
			return res, http.StatusBadRequest
		}
	}
	if cl.Switchover != nil && cl.Switchover.Error == "" && a.now().Sub(cl.Switchover.At) < switchoverRequestTTL {
		res.Error = "a switchover is already in progress"
		return res, http.StatusConflict
	}
	sw := dcs.Switchover{From: cl.Leader, To: to, At: a.now().UTC()}
	if err := a.store.RequestSwitchover(ctx, sw); err != nil {
		res.Error = err.Error()
		return res, http.StatusServiceUnavailable
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			res.Error = "no new leader in time: " + ctx.Err().Error()
			return res, http.StatusGatewayTimeout
		case <-t.C:
		}
		cl, err := a.store.Load(ctx)
		if err != nil {
			continue
		}
		if cur := cl.Switchover; cur != nil && cur.Error != "" && cur.At.Equal(sw.At) {
			res.Error = cur.Error
			_ = a.store.ClearSwitchover(ctx)
			return res, http.StatusConflict
		}
		if cl.Leader != "" && cl.Leader != sw.From {
			if m, ok := cl.Members[cl.Leader]; ok && m.Role == dcs.RolePrimary {
				res.To = cl.Leader
				res.TookMS = a.now().Sub(began).Milliseconds()
				return res, http.StatusOK
			}
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// RunAPI serves h on ln until ctx ends.
func RunAPI(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("agent api: %w", err)
	}
	return nil
}
