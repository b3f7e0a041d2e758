package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/topology"
)

// TestDashboardAssetsSelfContained: the page must work on a host with no
// network, so no asset may load anything from another origin.
func TestDashboardAssetsSelfContained(t *testing.T) {
	remote := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?(https?:)?//|fetch\(\s*["']https?:`)
	err := fs.WalkDir(ui, "ui", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := ui.ReadFile(path)
		if err != nil {
			return err
		}
		if m := remote.Find(b); m != nil {
			t.Errorf("%s loads from the network: %q", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDashboardServed(t *testing.T) {
	feed := &topology.Feed{}
	feed.Publish(&topology.Snapshot{Version: 1, Members: []topology.MemberState{
		{Member: topology.Member{Name: "a", Addr: "127.0.0.1:1"}, Role: topology.RolePrimary,
			Health: topology.Health{Up: true, AcceptsConnections: true, Role: topology.RolePrimary}},
	}})
	tl := NewTimeline(10)
	tl.Add(topology.Event{Member: "a", Kind: "role", From: "unknown", To: "primary"})
	srv, err := New("127.0.0.1:0", feed, Hooks{Timeline: tl}, prometheus.NewRegistry(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	base := "http://" + srv.Addr().String()
	for path, want := range map[string]string{"/": "<title>pgrouter</title>", "/ui/app.js": "EventSource", "/ui/style.css": "#timeline"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %s, want %q in the body", path, resp.Status, want)
		}
	}

	// The stream sends the state at once, then again when the timeline
	// grows; Run's end closes it.
	resp, err := http.Get(base + "/api/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	next := func() dashboardState {
		t.Helper()
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var st dashboardState
				if err := json.Unmarshal([]byte(data), &st); err != nil {
					t.Fatal(err)
				}
				return st
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return dashboardState{}
	}
	if st := next(); st.Topology.Primary != "a" || len(st.Timeline) != 1 {
		t.Fatalf("first state: primary %q, %d events", st.Topology.Primary, len(st.Timeline))
	}
	tl.Add(topology.Event{At: time.Now(), Member: "a", Kind: "availability", From: "up", To: "down"})
	for st := next(); len(st.Timeline) != 2; st = next() {
	}
}
