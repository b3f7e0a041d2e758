// Package election is the agent that runs beside each PostgreSQL server:
// it takes part in the leader election through a consensus store (package
// dcs), promotes, fences and rejoins its server, manages synchronous
// replication, runs planned switchovers and serves a small HTTP API.
//
// The shape follows client-go's leaderelection: the agent acquires the
// leader lease, then runs the leader loop under its own context while the
// caller keeps renewing; when renewing fails the lease is given up, the
// server fenced, the leader loop cancelled and waited for. There is never
// more than one leader loop. The choice of the member to promote is a pure
// function (Choose), and PostgreSQL is driven through the Postgres
// interface.
package election

import (
	"errors"
	"fmt"
	"time"

	"github.com/pgrouter/pgrouter/dcs"
)

// Config is the agent's election behaviour. A zero duration takes its
// default (see WithDefaults).
type Config struct {
	// Name is this member's name: letters, digits, '-', '_', '.'.
	Name string `yaml:"name"`
	// Scope names the cluster in the consensus store.
	Scope string `yaml:"scope"`
	Rules `yaml:",inline"`
}

// Rules are the lease times and failover rules of an election: the part
// of the agent's configuration under `election:`. A zero field takes its
// default.
type Rules struct {
	// TTL is the leader lease: a follower may take over this long after the
	// leader's last renewal. Whole seconds. Default 4s.
	TTL time.Duration `yaml:"ttl"`
	// RenewDeadline is how long the leader keeps trying to renew before it
	// fences itself (stops PostgreSQL). Default 2s.
	RenewDeadline time.Duration `yaml:"renewDeadline"`
	// RetryPeriod is the loop interval: renewals, member publishing and
	// health checks of the local server. Default 500ms.
	RetryPeriod time.Duration `yaml:"retryPeriod"`
	// MaxLagOnFailover excludes standbys further behind the old primary's
	// last reported position, in bytes. Default 1 MiB; 0 means the default.
	MaxLagOnFailover uint64 `yaml:"maxLagOnFailover"`
	// Synchronous manages synchronous_standby_names and allows only the
	// synchronous standby to be promoted. Default false.
	Synchronous bool `yaml:"synchronous"`
	// RejoinTimeout is how long a standby may fail to stream from the
	// leader before the agent rewinds (or re-clones) it. Default 5s.
	RejoinTimeout time.Duration `yaml:"rejoinTimeout"`
	// UnhealthyTimeout is how long the leader keeps the lease while its
	// server runs but does not answer queries. Default 3s.
	UnhealthyTimeout time.Duration `yaml:"unhealthyTimeout"`
}

// Defaults of Config.
const (
	DefaultTTL              = 4 * time.Second
	DefaultRenewDeadline    = 2 * time.Second
	DefaultRetryPeriod      = 500 * time.Millisecond
	DefaultMaxLagOnFailover = 1 << 20
	DefaultRejoinTimeout    = 5 * time.Second
	DefaultUnhealthyTimeout = 3 * time.Second
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = DefaultRenewDeadline
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = DefaultRetryPeriod
	}
	if c.MaxLagOnFailover == 0 {
		c.MaxLagOnFailover = DefaultMaxLagOnFailover
	}
	if c.RejoinTimeout == 0 {
		c.RejoinTimeout = DefaultRejoinTimeout
	}
	if c.UnhealthyTimeout == 0 {
		c.UnhealthyTimeout = DefaultUnhealthyTimeout
	}
	return c
}

// Validate reports every problem at once, zero values counting as their
// defaults. The lease arithmetic: a follower may take the lease as early as
// TTL − 1 s after the last renewal it saw (stores count whole seconds), and
// the leader gives up at most RenewDeadline + RetryPeriod after its last
// renewal, so fencing is only sound when
//
//	TTL > RenewDeadline + RetryPeriod + 1s
func (c Config) Validate() error {
	var errs []error
	if !dcs.ValidName(c.Name) {
		errs = append(errs, fmt.Errorf("name %q: want 1-63 letters, digits, '-', '_' or '.'", c.Name))
	}
	if !dcs.ValidName(c.Scope) {
		errs = append(errs, fmt.Errorf("scope %q: want 1-63 letters, digits, '-', '_' or '.'", c.Scope))
	}
	d := c.WithDefaults()
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"ttl", c.TTL}, {"renew-deadline", c.RenewDeadline}, {"retry-period", c.RetryPeriod},
		{"rejoin-timeout", c.RejoinTimeout}, {"unhealthy-timeout", c.UnhealthyTimeout}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v must not be negative", f.name, f.v))
		}
	}
	if d.TTL%time.Second != 0 || d.TTL < 2*time.Second {
		errs = append(errs, fmt.Errorf("ttl %v must be whole seconds, at least 2s (leases are granted in seconds)", d.TTL))
	}
	if d.RetryPeriod > 0 && d.RenewDeadline > 0 && d.RetryPeriod >= d.RenewDeadline {
		errs = append(errs, fmt.Errorf("retry-period %v must be shorter than renew-deadline %v", d.RetryPeriod, d.RenewDeadline))
	}
	if need := d.RenewDeadline + d.RetryPeriod + time.Second; d.TTL <= need {
		errs = append(errs, fmt.Errorf("ttl %v must exceed renew-deadline %v + retry-period %v + 1s = %v: "+
			"otherwise a follower may take the lease before the old leader has stopped accepting writes",
			d.TTL, d.RenewDeadline, d.RetryPeriod, need))
	}
	return errors.Join(errs...)
}
