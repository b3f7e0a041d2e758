package configs

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pgrouter/pgrouter/dcs"
	"github.com/pgrouter/pgrouter/election"
)

// Agent is the whole configuration of `pgrouter agent` (see
// configs/agent.example.yaml).
type Agent struct {
	Log Log `yaml:"log"`
	// Name is this member's name. Required, except with dcs kubernetes,
	// where it defaults to the pod's name.
	Name string `yaml:"name"`
	// Scope is the cluster's name in the consensus store. Required.
	Scope string `yaml:"scope"`
	// DCS is the consensus store: etcd or kubernetes. Default etcd.
	DCS string `yaml:"dcs"`
	// Etcd says how to reach etcd.
	Etcd Etcd `yaml:"etcd"`
	// Kubernetes says which pod the agent runs in (dcs kubernetes).
	Kubernetes AgentKubernetes `yaml:"kubernetes"`
	// API is the agent's HTTP API.
	API AgentAPI `yaml:"api"`
	// PostgreSQL is the local server.
	PostgreSQL AgentPostgres `yaml:"postgresql"`
	// Election holds the lease times and failover rules.
	Election election.Rules `yaml:"election"`
}

// Etcd is the etcd connection.
type Etcd struct {
	// Endpoints are host:port or URLs of etcd members. Required.
	Endpoints []string `yaml:"endpoints"`
}

// AgentKubernetes is where an agent with dcs kubernetes runs: the leader
// lease is the Lease pgrouter-<scope> in Namespace, and the member record
// and role label (pgrouter.io/role) go on the pod PodName.
type AgentKubernetes struct {
	// Namespace of the pod and the Lease. Required (in a pod spec:
	// fieldRef metadata.namespace).
	Namespace string `yaml:"namespace"`
	// PodName is the agent's own pod. Required (fieldRef metadata.name).
	// It is also the member name when name is not set.
	PodName string `yaml:"podName"`
	// Kubeconfig is a kubeconfig file; default: the in-cluster
	// ServiceAccount configuration.
	Kubeconfig string `yaml:"kubeconfig"`
}

// AgentAPI is the agent's HTTP API.
type AgentAPI struct {
	// Listen is host:port of /health, /primary, /replica, /status,
	// /switchover and /metrics. Default 127.0.0.1:8008.
	Listen string `yaml:"listen"`
}

// AgentPostgres is how the agent runs its PostgreSQL server.
type AgentPostgres struct {
	// DataDir is PGDATA; the agent creates it (mode 0700) if needed.
	// Required.
	DataDir string `yaml:"dataDir"`
	// Listen is host:port the server listens on and the members and the
	// proxy connect to. Default 127.0.0.1:5432.
	Listen string `yaml:"listen"`
	// BinDir holds initdb, pg_ctl, pg_basebackup, pg_rewind. Default: found
	// on PATH, through pg_config, or in /usr/lib/postgresql/*/bin.
	BinDir string `yaml:"binDir"`
	// SuperUser is the bootstrap superuser. Default postgres.
	SuperUser string `yaml:"superuser"`
	// ReplicationUser streams WAL. Default replicator.
	ReplicationUser string `yaml:"replicationUser"`
	// SuperUserPasswordFile and ReplicationPasswordFile hold the
	// passwords; the environment variables PGROUTER_SUPERUSER_PASSWORD and
	// PGROUTER_REPLICATION_PASSWORD win over them. Never flags.
	SuperUserPasswordFile   string `yaml:"superuserPasswordFile"`
	ReplicationPasswordFile string `yaml:"replicationPasswordFile"`
	// HBA are the pg_hba.conf lines. Default: scram-sha-256 from loopback
	// for all users and for replication.
	HBA []string `yaml:"pgHBA"`
	// Parameters are postgresql.conf settings. The agent's own (listen
	// address, port, replication, synchronous_standby_names) cannot be
	// set here.
	Parameters map[string]string `yaml:"parameters"`
	// InitdbArgs are extra initdb arguments, e.g. --data-checksums.
	InitdbArgs []string `yaml:"initdbArgs"`
	// LogFile is the server log. Default <dataDir>.log.
	LogFile string `yaml:"logFile"`
	// StandbyMode is hot (standbys serve reads) or warm (standbys accept
	// no connections until promoted). Default hot.
	StandbyMode string `yaml:"standbyMode"`

	// Passwords, read from the environment or the files.
	SuperUserPassword   string `yaml:"-"`
	ReplicationPassword string `yaml:"-"`
}

// AgentDefaults returns the agent configuration with every default set.
func AgentDefaults() Agent {
	e := election.Config{}.WithDefaults()
	return Agent{
		Log: Log{Level: "info", Format: "console"},
		DCS: "etcd",
		API: AgentAPI{Listen: "127.0.0.1:8008"},
		PostgreSQL: AgentPostgres{
			Listen:          "127.0.0.1:5432",
			SuperUser:       "postgres",
			ReplicationUser: "replicator",
			StandbyMode:     "hot",
		},
		Election: e.Rules,
	}
}

// LoadAgent reads a YAML file over the defaults; unknown keys are errors.
func LoadAgent(path string) (Agent, error) {
	return loadYAML(path, AgentDefaults())
}

// ElectionConfig is the election package's part.
func (c *Agent) ElectionConfig() election.Config {
	return election.Config{Name: c.Name, Scope: c.Scope, Rules: c.Election}
}

// ResolveSecrets reads the passwords from the environment or their files.
func (c *Agent) ResolveSecrets() error {
	p := &c.PostgreSQL
	var errs []error
	read := func(env, file, what string, dst *string) {
		if v, ok := os.LookupEnv(env); ok {
			*dst = v
			return
		}
		if file == "" {
			return
		}
		b, err := os.ReadFile(file)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s password file: %w", what, err))
			return
		}
		*dst = strings.TrimRight(string(b), "\r\n")
	}
	read("PGROUTER_SUPERUSER_PASSWORD", p.SuperUserPasswordFile, "superuser", &p.SuperUserPassword)
	read("PGROUTER_REPLICATION_PASSWORD", p.ReplicationPasswordFile, "replication", &p.ReplicationPassword)
	return errors.Join(errs...)
}

// Validate reports every problem at once.
func (c *Agent) Validate() error {
	var errs []error
	if err := c.ElectionConfig().Validate(); err != nil {
		errs = append(errs, err)
	}
	switch c.DCS {
	case "", "etcd":
		if len(c.Etcd.Endpoints) == 0 {
			errs = append(errs, errors.New("dcs etcd needs --etcd-endpoints"))
		}
	case "kubernetes":
		k := c.Kubernetes
		if k.Namespace == "" || k.PodName == "" {
			errs = append(errs, errors.New("dcs kubernetes needs --namespace and --pod-name (the pod the agent runs in)"))
		} else {
			if msgs := validation.IsDNS1123Label(k.Namespace); len(msgs) > 0 {
				errs = append(errs, fmt.Errorf("namespace %q: %s", k.Namespace, strings.Join(msgs, "; ")))
			}
			if msgs := validation.IsDNS1123Subdomain(k.PodName); len(msgs) > 0 {
				errs = append(errs, fmt.Errorf("pod-name %q: %s", k.PodName, strings.Join(msgs, "; ")))
			}
		}
		if dcs.ValidName(c.Scope) {
			if err := dcs.ValidKubernetesScope(c.Scope); err != nil {
				errs = append(errs, fmt.Errorf("dcs kubernetes: %w", err))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("dcs %q is not supported (want etcd or kubernetes)", c.DCS))
	}
	p := c.PostgreSQL
	if p.DataDir == "" {
		errs = append(errs, errors.New("--pgdata is required"))
	} else if !filepath.IsAbs(p.DataDir) {
		errs = append(errs, fmt.Errorf("pgdata %q must be an absolute path", p.DataDir))
	}
	for name, v := range map[string]string{"pg-listen": p.Listen, "api-listen": c.API.Listen} {
		if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port", name, v))
		}
	}
	if p.Listen == c.API.Listen {
		errs = append(errs, fmt.Errorf("pg-listen and api-listen both use %s", p.Listen))
	}
	switch p.StandbyMode {
	case "", "hot", "warm":
	default:
		errs = append(errs, fmt.Errorf("standby-mode %q: want hot or warm", p.StandbyMode))
	}
	if p.SuperUser == "" || p.ReplicationUser == "" {
		errs = append(errs, errors.New("superuser and replication-user must not be empty"))
	}
	if p.SuperUserPassword == "" {
		errs = append(errs, errors.New("no superuser password: set PGROUTER_SUPERUSER_PASSWORD or --superuser-password-file"))
	}
	if p.ReplicationPassword == "" && p.ReplicationUser != p.SuperUser {
		errs = append(errs, errors.New("no replication password: set PGROUTER_REPLICATION_PASSWORD or --replication-password-file"))
	}
	for _, l := range p.HBA {
		if strings.TrimSpace(l) == "" || strings.ContainsAny(l, "\n\r") {
			errs = append(errs, fmt.Errorf("pg_hba line %q is empty or spans lines", l))
		}
	}
	for k, v := range p.Parameters {
		if !validParam(k) {
			errs = append(errs, fmt.Errorf("parameter %q is not a setting name", k))
		}
		if strings.ContainsAny(v, "\n\r") {
			errs = append(errs, fmt.Errorf("parameter %s: value spans lines", k))
		}
	}
	errs = append(errs, c.Log.validate()...)
	return errors.Join(errs...)
}

func validParam(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		if !(r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// AgentFlags maps the flags of `pgrouter agent` onto an Agent
// configuration; only flags the user gave override the file.
type AgentFlags struct {
	fs    *pflag.FlagSet
	apply map[string]func(*Agent)
	// ConfigFile is the value of --config.
	ConfigFile string
}

// BindAgentFlags registers the flags of `pgrouter agent`. The names are a
// public interface: other tooling calls them.
func BindAgentFlags(fs *pflag.FlagSet) *AgentFlags {
	f := &AgentFlags{fs: fs, apply: map[string]func(*Agent){}}
	d := AgentDefaults()
	fs.StringVar(&f.ConfigFile, "config", "", "YAML configuration file (flags override it)")
	str := func(name, def, usage string, field func(*Agent) *string) {
		p := fs.String(name, def, usage)
		f.apply[name] = func(c *Agent) { *field(c) = *p }
	}
	dur := func(name string, def time.Duration, usage string, field func(*Agent) *time.Duration) {
		p := fs.Duration(name, def, usage)
		f.apply[name] = func(c *Agent) { *field(c) = *p }
	}
	list := func(name, usage string, field func(*Agent) *[]string) {
		p := fs.StringArray(name, nil, usage)
		f.apply[name] = func(c *Agent) { *field(c) = slices.Clone(*p) }
	}
	str("name", d.Name, "this member's name (required; dcs kubernetes: default --pod-name)", func(c *Agent) *string { return &c.Name })
	str("scope", d.Scope, "the cluster's name in the consensus store (required)", func(c *Agent) *string { return &c.Scope })
	str("dcs", d.DCS, "consensus store: etcd or kubernetes", func(c *Agent) *string { return &c.DCS })
	endpoints := fs.StringSlice("etcd-endpoints", nil, "etcd endpoints, host:port,host:port,...")
	f.apply["etcd-endpoints"] = func(c *Agent) { c.Etcd.Endpoints = slices.Clone(*endpoints) }
	str("namespace", "", "dcs kubernetes: namespace of the agent's pod and of the Lease", func(c *Agent) *string { return &c.Kubernetes.Namespace })
	str("pod-name", "", "dcs kubernetes: the agent's own pod (default member name)", func(c *Agent) *string { return &c.Kubernetes.PodName })
	str("kubeconfig", "", "dcs kubernetes: kubeconfig file (default: in-cluster ServiceAccount)", func(c *Agent) *string { return &c.Kubernetes.Kubeconfig })
	str("pgdata", d.PostgreSQL.DataDir, "PostgreSQL data directory (required)", func(c *Agent) *string { return &c.PostgreSQL.DataDir })
	str("pg-listen", d.PostgreSQL.Listen, "host:port PostgreSQL listens on", func(c *Agent) *string { return &c.PostgreSQL.Listen })
	str("api-listen", d.API.Listen, "host:port of the agent's HTTP API", func(c *Agent) *string { return &c.API.Listen })
	sync := fs.Bool("synchronous", d.Election.Synchronous, "keep a synchronous standby and promote only it (no acknowledged commit lost)")
	f.apply["synchronous"] = func(c *Agent) { c.Election.Synchronous = *sync }
	str("standby-mode", d.PostgreSQL.StandbyMode, "hot (standbys serve reads) or warm (standbys accept no connections)", func(c *Agent) *string { return &c.PostgreSQL.StandbyMode })
	str("pg-bin", d.PostgreSQL.BinDir, "directory of initdb, pg_ctl, pg_rewind, ... (default: PATH, pg_config, /usr/lib/postgresql/*/bin)", func(c *Agent) *string { return &c.PostgreSQL.BinDir })
	str("superuser", d.PostgreSQL.SuperUser, "bootstrap superuser (password: PGROUTER_SUPERUSER_PASSWORD or --superuser-password-file)", func(c *Agent) *string { return &c.PostgreSQL.SuperUser })
	str("replication-user", d.PostgreSQL.ReplicationUser, "replication role (password: PGROUTER_REPLICATION_PASSWORD or --replication-password-file)", func(c *Agent) *string { return &c.PostgreSQL.ReplicationUser })
	str("superuser-password-file", "", "file holding the superuser's password", func(c *Agent) *string { return &c.PostgreSQL.SuperUserPasswordFile })
	str("replication-password-file", "", "file holding the replication role's password", func(c *Agent) *string { return &c.PostgreSQL.ReplicationPasswordFile })
	list("pg-hba", "pg_hba.conf line (repeat; replaces the default loopback scram-sha-256 lines)", func(c *Agent) *[]string { return &c.PostgreSQL.HBA })
	params := fs.StringArray("pg-param", nil, "PostgreSQL setting name=value (repeat)")
	f.apply["pg-param"] = func(c *Agent) {
		if c.PostgreSQL.Parameters == nil {
			c.PostgreSQL.Parameters = map[string]string{}
		}
		for _, kv := range *params {
			k, v, _ := strings.Cut(kv, "=")
			c.PostgreSQL.Parameters[strings.TrimSpace(k)] = v
		}
	}
	list("initdb-arg", "extra initdb argument (repeat)", func(c *Agent) *[]string { return &c.PostgreSQL.InitdbArgs })
	str("pg-log", d.PostgreSQL.LogFile, "PostgreSQL server log file (default <pgdata>.log)", func(c *Agent) *string { return &c.PostgreSQL.LogFile })
	dur("ttl", d.Election.TTL, "leader lease, whole seconds; must exceed renew-deadline + retry-period + 1s", func(c *Agent) *time.Duration { return &c.Election.TTL })
	dur("renew-deadline", d.Election.RenewDeadline, "how long a leader tries to renew before fencing itself", func(c *Agent) *time.Duration { return &c.Election.RenewDeadline })
	dur("retry-period", d.Election.RetryPeriod, "loop interval: renewals, state publishing, checks", func(c *Agent) *time.Duration { return &c.Election.RetryPeriod })
	maxLag := fs.Uint64("max-lag-on-failover", d.Election.MaxLagOnFailover, "bytes a standby may lag and still be promoted")
	f.apply["max-lag-on-failover"] = func(c *Agent) { c.Election.MaxLagOnFailover = *maxLag }
	dur("rejoin-timeout", d.Election.RejoinTimeout, "a standby not streaming this long is rewound or re-cloned", func(c *Agent) *time.Duration { return &c.Election.RejoinTimeout })
	dur("unhealthy-timeout", d.Election.UnhealthyTimeout, "a leader whose server does not answer this long gives the lease up", func(c *Agent) *time.Duration { return &c.Election.UnhealthyTimeout })
	str("log-level", d.Log.Level, "debug, info, warn or error", func(c *Agent) *string { return &c.Log.Level })
	str("log-format", d.Log.Format, "console or json", func(c *Agent) *string { return &c.Log.Format })
	return f
}

// Resolve loads --config (or the defaults), applies the flags given, reads
// the passwords and validates the result.
func (f *AgentFlags) Resolve() (Agent, error) {
	c, err := LoadAgent(f.ConfigFile)
	if err != nil {
		return c, err
	}
	f.fs.Visit(func(fl *pflag.Flag) {
		if a, ok := f.apply[fl.Name]; ok {
			a(&c)
		}
	})
	if c.DCS == "kubernetes" && c.Name == "" {
		c.Name = c.Kubernetes.PodName
	}
	if err := c.ResolveSecrets(); err != nil {
		return c, err
	}
	return c, c.Validate()
}
