package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestStatusFailoverDashboard drives `pgrouter status`, `pgrouter
// failover` and the proxy's dashboard (in headless Chromium) against a
// real cluster of etcd, three agents and the proxy: the table and JSON
// name every member and the leader, failover refuses what it cannot serve
// with the reason, asks before it acts, and the dashboard shows the new
// primary after it.
func TestStatusFailoverDashboard(t *testing.T) {
	c := startAgentCluster(t, agentOptions{})
	ld := c.waitHealthy(90 * time.Second)
	var standbys []*agentProc
	for _, a := range c.agents {
		if a != ld {
			standbys = append(standbys, a)
		}
	}
	run := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(binPath, args...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	t.Run("status-table", func(t *testing.T) {
		out, err := run("", "status", "--admin", c.proxy.Admin, "--api", standbys[0].API)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		t.Logf("pgrouter status:\n%s", out)
		for _, a := range c.agents {
			line := lineWith(out, a.Name+" ")
			if line == "" || !strings.Contains(line, a.PGAddr) {
				t.Errorf("no line for %s at %s", a.Name, a.PGAddr)
			}
			if (a == ld) != strings.Contains(line, "primary (leader)") {
				t.Errorf("line of %s: %q", a.Name, line)
			}
		}
	})

	t.Run("status-json", func(t *testing.T) {
		out, err := run("", "status", "--admin", c.proxy.Admin, "--api", ld.API, "-o", "json")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var st clusterStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if st.Leader != ld.Name || len(st.Members) != 3 {
			t.Fatalf("leader %q, %d members: %s", st.Leader, len(st.Members), out)
		}
		for _, m := range st.Members {
			if m.Sessions == nil || m.LagBytes == nil || m.Timeline == 0 || m.State == "" {
				t.Errorf("member %s incomplete: %+v", m.Member, m)
			}
		}
	})

	t.Run("status-from-etcd", func(t *testing.T) {
		out, err := run("", "status", "--etcd-endpoints", c.etcd.Client, "--scope", agentScope, "-o", "json")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var st clusterStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if st.Leader != ld.Name || len(st.Members) != 3 || st.Members[0].Sessions != nil {
			t.Fatalf("leader %q, %d members: %s", st.Leader, len(st.Members), out)
		}
	})

	t.Run("failover-refusals", func(t *testing.T) {
		for _, tc := range []struct{ to, want string }{
			{"nosuch", "nosuch is not a member"},
			{ld.Name, "already the leader"},
			{"", "--to NAME is required"},
		} {
			out, err := run("", "failover", "--api", standbys[0].API, "--to", tc.to, "--force")
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("failover --to %q: %v, want an error saying %q:\n%s", tc.to, err, tc.want, out)
			}
		}
		// No answer is no: nothing happens.
		out, err := run("", "failover", "--api", ld.API, "--to", standbys[0].Name)
		if err == nil || !strings.Contains(out, "aborted") {
			t.Errorf("failover without confirmation: %v\n%s", err, out)
		}
		out, err = run("n\n", "failover", "--api", ld.API, "--to", standbys[0].Name)
		if err == nil || !strings.Contains(out, "aborted") {
			t.Errorf("failover answered n: %v\n%s", err, out)
		}
		if now, err := c.leader(); err != nil || now != ld {
			t.Fatalf("leader after refusals: %v %v", now, err)
		}
	})

	t.Run("failover-lag-too-high", func(t *testing.T) {
		lagging := standbys[1]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		sc, err := pgConn(ctx, lagging.PGAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close(ctx)
		if _, err := sc.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
			t.Fatal(err)
		}
		defer func() { _, _ = sc.Exec(context.Background(), "SELECT pg_wal_replay_resume()") }()
		pc, err := pgConn(ctx, ld.PGAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(ctx)
		if _, err := pc.Exec(ctx, "CREATE TABLE IF NOT EXISTS lagfill AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 40000) g"); err != nil {
			t.Fatal(err)
		}
		// Wait until the agents have published the lag, then ask once: a
		// request that got through would stop the primary for nothing.
		eventually(t, 30*time.Second, "the agents see the lag", func() error {
			v, err := ld.status()
			if err != nil {
				return err
			}
			if err := checkFailover(v, lagging.Name, 1<<20); err == nil || !strings.Contains(err.Error(), "lag too high") {
				return fmt.Errorf("check: %v", err)
			}
			return nil
		})
		out, err := run("", "failover", "--api", ld.API, "--to", lagging.Name, "--force")
		if err == nil || !strings.Contains(out, "lag too high") {
			t.Fatalf("failover to a paused standby: %v\n%s", err, out)
		}
		t.Logf("refused: %s", strings.TrimSpace(out))
		if _, err := sc.Exec(ctx, "SELECT pg_wal_replay_resume()"); err != nil {
			t.Fatal(err)
		}
	})

	dash := newDashboard(t, "http://"+c.proxy.Admin+"/")
	if dash != nil {
		dash.waitPrimary(ld.Name)
		dash.screenshot("dashboard-before-failover.png")
	}

	target := standbys[0]
	t.Run("failover-confirmed", func(t *testing.T) {
		c.waitHealthy(60 * time.Second)
		out, err := run("y\n", "failover", "--api", ld.API, "--to", target.Name)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !strings.Contains(out, fmt.Sprintf("failover: %s -> %s", ld.Name, target.Name)) {
			t.Fatalf("output:\n%s", out)
		}
		nl := c.waitHealthy(90 * time.Second)
		if nl != target {
			t.Fatalf("leader %s, want %s", nl.Name, target.Name)
		}
		out, err = run("", "status", "--admin", c.proxy.Admin, "--api", ld.API)
		if err != nil || !strings.Contains(lineWith(out, target.Name+" "), "primary (leader)") {
			t.Fatalf("status after failover: %v\n%s", err, out)
		}
	})

	if dash != nil {
		dash.waitPrimary(target.Name)
		dash.waitText("#timeline", "failover: "+target.Name+" is the new primary")
		dash.screenshot("dashboard-after-failover.png")
	}
}

func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, s) {
			return l
		}
	}
	return ""
}

// dashboard is one headless Chromium tab on the proxy's dashboard.
type dashboard struct {
	t         *testing.T
	ctx       context.Context
	artifacts string
}

// chromiumPath finds Debian's chromium; "" when it is not installed.
func chromiumPath() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// newDashboard opens url in headless Chromium with a fresh profile and no
// background network traffic. Without chromium it returns nil (the test
// goes on without the browser part) unless CI is set, where it fails.
func newDashboard(t *testing.T, url string) *dashboard {
	t.Helper()
	bin := chromiumPath()
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed (make test installs it: apt-get install -y chromium)")
		}
		t.Log("chromium not installed: skipping the dashboard checks (apt-get install -y chromium)")
		return nil
	}
	profile := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	d := &dashboard{t: t, ctx: ctx, artifacts: artifactsDir(t)}
	// The first action on a tab starts the browser and ties it to the
	// context it runs with: run it on the tab's own, not on a timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("chromium: start %s: %v", bin, err)
	}
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, chromedp.Navigate(url), chromedp.WaitVisible("#members")); err != nil {
		t.Fatalf("chromium: open %s: %v", url, err)
	}
	return d
}

// artifactsDir is $PGR_ARTIFACTS, or a directory under the system's
// temporary directory that outlives the test, so screenshots can be kept.
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("PGR_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "pgrouter-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// waitPrimary polls the page until it names want as the primary.
func (d *dashboard) waitPrimary(want string) {
	d.t.Helper()
	eventually(d.t, 60*time.Second, "dashboard shows primary "+want, func() error {
		ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
		defer cancel()
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("primary").dataset.primary`))
		if err != nil {
			return err
		}
		role, err := chromedp.Run(ctx, chromedp.Evaluate[string](
			fmt.Sprintf(`(document.querySelector('#members tr[data-member=%q]') || {dataset: {}}).dataset.role || ""`, want)))
		if err != nil {
			return err
		}
		if got != want || role != "primary" {
			return fmt.Errorf("page says primary %q, %s's row says %q", got, want, role)
		}
		return nil
	})
}

// waitText polls until the element's text contains want.
func (d *dashboard) waitText(sel, want string) {
	d.t.Helper()
	eventually(d.t, 30*time.Second, sel+" shows "+want, func() error {
		ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
		defer cancel()
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%q).innerText`, sel)))
		if err != nil {
			return err
		}
		if !strings.Contains(got, want) {
			return fmt.Errorf("%s: %.300s", sel, got)
		}
		return nil
	})
}

func (d *dashboard) screenshot(name string) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		d.t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(d.artifacts, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		d.t.Fatal(err)
	}
	d.t.Logf("dashboard screenshot: %s", path)
}
