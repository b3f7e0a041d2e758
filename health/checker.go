package health

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgrouter/pgrouter/topology"
)

// checker probes one member on its own goroutine, every Interval, and keeps
// the newest Health in latest. It never waits for the monitor: it stores the
// result and pokes notify, which must not block.
type checker struct {
	member   topology.Member
	cfg      Config
	prober   prober
	duration prometheus.Observer
	notify   func()
	latest   atomic.Pointer[topology.Health] // nil until the first probe
	health   topology.Health                 // owned by run
	failures int                             // consecutive failures, owned by run
	stop     context.CancelFunc
	done     chan struct{} // closed when run returns
}

// run probes until ctx ends, then closes the connection and done.
func (c *checker) run(ctx context.Context) {
	defer close(c.done)
	defer c.prober.close()
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		c.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *checker) check(ctx context.Context) {
	start := time.Now()
	got, err := c.prober.probe(ctx)
	took := time.Since(start)
	if ctx.Err() != nil {
		return // stopped mid-probe: the failure is ours, not the member's
	}
	c.duration.Observe(took.Seconds())
	c.health, c.failures = observe(c.health, c.failures, got, err, took, start.Add(took), c.cfg.FailureThreshold)
	h := c.health
	c.latest.Store(&h)
	c.notify()
}
