package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A Fault breaks one thing. Inject returns the target's description and
// the function that heals the fault (nil when the cluster heals itself,
// as after a killed postmaster); the campaign calls heal after Hold.
type Fault struct {
	Name string
	// Hold draws how long the fault lasts before heal runs.
	Hold   func(r *rand.Rand) time.Duration
	Inject func(ctx context.Context, c *Cluster, r *rand.Rand) (target string, heal func() error, err error)
}

// ttl is the agents' leader lease (the default).
const ttl = 4 * time.Second

func between(lo, hi time.Duration) func(r *rand.Rand) time.Duration {
	return func(r *rand.Rand) time.Duration { return lo + time.Duration(r.Int64N(int64(hi-lo)+1)) }
}

// Faults is every fault the campaign draws from.
var Faults = []Fault{
	{Name: "kill-primary-postmaster", Hold: between(0, 0), Inject: killPrimaryPostmaster},
	{Name: "kill-leader-agent", Hold: between(time.Second, 8*time.Second), Inject: killLeaderAgent},
	{Name: "pause-leader-agent", Hold: between(ttl+time.Second, ttl+5*time.Second), Inject: pauseLeaderAgent},
	{Name: "cut-leader-from-etcd", Hold: between(2*time.Second, 10*time.Second), Inject: cutLeaderFromEtcd},
	{Name: "cut-leader-from-standbys", Hold: between(2*time.Second, 10*time.Second), Inject: cutLeaderFromStandbys},
	{Name: "cut-proxy-from-leader", Hold: between(2*time.Second, 10*time.Second), Inject: cutProxyFromLeader},
	{Name: "delete-leader-datadir", Hold: between(0, 0), Inject: deleteLeaderDataDir},
	{Name: "switchover", Hold: between(0, 0), Inject: switchover},
	{Name: "restart-standby", Hold: between(time.Second, 8*time.Second), Inject: restartStandby},
	{Name: "restart-etcd", Hold: between(time.Second, 6*time.Second), Inject: restartEtcd},
}

// FaultByName finds a fault.
func FaultByName(name string) (Fault, bool) {
	for _, f := range Faults {
		if f.Name == name {
			return f, true
		}
	}
	return Fault{}, false
}

func killPrimaryPostmaster(_ context.Context, c *Cluster, _ *rand.Rand) (string, func() error, error) {
	ld, err := c.Leader()
	if err != nil {
		return "", nil, err
	}
	pid, err := postmasterPID(ld.DataDir)
	if err != nil {
		return ld.Name, nil, err
	}
	return fmt.Sprintf("%s (pid %d)", ld.Name, pid), nil, syscall.Kill(pid, syscall.SIGKILL)
}

func killLeaderAgent(_ context.Context, c *Cluster, _ *rand.Rand) (string, func() error, error) {
	ld, err := c.Leader()
	if err != nil {
		return "", nil, err
	}
	ld.Agent.Kill() // its PostgreSQL keeps running as a primary
	return ld.Name, ld.Agent.Start, nil
}

func pauseLeaderAgent(_ context.Context, c *Cluster, _ *rand.Rand) (string, func() error, error) {
	ld, err := c.Leader()
	if err != nil {
		return "", nil, err
	}
	if err := ld.Agent.Signal(syscall.SIGSTOP); err != nil {
		return ld.Name, nil, err
	}
	return ld.Name, func() error { return ld.Agent.Signal(syscall.SIGCONT) }, nil
}

// cut drops traffic between host a and the addresses of bs in the chosen
// directions and returns the description and the heal.
func cut(c *Cluster, r *rand.Rand, a string, aIP string, bs map[string]string) (string, func() error, error) {
	dir := []string{"both", "out", "in"}[r.IntN(3)]
	type drop struct{ from, to string }
	var drops []drop
	var names []string
	for b, bIP := range bs {
		names = append(names, b)
		if dir != "in" {
			drops = append(drops, drop{a, bIP})
		}
		if dir != "out" {
			drops = append(drops, drop{b, aIP})
		}
	}
	heal := func() error {
		var first error
		for _, d := range drops {
			if err := c.Net.Undrop(d.from, d.to); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	for _, d := range drops {
		if err := c.Net.Drop(d.from, d.to); err != nil {
			_ = heal()
			return "", nil, err
		}
	}
	arrow := map[string]string{"both": "<-x->", "out": "-x->", "in": "<-x-"}[dir]
	return fmt.Sprintf("%s %s %s", a, arrow, strings.Join(names, ",")), heal, nil
}

func cutLeaderFromEtcd(_ context.Context, c *Cluster, r *rand.Rand) (string, func() error, error) {
	ld, err := c.Leader()
	if err != nil {
		return "", nil, err
	}
	return cut(c, r, ld.Name, ld.IP, map[string]string{"etcd": c.EtcdIP})
}

func cutLeaderFromStandbys(_ context.Context, c *Cluster, r *rand.Rand) (string, func() error, error) {
	ld, err := c.Leader()
	if err != nil {
		return "", nil, err
	}
	bs := map[string]string{}
	for _, m := range c.Members {
		if m != ld {
			bs[m.Name] = m.IP
		}
	}
	return cut(c, r, ld.Name, ld.IP, bs)
}

func cutProxyFromLeader(_ context.Context, c *Cluster, r *rand.Rand) (string, func() error, error) {
	ld, err := c.Leader()
	if err != nil {
		return "", nil, err
	}
	p := c.Proxies[r.IntN(len(c.Proxies))]
	return cut(c, r, p.Name, p.IP, map[string]string{ld.Name: ld.IP})
}

func deleteLeaderDataDir(_ context.Context, c *Cluster, _ *rand.Rand) (string, func() error, error) {
	ld, err := c.Leader()
	if err != nil {
		return "", nil, err
	}
	return ld.Name, nil, os.RemoveAll(ld.DataDir)
}

// switchover runs `pgrouter switchover` against a random agent's API, as
// an operator would.
func switchover(ctx context.Context, c *Cluster, r *rand.Rand) (string, func() error, error) {
	ld, err := c.Leader()
	if err != nil {
		return "", nil, err
	}
	via := c.Members[r.IntN(len(c.Members))]
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, c.bin, "switchover", "--force", "--api", via.API(), "--timeout", "60s").CombinedOutput()
	target := fmt.Sprintf("%s via %s: %s", ld.Name, via.Name, strings.TrimSpace(string(out)))
	if err != nil {
		return target, nil, fmt.Errorf("pgrouter switchover: %v: %s", err, out)
	}
	return target, nil, nil
}

// restartStandby kills a standby's agent and its PostgreSQL with SIGKILL,
// and starts the agent again when healed.
func restartStandby(_ context.Context, c *Cluster, r *rand.Rand) (string, func() error, error) {
	ld, err := c.Leader()
	if err != nil {
		return "", nil, err
	}
	var standbys []*Member
	for _, m := range c.Members {
		if m != ld {
			standbys = append(standbys, m)
		}
	}
	m := standbys[r.IntN(len(standbys))]
	m.Agent.Kill()
	if pid, err := postmasterPID(m.DataDir); err == nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; i < 100 && processAlive(pid); i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	return m.Name, m.Agent.Start, nil
}

func restartEtcd(_ context.Context, c *Cluster, _ *rand.Rand) (string, func() error, error) {
	c.Etcd.Kill()
	return "etcd", c.Etcd.Start, nil
}

// postmasterPID reads the server's PID from postmaster.pid.
func postmasterPID(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}
