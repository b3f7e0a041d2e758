package health

import (
	"errors"
	"fmt"
	"time"
)

// Config is how the health checkers probe members. A zero field takes its
// default (see WithDefaults), so the zero Config works.
type Config struct {
	// Interval is the time between probes of one member; default 500ms.
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds the probe query; default 1s.
	Timeout time.Duration `yaml:"timeout"`
	// ConnectTimeout bounds opening the probe connection, which stays open
	// between probes; default 1s.
	ConnectTimeout time.Duration `yaml:"connectTimeout"`
	// FailureThreshold is how many consecutive failed probes mark a member
	// down; default 3. A role change or a "not accepting connections" reply
	// takes effect at once.
	FailureThreshold int `yaml:"failureThreshold"`
	// User logs in for probes; default "postgres". It needs pg_monitor (or
	// superuser) to read the timeline and lag.
	User string `yaml:"user"`
	// Password for User; default empty (trust, or ~/.pgpass).
	Password string `yaml:"password"`
	// Database to connect to; default "postgres".
	Database string `yaml:"database"`
	// SSLMode is libpq's sslmode; default "prefer".
	SSLMode string `yaml:"sslMode"`
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = 500 * time.Millisecond
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Second
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = time.Second
	}
	if c.FailureThreshold <= 0 {
		c.FailureThreshold = 3
	}
	if c.User == "" {
		c.User = "postgres"
	}
	if c.Database == "" {
		c.Database = "postgres"
	}
	if c.SSLMode == "" {
		c.SSLMode = "prefer"
	}
	return c
}

// Validate reports every problem at once. Zero values are valid: they mean
// the default.
func (c Config) Validate() error {
	var errs []error
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("health interval %v is negative", c.Interval))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("health timeout %v is negative", c.Timeout))
	}
	if c.ConnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("health connectTimeout %v is negative", c.ConnectTimeout))
	}
	if c.FailureThreshold < 0 {
		errs = append(errs, fmt.Errorf("health failureThreshold %d is negative", c.FailureThreshold))
	}
	switch c.SSLMode {
	case "", "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
	default:
		errs = append(errs, fmt.Errorf("health sslMode %q is not a libpq sslmode", c.SSLMode))
	}
	return errors.Join(errs...)
}
