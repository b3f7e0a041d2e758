package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/pgrouter/pgrouter/configs"
	"github.com/pgrouter/pgrouter/dcs"
	"github.com/pgrouter/pgrouter/discovery"
	"github.com/pgrouter/pgrouter/election"
)

func agentCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the election agent beside one PostgreSQL server (bootstrap, failover, fencing, rejoin)",
		Args:  cobra.NoArgs,
	}
	flags := configs.BindAgentFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if os.Geteuid() == 0 {
			return errors.New("pgrouter agent must not run as root: PostgreSQL refuses to run as root. " +
				"Run the agent as the unprivileged operating system user that owns the data directory, " +
				"for example: sudo -u postgres pgrouter agent ...")
		}
		cfg, err := flags.Resolve()
		if err != nil {
			return err
		}
		return runAgent(cmd.Context(), cfg)
	}
	return cmd
}

// checkOwner refuses a data directory another user owns.
func checkOwner(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("data directory %s is owned by uid %d, not by this user (uid %d): run the agent as the user that owns it",
			dir, st.Uid, os.Geteuid())
	}
	return nil
}

// runAgent wires the store, PostgreSQL, the agent and its API, and runs
// them until SIGINT/SIGTERM.
func runAgent(ctx context.Context, cfg configs.Agent) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := checkOwner(cfg.PostgreSQL.DataDir); err != nil {
		return err
	}
	log, _, err := newLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	// Errors here are events (a failed start, a fence) logged with their
	// reason: no stack traces.
	log = log.WithOptions(zap.AddStacktrace(zap.DPanicLevel))
	bin, err := election.FindBinDir(cfg.PostgreSQL.BinDir)
	if err != nil {
		return err
	}
	ecfg := cfg.ElectionConfig().WithDefaults()
	store, podIP, err := openStore(ctx, cfg, ecfg.TTL, log)
	if err != nil {
		return err
	}
	defer store.Close()
	p := cfg.PostgreSQL
	warm := p.StandbyMode == "warm"
	pg, err := election.NewPGCtl(election.PGConfig{
		Name: cfg.Name, DataDir: p.DataDir, BinDir: bin, Listen: p.Listen,
		SuperUser: p.SuperUser, SuperPassword: p.SuperUserPassword,
		ReplUser: p.ReplicationUser, ReplPassword: p.ReplicationPassword,
		HBA: p.HBA, Params: p.Parameters, InitdbArgs: p.InitdbArgs, LogFile: p.LogFile, Warm: warm,
	}, log.Named("postgres").With(zap.String("member", cfg.Name)))
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		return fmt.Errorf("api-listen %s: %w", cfg.API.Listen, err)
	}
	agent, err := election.NewAgent(election.Options{
		Config: ecfg, Store: store, Postgres: pg, ConnAddr: advertise(p.Listen, podIP), APIAddr: advertise(ln.Addr().String(), podIP), Warm: warm,
		Log: log.Named("agent"), Metrics: election.NewMetrics(reg),
	})
	if err != nil {
		ln.Close()
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	apiCtx, stopAPI := context.WithCancel(context.Background())
	apiDone := make(chan error, 1)
	go func() { apiDone <- election.RunAPI(apiCtx, ln, agent.Handler(reg)) }()
	log.Info("pgrouter agent", zap.String("name", cfg.Name), zap.String("scope", cfg.Scope),
		zap.String("api", ln.Addr().String()), zap.String("pgdata", p.DataDir), zap.String("pg_bin", bin))
	runErr := agent.Run(ctx)
	stopAPI()
	if err := <-apiDone; err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// openStore connects the consensus store cfg.DCS names. On Kubernetes it
// also returns the pod's IP address, which the member advertises when
// PostgreSQL or the API listens on all addresses.
func openStore(ctx context.Context, cfg configs.Agent, ttl time.Duration, log *zap.Logger) (dcs.Store, string, error) {
	if cfg.DCS != "kubernetes" {
		s, err := dcs.NewEtcd(dcs.EtcdConfig{
			Endpoints: cfg.Etcd.Endpoints, Scope: cfg.Scope, Name: cfg.Name, TTL: ttl, Log: log.Named("etcd"),
		})
		return s, "", err
	}
	k := cfg.Kubernetes
	rc, err := discovery.RESTConfig(k.Kubeconfig)
	if err != nil {
		return nil, "", err
	}
	// Each agent makes a few requests per retry period (renew, status,
	// load, publish): client-go's default limit of 5/s would throttle the
	// leader's renewals.
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = "pgrouter-agent"
	// HTTP/1.1: a request that times out closes its connection, so after
	// a silent network partition the next request dials again. Over
	// HTTP/2 every request would share the dead connection until its ping
	// timeout (about 45 s), keeping a fenced leader from rejoining.
	rc.TLSClientConfig.NextProtos = []string{"http/1.1"}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes client: %w", err)
	}
	s, err := dcs.NewKubernetes(dcs.KubernetesConfig{
		Client: cs, Namespace: k.Namespace, Scope: cfg.Scope, Name: cfg.Name, PodName: k.PodName, TTL: ttl,
		Log: log.Named("kubernetes"),
	})
	if err != nil {
		return nil, "", err
	}
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ip, err := s.PodIP(gctx)
	if err != nil {
		return nil, "", fmt.Errorf("the agent's own pod (--pod-name %s --namespace %s): %w", k.PodName, k.Namespace, err)
	}
	return s, ip, nil
}

// advertise is the address others reach a listener on: addr itself, or
// ip with addr's port when addr's host is empty or unspecified (0.0.0.0,
// ::) and ip is known.
func advertise(addr, ip string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || ip == "" {
		return addr
	}
	if a := net.ParseIP(host); host != "" && (a == nil || !a.IsUnspecified()) {
		return addr
	}
	return net.JoinHostPort(ip, port)
}

func switchoverCommand() *cobra.Command {
	var api, to string
	var force bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "switchover",
		Short: "Hand the primary role to a standby without losing data (through any agent's API; asks for confirmation, --force skips it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !force {
				v, err := agentView(cmd.Context(), api, "switchover")
				if err != nil {
					return err
				}
				target := to
				if target == "" {
					target = "the best standby"
				}
				if err := confirmed(cmd, false, "switchover",
					fmt.Sprintf("Switch over scope %s from %s to %s? Writes pause until it is promoted. [y/N] ", v.Scope, v.Leader, target)); err != nil {
					return err
				}
			}
			res, err := requestSwitchover(api, to, timeout)
			if err != nil {
				return fmt.Errorf("switchover: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "switchover: %s -> %s in %dms\n", res.From, res.To, res.TookMS)
			return nil
		},
	}
	cmd.Flags().StringVar(&api, "api", "127.0.0.1:8008", "host:port of any agent's API")
	cmd.Flags().StringVar(&to, "to", "", "member to promote (default: the synchronous standby, or the most advanced streaming one)")
	cmd.Flags().BoolVar(&force, "force", false, "do not ask for confirmation")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the new leader")
	return cmd
}

// requestSwitchover posts a switchover request to an agent's API and waits
// for its outcome; a refusal comes back as an error carrying the leader's
// reason.
func requestSwitchover(api, to string, timeout time.Duration) (election.SwitchoverResult, error) {
	var res election.SwitchoverResult
	body, _ := json.Marshal(election.SwitchoverRequest{To: to})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+api+"/switchover", bytes.NewReader(body))
	if err != nil {
		return res, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &res); err != nil {
		return res, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	if resp.StatusCode != http.StatusOK {
		return res, fmt.Errorf("refused by the leader (%s): %s", orNone(res.From), res.Error)
	}
	return res, nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
