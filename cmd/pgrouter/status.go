package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/dcs"
	"github.com/pgrouter/pgrouter/election"
)

// statusRow is one member as `pgrouter status` prints it. It merges what
// the agents publish (role, state, WAL positions) with what the proxy sees
// (health, lag measured by its own probes, sessions); either side may be
// missing, and the fields it would fill stay empty.
type statusRow struct {
	Member  string `json:"member"`
	Address string `json:"address"`
	// Role is primary or standby (leader/sync/warm flags beside it).
	Role   string `json:"role"`
	Leader bool   `json:"leader,omitempty"`
	Sync   bool   `json:"sync_standby,omitempty"`
	Warm   bool   `json:"warm,omitempty"`
	// State is the agent's state (running, cloning, fenced, ...) or, with
	// only the proxy to ask, its health verdict (up, down, not accepting).
	State    string `json:"state"`
	Timeline uint32 `json:"timeline"`
	// LagBytes is how far the standby's replay is behind the primary;
	// nil when unknown (a primary shows 0).
	LagBytes *uint64 `json:"lag_bytes"`
	// Sessions open through the proxy to this member; nil without --admin.
	Sessions *int `json:"sessions"`
}

// clusterStatus is the whole `pgrouter status` answer (-o json).
type clusterStatus struct {
	Scope   string      `json:"scope,omitempty"`
	Leader  string      `json:"leader"`
	Members []statusRow `json:"members"`
	// Listeners are open sessions per proxy listener (from --admin).
	Listeners map[string]int `json:"listeners,omitempty"`
	Errors    []string       `json:"errors,omitempty"`
}

// proxyTopology is the subset of the proxy's /api/v1/topology we read.
type proxyTopology struct {
	Primary   string         `json:"primary"`
	Members   []proxyMember  `json:"members"`
	Listeners map[string]int `json:"listeners"`
}

type proxyMember struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Role     string `json:"role"`
	Sessions int    `json:"sessions"`
	Health   struct {
		Up                 bool   `json:"up"`
		AcceptsConnections bool   `json:"accepts_connections"`
		Timeline           uint32 `json:"timeline"`
		ReplayLagBytes     uint64 `json:"replay_lag_bytes"`
	} `json:"health"`
}

func statusCommand() *cobra.Command {
	var admin, api, output, scope string
	var etcd []string
	var watch bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the cluster as a table: member, address, role, state, timeline, lag, sessions",
		Long: "status asks the proxy's admin API (--admin) and/or any agent's API (--api), or etcd itself\n" +
			"(--etcd-endpoints and --scope, when no agent answers), and prints one line per member.\n" +
			"It merges what it gets: the agents know roles and states, the proxy knows health and sessions.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			if admin == "" && api == "" && len(etcd) == 0 {
				admin = "127.0.0.1:8432"
			}
			if len(etcd) > 0 && scope == "" {
				return errors.New("--etcd-endpoints needs --scope")
			}
			render := func() error {
				ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
				defer cancel()
				st, err := loadStatus(ctx, admin, api, etcd, scope)
				if err != nil {
					return err
				}
				if output == "json" {
					enc := json.NewEncoder(os.Stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(st)
				}
				if watch {
					fmt.Print("\033[H\033[2J") // clear the terminal, as watch(1) does
					fmt.Println(time.Now().Format(time.TimeOnly), "every", interval)
				}
				return writeStatusTable(os.Stdout, st)
			}
			if !watch {
				return render()
			}
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				if err := render(); err != nil {
					fmt.Fprintln(os.Stderr, "pgrouter status:", err)
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-t.C:
				}
			}
		},
	}
	cmd.Flags().StringVar(&admin, "admin", "", "host:port of the proxy's admin server (default 127.0.0.1:8432 when --api is not given)")
	cmd.Flags().StringVar(&api, "api", "", "host:port of any agent's API")
	cmd.Flags().StringSliceVar(&etcd, "etcd-endpoints", nil, "read the agents' records from etcd instead of an agent's API")
	cmd.Flags().StringVar(&scope, "scope", "", "the agents' cluster name (with --etcd-endpoints)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "refresh until interrupted")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "refresh interval with --watch")
	return cmd
}

// getJSON decodes the JSON answer of GET http://addr/path. Any status code
// is accepted: the agents answer their View with 503 too.
func getJSON(ctx context.Context, addr, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s%s: %s: %.200s", addr, path, resp.Status, b)
	}
	return nil
}

// loadStatus asks the sources given and merges their answers. It fails
// only when every source failed.
func loadStatus(ctx context.Context, admin, api string, etcd []string, scope string) (clusterStatus, error) {
	var view *election.View
	var topo *proxyTopology
	var errs []string
	if api != "" {
		var v election.View
		if err := getJSON(ctx, api, "/status", &v); err != nil {
			errs = append(errs, "agent api: "+err.Error())
		} else {
			view = &v
		}
	}
	if view == nil && len(etcd) > 0 {
		if v, err := etcdView(ctx, etcd, scope); err != nil {
			errs = append(errs, "etcd: "+err.Error())
		} else {
			view = v
		}
	}
	if admin != "" {
		var tp proxyTopology
		if err := getJSON(ctx, admin, "/api/v1/topology", &tp); err != nil {
			errs = append(errs, "proxy admin: "+err.Error())
		} else {
			topo = &tp
		}
	}
	if view == nil && topo == nil {
		return clusterStatus{}, errors.New(strings.Join(errs, "; "))
	}
	st := mergeStatus(view, topo)
	st.Errors = errs
	return st, nil
}

// etcdView reads the agents' records as an agent's /status would show
// them: the leader, the sync record and every member.
func etcdView(ctx context.Context, endpoints []string, scope string) (*election.View, error) {
	store, err := dcs.NewEtcd(dcs.EtcdConfig{Endpoints: endpoints, Scope: scope})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	cl, err := store.Load(ctx)
	if err != nil {
		return nil, err
	}
	v := &election.View{Scope: scope, Leader: cl.Leader, Sync: &cl.Sync}
	for _, m := range cl.Members {
		v.Members = append(v.Members, m)
	}
	return v, nil
}

// mergeStatus builds the rows from an agent's view and the proxy's
// topology, either of which may be nil. Pure.
func mergeStatus(view *election.View, topo *proxyTopology) clusterStatus {
	st := clusterStatus{Members: []statusRow{}}
	rows := map[string]*statusRow{}
	row := func(name string) *statusRow {
		r, ok := rows[name]
		if !ok {
			r = &statusRow{Member: name}
			rows[name] = r
		}
		return r
	}
	if view != nil {
		st.Scope, st.Leader = view.Scope, view.Leader
		var leaderLSN uint64
		for _, m := range view.Members {
			if m.Name == view.Leader {
				leaderLSN = m.LSN()
			}
		}
		for _, m := range view.Members {
			r := row(m.Name)
			r.Address, r.Role, r.State, r.Timeline, r.Warm = m.ConnAddr, m.Role, m.State, m.Timeline, m.Warm
			r.Leader = m.Name == view.Leader
			r.Sync = view.Sync != nil && view.Sync.Standby == m.Name
			switch {
			case r.Leader && m.Role == dcs.RolePrimary:
				r.LagBytes = new(uint64)
			case m.Role == dcs.RoleStandby && leaderLSN > 0:
				lag := uint64(0)
				if pos := replayed(m); leaderLSN > pos {
					lag = leaderLSN - pos
				}
				r.LagBytes = &lag
			}
		}
	}
	if topo != nil {
		if st.Leader == "" {
			st.Leader = topo.Primary
		}
		st.Listeners = topo.Listeners
		for _, m := range topo.Members {
			r := row(m.Name)
			sessions := m.Sessions
			r.Sessions = &sessions
			if r.Address == "" {
				r.Address = m.Addr
			}
			if r.Role == "" {
				r.Role = m.Role
				r.Leader = m.Name == topo.Primary
			}
			if r.State == "" {
				r.State = healthState(m.Health.Up, m.Health.AcceptsConnections)
			} else if !m.Health.Up {
				r.State += ", proxy: down"
			}
			if r.Timeline == 0 {
				r.Timeline = m.Health.Timeline
			}
			// The proxy's lag comes from its own probe of both ends: use
			// it when the agents gave none.
			if r.LagBytes == nil && m.Health.Up {
				lag := m.Health.ReplayLagBytes
				r.LagBytes = &lag
			}
		}
	}
	for _, r := range rows {
		st.Members = append(st.Members, *r)
	}
	slices.SortFunc(st.Members, func(a, b statusRow) int { return strings.Compare(a.Member, b.Member) })
	return st
}

// replayed is how far a standby has applied WAL; a warm standby that
// reports no replay position counts by what it received.
func replayed(m dcs.Member) uint64 {
	if m.ReplayedLSN > 0 {
		return m.ReplayedLSN
	}
	return m.ReceivedLSN
}

func healthState(up, accepts bool) string {
	switch {
	case !up:
		return "down"
	case !accepts:
		return "not accepting connections"
	default:
		return "running"
	}
}

// writeStatusTable prints st as patronictl list does: one line a member.
func writeStatusTable(w io.Writer, st clusterStatus) error {
	title := "cluster"
	if st.Scope != "" {
		title += " " + st.Scope
	}
	leader := st.Leader
	if leader == "" {
		leader = "none (failover under way?)"
	}
	fmt.Fprintf(w, "%s, leader: %s\n", title, leader)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tADDRESS\tROLE\tSTATE\tTL\tLAG\tSESSIONS")
	for _, r := range st.Members {
		role := r.Role
		switch {
		case r.Leader:
			role += " (leader)"
		case r.Sync:
			role += " (sync)"
		}
		if r.Warm {
			role += " (warm)"
		}
		tl, lag, sess := "-", "-", "-"
		if r.Timeline > 0 {
			tl = fmt.Sprint(r.Timeline)
		}
		if r.LagBytes != nil {
			lag = formatBytes(*r.LagBytes)
		}
		if r.Sessions != nil {
			sess = fmt.Sprint(*r.Sessions)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Member, r.Address, role, r.State, tl, lag, sess)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Listeners) > 0 {
		names := make([]string, 0, len(st.Listeners))
		for n := range st.Listeners {
			names = append(names, n)
		}
		slices.Sort(names)
		parts := make([]string, 0, len(names))
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%s %d", n, st.Listeners[n]))
		}
		fmt.Fprintln(w, "sessions by port:", strings.Join(parts, ", "))
	}
	for _, e := range st.Errors {
		fmt.Fprintln(w, "warning:", e)
	}
	return nil
}

// formatBytes prints a byte count in binary units, as pg_size_pretty does.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
