// Package configs holds pgrouter's configuration: plain structs read from
// YAML, defaults, and validation that reports every problem at once. Each
// part is converted to the owning package's own Config by cmd/pgrouter.
package configs

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pgrouter/pgrouter/health"
)

// Config is the whole configuration of `pgrouter proxy`.
type Config struct {
	Log       Log       `yaml:"log"`
	Proxy     Proxy     `yaml:"proxy"`
	Admin     Admin     `yaml:"admin"`
	Routing   Routing   `yaml:"routing"`
	Discovery Discovery `yaml:"discovery"`
	Health    Health    `yaml:"health"`
}

// Log configures the zap logger.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is console or json. Default console.
	Format string `yaml:"format"`
}

// Proxy configures the client-facing listeners and the server links.
type Proxy struct {
	// Listen is the single endpoint: the primary, or a standby for
	// sessions that declare themselves read-only. Default: none.
	Listen string `yaml:"listen"`
	// ListenRW always routes to the primary. Default: none.
	ListenRW string `yaml:"listenRW"`
	// ListenRO routes to a hot standby. Default: none.
	ListenRO string `yaml:"listenRO"`
	// MaxClientConns caps open client connections per listener. Default
	// 0: no cap.
	MaxClientConns int `yaml:"maxClientConns"`
	// StartupTimeout bounds a client's startup packet and its
	// authentication. Default 15s.
	StartupTimeout time.Duration `yaml:"startupTimeout"`
	// PrimaryWait holds read-write sessions while there is no primary.
	// Default 15s.
	PrimaryWait time.Duration `yaml:"primaryWait"`
	// DrainTimeout is how long SIGTERM lets sessions finish. Default 30s.
	DrainTimeout time.Duration `yaml:"drainTimeout"`
	// MaxStartupPacket caps the startup packet in bytes. Default 10000.
	MaxStartupPacket int `yaml:"maxStartupPacket"`
	// TLSCertFile and TLSKeyFile enable TLS for clients. Default: none
	// (SSLRequest is answered N).
	TLSCertFile string `yaml:"tlsCertFile"`
	TLSKeyFile  string `yaml:"tlsKeyFile"`
	// ServerSSLMode is the sslmode of links to PostgreSQL: disable,
	// prefer, require, verify-ca or verify-full. Default prefer.
	ServerSSLMode string `yaml:"serverSSLMode"`
	// ServerCAFile verifies servers for verify-ca/verify-full. Default:
	// the system roots.
	ServerCAFile string `yaml:"serverCAFile"`
	// ServerConnectTimeout bounds dialing a member. Default 5s.
	ServerConnectTimeout time.Duration `yaml:"serverConnectTimeout"`
}

// Admin configures the HTTP admin server.
type Admin struct {
	// Listen is host:port for /healthz, /readyz, /metrics and /api/v1.
	// Default: none (no admin server).
	Listen string `yaml:"listen"`
}

// Routing configures how read-only sessions choose a standby.
type Routing struct {
	// Balance is round-robin or least-connections. Default round-robin.
	Balance string `yaml:"balance"`
	// MaxReplicaLagBytes skips standbys further behind. Default 0: no limit.
	MaxReplicaLagBytes uint64 `yaml:"maxReplicaLagBytes"`
	// MaxReplicaLag skips standbys whose replay is older. Default 0: no limit.
	MaxReplicaLag time.Duration `yaml:"maxReplicaLag"`
	// FallbackToPrimary sends read-only sessions to the primary when no
	// standby is usable. Default true.
	FallbackToPrimary *bool `yaml:"fallbackToPrimary"`
}

// Discovery says where the member list comes from.
type Discovery struct {
	// Kind is static or etcd. Default static.
	Kind string `yaml:"kind"`
	// Backends is the static member list, host:port each.
	Backends []string `yaml:"backends"`
	// EtcdEndpoints (kind etcd) are the etcd endpoints where pgrouter
	// agents record their members and leader.
	EtcdEndpoints []string `yaml:"etcdEndpoints"`
	// Scope (kind etcd) is the agents' cluster name.
	Scope string `yaml:"scope"`
}

// Health configures the health checkers (see health.Config for each
// field's default).
type Health struct {
	health.Config `yaml:",inline"`
	// PasswordFile holds the health user's password. The environment
	// variable PGROUTER_HEALTH_PASSWORD wins over it. Never a flag.
	PasswordFile string `yaml:"passwordFile"`
}

// Defaults returns the configuration with every default filled in.
func Defaults() Config {
	t := true
	return Config{
		Log: Log{Level: "info", Format: "console"},
		Proxy: Proxy{
			StartupTimeout:       15 * time.Second,
			PrimaryWait:          15 * time.Second,
			DrainTimeout:         30 * time.Second,
			MaxStartupPacket:     10000,
			ServerSSLMode:        "prefer",
			ServerConnectTimeout: 5 * time.Second,
		},
		Routing:   Routing{Balance: "round-robin", FallbackToPrimary: &t},
		Discovery: Discovery{Kind: "static"},
		Health:    Health{Config: health.Config{}.WithDefaults()},
	}
}

// Load reads a YAML file over the defaults. Unknown keys are errors, so a
// typo is not silently ignored.
func Load(path string) (Config, error) {
	c := Defaults()
	if path == "" {
		return c, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("parse %s: %w", path, err)
	}
	return c, nil
}

// ResolveSecrets fills the health password from the environment or its
// file.
func (c *Config) ResolveSecrets() error {
	if v, ok := os.LookupEnv("PGROUTER_HEALTH_PASSWORD"); ok {
		c.Health.Password = v
		return nil
	}
	if c.Health.PasswordFile != "" {
		b, err := os.ReadFile(c.Health.PasswordFile)
		if err != nil {
			return fmt.Errorf("health password file: %w", err)
		}
		c.Health.Password = strings.TrimRight(string(b), "\r\n")
	}
	return nil
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	addr := func(field, v string) {
		if v == "" {
			return
		}
		if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port", field, v))
		}
	}
	p := c.Proxy
	if p.Listen == "" && p.ListenRW == "" && p.ListenRO == "" {
		errs = append(errs, errors.New("no listener: set at least one of --listen, --listen-rw, --listen-ro"))
	}
	addr("listen", p.Listen)
	addr("listen-rw", p.ListenRW)
	addr("listen-ro", p.ListenRO)
	addr("admin-listen", c.Admin.Listen)
	seen := map[string]string{}
	for name, v := range map[string]string{"listen": p.Listen, "listen-rw": p.ListenRW, "listen-ro": p.ListenRO, "admin-listen": c.Admin.Listen} {
		if v == "" {
			continue
		}
		if other, dup := seen[v]; dup && !strings.HasSuffix(v, ":0") {
			errs = append(errs, fmt.Errorf("%s and %s both use %s", name, other, v))
		}
		seen[v] = name
	}
	if p.MaxClientConns < 0 {
		errs = append(errs, errors.New("max-client-conns must not be negative"))
	}
	if p.MaxStartupPacket != 0 && (p.MaxStartupPacket < 64 || p.MaxStartupPacket > 1<<20) {
		errs = append(errs, fmt.Errorf("max-startup-packet %d is outside 64..1048576", p.MaxStartupPacket))
	}
	if (p.TLSCertFile == "") != (p.TLSKeyFile == "") {
		errs = append(errs, errors.New("tls-cert and tls-key must be given together"))
	}
	switch p.ServerSSLMode {
	case "", "disable", "prefer", "require", "verify-ca", "verify-full":
	default:
		errs = append(errs, fmt.Errorf("server-sslmode %q: want disable, prefer, require, verify-ca or verify-full", p.ServerSSLMode))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"startup-timeout", p.StartupTimeout}, {"drain-timeout", p.DrainTimeout}, {"server-connect-timeout", p.ServerConnectTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", d.name))
		}
	}
	switch c.Routing.Balance {
	case "", "round-robin", "least-connections":
	default:
		errs = append(errs, fmt.Errorf("balance %q: want round-robin or least-connections", c.Routing.Balance))
	}
	if c.Routing.MaxReplicaLag < 0 {
		errs = append(errs, errors.New("max-replica-lag must not be negative"))
	}
	switch c.Discovery.Kind {
	case "", "static":
		if len(c.Discovery.Backends) == 0 {
			errs = append(errs, errors.New("static discovery needs --backends"))
		}
		for _, b := range c.Discovery.Backends {
			addr("backends", b)
		}
	case "etcd":
		if len(c.Discovery.EtcdEndpoints) == 0 {
			errs = append(errs, errors.New("etcd discovery needs --etcd-endpoints"))
		}
		if c.Discovery.Scope == "" {
			errs = append(errs, errors.New("etcd discovery needs --scope"))
		}
	default:
		errs = append(errs, fmt.Errorf("discovery %q is not supported (want static or etcd)", c.Discovery.Kind))
	}
	if err := c.Health.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log level %q: want debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "", "console", "json":
	default:
		errs = append(errs, fmt.Errorf("log format %q: want console or json", c.Log.Format))
	}
	return errors.Join(errs...)
}
