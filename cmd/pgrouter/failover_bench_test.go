package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFailoverBench measures unplanned failover as a client sees it: N
// trials of kill -9 of the primary's postmaster while a writer inserts
// through the proxy's read-write port. Per trial: the time from the kill
// to the first acknowledged write afterwards, and to the new leader's API
// answering /primary; the errors the client saw. At the end: acknowledged
// writes missing on the last primary. It runs only from bench/failover.sh
// (PGR_FAILOVER_TRIALS set), with binaries built without -race, and writes
// a Markdown table to PGR_FAILOVER_OUT.
func TestFailoverBench(t *testing.T) {
	trials, _ := strconv.Atoi(os.Getenv("PGR_FAILOVER_TRIALS"))
	if trials <= 0 {
		t.Skip("set PGR_FAILOVER_TRIALS (run bench/failover.sh)")
	}
	sync := os.Getenv("PGR_FAILOVER_SYNC") != "0"
	fault := os.Getenv("PGR_FAILOVER_FAULT")
	if fault == "" {
		fault = "kill"
	}
	if fault != "kill" && fault != "switchover" {
		t.Fatalf("PGR_FAILOVER_FAULT=%q: want kill or switchover", fault)
	}
	var extra []string
	if f := os.Getenv("PGR_FAILOVER_AGENT_FLAGS"); f != "" {
		extra = strings.Fields(f)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "pgrouter")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build: %v", err)
	}
	c := startAgentCluster(t, agentOptions{synchronous: sync, bin: bin, extra: extra})
	mustExecProxy(t, c, "CREATE TABLE acked (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
	w := startWriter(t, c.proxy.RW, 1)

	type trial struct {
		from, to          string
		firstWrite, agent time.Duration
		errors            int
	}
	var rs []trial
	for i := range trials {
		ld := c.waitHealthy(120 * time.Second)
		before := w.count()
		eventually(t, 20*time.Second, "writes flowing", func() error {
			if w.count() < before+50 {
				return fmt.Errorf("%d writes since healthy", w.count()-before)
			}
			return nil
		})
		errs0 := w.errorCount()
		var killed time.Time
		if fault == "kill" {
			pid, err := ld.postmasterPID()
			if err != nil {
				t.Fatal(err)
			}
			killed = time.Now()
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		} else {
			killed = time.Now()
			if out, err := exec.Command(bin, "switchover", "--force", "--api", ld.API).CombinedOutput(); err != nil {
				t.Fatalf("switchover: %v\n%s", err, out)
			}
		}
		var r trial
		r.from = ld.Name
		eventually(t, 60*time.Second, "a new leader", func() error {
			nl, err := c.leader()
			if err != nil || nl == ld {
				return fmt.Errorf("no new leader: %v", err)
			}
			if r.agent == 0 {
				r.agent, r.to = time.Since(killed), nl.Name
			}
			return nil
		})
		eventually(t, 60*time.Second, "a write acknowledged after the kill", func() error {
			at, ok := w.firstAckAfter(killed, ld.PGPort)
			if !ok {
				return fmt.Errorf("none yet")
			}
			r.firstWrite = at.Sub(killed)
			return nil
		})
		r.errors = w.errorCount() - errs0
		rs = append(rs, r)
		t.Logf("trial %d: %s -> %s, first write after %v, new leader's /primary after %v, %d client errors",
			i+1, r.from, r.to, r.firstWrite.Round(time.Millisecond), r.agent.Round(time.Millisecond), r.errors)
	}
	final := c.waitHealthy(120 * time.Second)
	acked, errs, longest := w.finish()
	lost := missingRows(t, final.PGAddr, acked)

	var firsts, agents []time.Duration
	for _, r := range rs {
		firsts, agents = append(firsts, r.firstWrite), append(agents, r.agent)
	}
	slices.Sort(firsts)
	slices.Sort(agents)
	what := map[string]string{"kill": "kill -9 of the primary's postmaster", "switchover": "planned switchover (pgrouter switchover)"}[fault]
	mode := "asynchronous"
	if sync {
		mode = "synchronous (--synchronous)"
	}
	var b strings.Builder
	leases := "agent lease times: defaults (ttl 4s, renew deadline 2s, retry period 500ms)"
	if len(extra) > 0 {
		leases = "agent flags `" + strings.Join(extra, " ") + "`, defaults otherwise"
	}
	fmt.Fprintf(&b, "Fault: %s. Mode: %s; %s; proxy health interval 200ms.\n\n", what, mode, leases)
	fmt.Fprintf(&b, "| trial | old primary | new primary | fault → first write acknowledged by the new primary | fault → new leader's /primary 200 | client errors |\n|---:|---|---|---:|---:|---:|\n")
	for i, r := range rs {
		fmt.Fprintf(&b, "| %d | %s | %s | %v | %v | %d |\n", i+1, r.from, r.to, r.firstWrite.Round(time.Millisecond), r.agent.Round(time.Millisecond), r.errors)
	}
	fmt.Fprintf(&b, "\n- fault → first write acknowledged by the new primary, through the rw port: median %v, worst %v (best %v)\n",
		median(firsts).Round(time.Millisecond), firsts[len(firsts)-1].Round(time.Millisecond), firsts[0].Round(time.Millisecond))
	fmt.Fprintf(&b, "- fault → new leader's API answers /primary: median %v, worst %v\n",
		median(agents).Round(time.Millisecond), agents[len(agents)-1].Round(time.Millisecond))
	fmt.Fprintf(&b, "- client errors: %d over %d trials (failed statements and failed reconnects)\n", errs, trials)
	fmt.Fprintf(&b, "- acknowledged writes: %d, lost: %d\n", len(acked), len(lost))
	fmt.Fprintf(&b, "- longest gap between two acknowledged writes: %v\n", longest.Round(time.Millisecond))
	t.Logf("\n%s", b.String())
	if out := os.Getenv("PGR_FAILOVER_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if sync && len(lost) > 0 {
		t.Errorf("synchronous mode lost %d acknowledged writes, e.g. %v", len(lost), lost[:min(5, len(lost))])
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	if len(ds)%2 == 1 {
		return ds[len(ds)/2]
	}
	return (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
}
