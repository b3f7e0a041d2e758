package election

import (
	"github.com/pgrouter/pgrouter/internal/proc"

	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/dcs"

	"github.com/pgrouter/pgrouter/topology"
)

var _ Postgres = (*PGCtl)(nil)

// PGConfig is how the agent runs its PostgreSQL server.
type PGConfig struct {
	// Name is the member name: cluster_name, and application_name when
	// streaming (so it is what synchronous_standby_names lists).
	Name string
	// DataDir is PGDATA.
	DataDir string
	// BinDir holds initdb, pg_ctl, pg_basebackup, pg_rewind and
	// pg_controldata (see FindBinDir).
	BinDir string
	// Listen is host:port the server listens on.
	Listen string
	// SuperUser and ReplUser are the bootstrap superuser and the
	// replication role; their passwords come from the environment or
	// files, never from flags.
	SuperUser, SuperPassword string
	ReplUser, ReplPassword   string
	// HBA are the pg_hba.conf lines (DefaultHBA when empty).
	HBA []string
	// Params are postgresql.conf settings. The agent's own settings (see
	// managedParams) win over them.
	Params map[string]string
	// InitdbArgs are extra initdb arguments.
	InitdbArgs []string
	// LogFile is the server log (pg_ctl -l).
	LogFile string
	// Warm sets hot_standby=off: a standby accepts no connections.
	Warm bool
	// StartTimeout bounds pg_ctl start -w; default 60s.
	StartTimeout time.Duration
}

// DefaultHBA allows password (SCRAM) logins from loopback, for every user
// and for replication.
var DefaultHBA = []string{
	"local all all scram-sha-256",
	"host all all 127.0.0.1/32 scram-sha-256",
	"host all all ::1/128 scram-sha-256",
	"local replication all scram-sha-256",
	"host replication all 127.0.0.1/32 scram-sha-256",
	"host replication all ::1/128 scram-sha-256",
}

// confFile is the file in the data directory the agent owns; an include
// at the end of postgresql.conf makes its settings win.
const confFile = "pgrouter.conf"

const includeLine = "include_if_exists = '" + confFile + "'\t# added by pgrouter: keep last"

// managedParams are set by the agent in confFile; Params may not set them.
var managedParams = []string{"listen_addresses", "port", "cluster_name", "hot_standby", "wal_level",
	"wal_log_hints", "primary_conninfo", "synchronous_standby_names", "recovery_target_timeline"}

// pgTools are the programs the agent runs.
var pgTools = []string{"initdb", "pg_ctl", "postgres", "pg_basebackup", "pg_rewind", "pg_controldata"}

// FindBinDir returns dir when it holds the server programs, or, when dir
// is empty, the directory of pg_ctl on PATH, else `pg_config --bindir`,
// else the newest /usr/lib/postgresql/*/bin (Debian keeps the server off
// PATH).
func FindBinDir(dir string) (string, error) {
	if dir != "" {
		if missing := proc.MissingPrograms(dir, pgTools); len(missing) > 0 {
			return "", fmt.Errorf("pg-bin %s lacks %s", dir, strings.Join(missing, ", "))
		}
		return dir, nil
	}
	var tried []string
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		d := filepath.Dir(p)
		if len(proc.MissingPrograms(d, pgTools)) == 0 {
			return d, nil
		}
		tried = append(tried, d+" (PATH)")
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if len(proc.MissingPrograms(d, pgTools)) == 0 {
			return d, nil
		}
		tried = append(tried, d+" (pg_config)")
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if len(proc.MissingPrograms(d, pgTools)) == 0 {
			return d, nil
		}
		tried = append(tried, d)
	}
	return "", fmt.Errorf("PostgreSQL server programs (%s) not found in %s: install PostgreSQL or pass --pg-bin",
		strings.Join(pgTools, ", "), strings.Join(append(tried, "PATH"), ", "))
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// PGCtl drives a local PostgreSQL server with its own programs (initdb,
// pg_ctl, pg_basebackup, pg_rewind) and one pgx connection for queries.
// Stop is safe to call concurrently with the other methods; the others
// are called by one goroutine at a time (they share the connection).
type PGCtl struct {
	cfg  PGConfig
	host string // to connect to the local server
	port string
	log  *zap.Logger

	mu   sync.Mutex
	conn *pgx.Conn // guarded by mu; nil when not connected
	pid  int       // last postmaster PID seen; guarded by mu
}

// NewPGCtl checks cfg and returns the controller. It does not touch the
// server.
func NewPGCtl(cfg PGConfig, log *zap.Logger) (*PGCtl, error) {
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("pg-listen %q: %w", cfg.Listen, err)
	}
	if cfg.DataDir == "" {
		return nil, errors.New("pgdata is empty")
	}
	if len(cfg.HBA) == 0 {
		cfg.HBA = DefaultHBA
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = time.Minute
	}
	if cfg.LogFile == "" {
		cfg.LogFile = filepath.Clean(cfg.DataDir) + ".log"
	}
	for k := range cfg.Params {
		if slices.Contains(managedParams, k) {
			return nil, fmt.Errorf("parameter %s is managed by the agent; set it with the agent's own options", k)
		}
	}
	if log == nil {
		log = zap.NewNop()
	}
	connectHost := host
	if host == "" || host == "*" || host == "0.0.0.0" || host == "::" {
		connectHost = "127.0.0.1"
	}
	return &PGCtl{cfg: cfg, host: connectHost, port: port, log: log}, nil
}

func (p *PGCtl) path(name string) string { return filepath.Join(p.cfg.DataDir, name) }

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// statusSQL reads role, positions, timeline and the WAL receiver in one
// round trip. pg_current_wal_lsn() and pg_walfile_name() run only when not
// in recovery, and a server only ever leaves recovery.
const statusSQL = `SELECT r,
  COALESCE((CASE WHEN r THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint, 0),
  COALESCE((CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint, 0),
  CASE WHEN r THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming')::bigint,
      (pg_control_checkpoint()).timeline_id::bigint)
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,
  COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false),
  COALESCE((SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'), ''),
  (SELECT system_identifier FROM pg_control_system())::text
FROM (SELECT pg_is_in_recovery() AS r) AS s`

const replicationSQL = `SELECT application_name, COALESCE(state, ''), COALESCE(sync_state, ''),
  COALESCE((flush_lsn - '0/0'::pg_lsn)::bigint, 0), COALESCE((replay_lsn - '0/0'::pg_lsn)::bigint, 0)
FROM pg_stat_replication`

// Observe reads the data directory, the postmaster's PID and, when it
// runs, the server's state.
func (p *PGCtl) Observe(ctx context.Context) PGState {
	var s PGState
	s.Initialized = exists(p.path("global/pg_control"))
	s.StandbySignal = exists(p.path("standby.signal"))
	s.Upstream, s.SyncStandby = p.readManaged()
	s.PID = p.postmasterPID()
	s.Running = s.PID > 0
	if !s.Running {
		p.closeConn()
		return s
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := p.connected(qctx)
	if err != nil {
		if warmStandby(err) {
			s.Answering, s.InRecovery, s.Warm = true, true, true
			if cd, err := p.controlData(ctx); err == nil {
				s.Timeline = max(cd.checkpointTLI, cd.minRecoveryTLI)
				s.ReplayedLSN = max(cd.minRecovery, cd.checkpoint)
				s.ReceivedLSN = s.ReplayedLSN
				s.SystemID = cd.systemID
			}
			return s
		}
		s.Err = err
		return s
	}
	var tl int64
	var recv, replay int64
	err = conn.QueryRow(qctx, statusSQL).Scan(&s.InRecovery, &recv, &replay, &tl, &s.Streaming, &s.SenderAddr, &s.SystemID)
	if err != nil {
		p.dropConn(conn)
		s.Err = fmt.Errorf("status query: %w", err)
		return s
	}
	s.Answering = true
	s.ReceivedLSN, s.ReplayedLSN, s.Timeline = uint64(recv), uint64(replay), uint32(tl)
	if s.InRecovery {
		return s
	}
	rows, err := conn.Query(qctx, replicationSQL)
	if err != nil {
		s.Err = fmt.Errorf("replication query: %w", err)
		return s
	}
	s.Replication = map[string]dcs.Replica{}
	for rows.Next() {
		var name string
		var r dcs.Replica
		var flush, rep int64
		if err := rows.Scan(&name, &r.State, &r.SyncState, &flush, &rep); err != nil {
			s.Err = fmt.Errorf("replication query: %w", err)
			break
		}
		r.FlushLSN, r.ReplayLSN = uint64(flush), uint64(rep)
		if old, dup := s.Replication[name]; !dup || r.FlushLSN > old.FlushLSN {
			s.Replication[name] = r
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil && s.Err == nil {
		s.Err = fmt.Errorf("replication query: %w", err)
	}
	return s
}

// warmStandby reports whether err is a hot_standby=off server refusing a
// connection while in recovery.
func warmStandby(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "57P03" &&
		strings.Contains(strings.ToLower(pe.Message+" "+pe.Detail), "hot standby mode is disabled")
}

func (p *PGCtl) connString(host, port, user string) string {
	return strings.Join([]string{kv("host", host), kv("port", port), kv("user", user),
		kv("dbname", "postgres"), kv("sslmode", "prefer"), kv("application_name", "pgrouter-agent"),
		kv("connect_timeout", "2")}, " ")
}

// kv quotes one libpq keyword/value pair.
func kv(k, v string) string {
	return k + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func (p *PGCtl) connected(ctx context.Context) (*pgx.Conn, error) {
	p.mu.Lock()
	conn := p.conn
	p.mu.Unlock()
	if conn != nil && !conn.IsClosed() {
		return conn, nil
	}
	cfg, err := pgx.ParseConfig(p.connString(p.host, p.port, p.cfg.SuperUser))
	if err != nil {
		return nil, err
	}
	cfg.Password = p.cfg.SuperPassword
	conn, err = pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.conn = conn
	p.mu.Unlock()
	return conn, nil
}

func (p *PGCtl) dropConn(conn *pgx.Conn) {
	p.mu.Lock()
	if p.conn == conn {
		p.conn = nil
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

func (p *PGCtl) closeConn() {
	p.mu.Lock()
	conn := p.conn
	p.conn = nil
	p.mu.Unlock()
	if conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	}
}

// postmasterPID returns the running postmaster's PID: from postmaster.pid,
// or, when the file is gone (the data directory was deleted), the PID seen
// last if that process is still a postgres. 0 when none runs.
func (p *PGCtl) postmasterPID() int {
	if pid, err := proc.ReadPID(p.path("postmaster.pid")); err == nil && proc.Alive(pid) {
		p.mu.Lock()
		p.pid = pid
		p.mu.Unlock()
		return pid
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pid > 0 && proc.Alive(p.pid) && proc.Runs(p.pid, "postgres") {
		return p.pid
	}
	p.pid = 0
	return 0
}

// readManaged reads the upstream and sync standby the agent last wrote.
func (p *PGCtl) readManaged() (upstream, sync string) {
	b, err := os.ReadFile(p.path(confFile))
	if err != nil {
		return "", ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "# pgrouter-upstream: "); ok {
			upstream = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "# pgrouter-sync: "); ok {
			sync = strings.TrimSpace(v)
		}
	}
	return upstream, sync
}

// run runs one of the server's programs and returns its combined output.
// The child gets its own process group, so a signal to the agent's group
// does not reach a postmaster pg_ctl starts.
func (p *PGCtl) run(ctx context.Context, env []string, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(p.cfg.BinDir, prog), args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	began := time.Now()
	err := cmd.Run()
	p.log.Debug("ran "+prog, zap.Strings("args", redact(args)), zap.Duration("took", time.Since(began)), zap.Error(err))
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", prog, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func redact(args []string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		if strings.Contains(a, "password") {
			out[i] = "<redacted>"
		}
	}
	return out
}

// cleanEnv is the agent's environment without the PG* variables that would
// steer libpq or pg_ctl elsewhere, and with English messages.
func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "PG") || strings.HasPrefix(e, "LC_ALL=") {
			continue
		}
		env = append(env, e)
	}
	return append(env, "LC_ALL=C")
}

func seconds(ctx context.Context, def time.Duration) string {
	d := def
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl)
	}
	return strconv.Itoa(max(1, int(d/time.Second)))
}

// Bootstrap runs initdb, starts the new primary and creates the
// replication role.
func (p *PGCtl) Bootstrap(ctx context.Context) (string, error) {
	if err := p.Wipe(); err != nil {
		return "", err
	}
	done, err := p.markPartial()
	if err != nil {
		return "", err
	}
	pw, err := os.CreateTemp("", "pgrouter-pw-")
	if err != nil {
		return "", err
	}
	defer os.Remove(pw.Name())
	_, err = pw.WriteString(p.cfg.SuperPassword + "\n")
	if err := errors.Join(err, pw.Close()); err != nil {
		return "", err
	}
	args := append([]string{"-D", p.cfg.DataDir, "-U", p.cfg.SuperUser, "--pwfile=" + pw.Name(),
		"--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"}, p.cfg.InitdbArgs...)
	if _, err := p.run(ctx, nil, "initdb", args...); err != nil {
		return "", err
	}
	if err := p.Start(ctx, ServerOptions{}); err != nil {
		return "", err
	}
	conn, err := p.connected(ctx)
	if err != nil {
		return "", fmt.Errorf("connect after initdb: %w", err)
	}
	if p.cfg.ReplUser != p.cfg.SuperUser {
		q := fmt.Sprintf("CREATE ROLE %s WITH LOGIN REPLICATION PASSWORD %s",
			pgx.Identifier{p.cfg.ReplUser}.Sanitize(), literal(p.cfg.ReplPassword))
		if _, err := conn.Exec(ctx, q); err != nil {
			return "", fmt.Errorf("create replication role %s: %w", p.cfg.ReplUser, err)
		}
	}
	var id string
	if err := conn.QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&id); err != nil {
		return "", err
	}
	done()
	return id, nil
}

// literal quotes s as an SQL or postgresql.conf string literal.
func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Clone runs pg_basebackup from the member into the emptied data
// directory.
func (p *PGCtl) Clone(ctx context.Context, from dcs.Member) error {
	host, port, err := net.SplitHostPort(from.ConnAddr)
	if err != nil {
		return fmt.Errorf("clone from %s: address %q: %w", from.Name, from.ConnAddr, err)
	}
	if err := p.Wipe(); err != nil {
		return err
	}
	done, err := p.markPartial()
	if err != nil {
		return err
	}
	_, err = p.run(ctx, []string{"PGPASSWORD=" + p.cfg.ReplPassword}, "pg_basebackup",
		"-D", p.cfg.DataDir, "-h", host, "-p", port, "-U", p.cfg.ReplUser, "-w",
		"-X", "stream", "-c", "fast")
	if err != nil {
		_ = p.Wipe()
		return fmt.Errorf("clone from %s: %w", from.Name, err)
	}
	done()
	return nil
}

// Rewind runs pg_rewind from the member's server. standby.signal goes
// first: pg_rewind's own crash recovery runs a single-user server, which
// refuses standby mode; Start writes it again.
func (p *PGCtl) Rewind(ctx context.Context, from dcs.Member) error {
	host, port, err := net.SplitHostPort(from.ConnAddr)
	if err != nil {
		return fmt.Errorf("rewind from %s: address %q: %w", from.Name, from.ConnAddr, err)
	}
	if err := os.Remove(p.path("standby.signal")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := p.removeStaleLocks(); err != nil {
		return err
	}
	if err := p.checkpointIfPromoted(ctx, host, port); err != nil {
		return fmt.Errorf("rewind from %s: %w", from.Name, err)
	}
	src := strings.Join([]string{kv("host", host), kv("port", port), kv("user", p.cfg.SuperUser),
		kv("dbname", "postgres"), kv("connect_timeout", "5")}, " ")
	out, err := p.run(ctx, []string{"PGPASSWORD=" + p.cfg.SuperPassword}, "pg_rewind",
		"-D", p.cfg.DataDir, "--source-server="+src)
	if err != nil {
		return fmt.Errorf("rewind from %s: %w", from.Name, err)
	}
	p.log.Debug("pg_rewind", zap.String("output", strings.TrimSpace(out)))
	return nil
}

// checkpointIfPromoted runs CHECKPOINT on a source whose control file
// still names an older timeline than the one it writes, as right after a
// promotion: pg_rewind reads the source's timeline from its control file,
// and would find no divergence and do nothing (see pg_rewind's notes).
func (p *PGCtl) checkpointIfPromoted(ctx context.Context, host, port string) error {
	cfg, err := pgx.ParseConfig(p.connString(host, port, p.cfg.SuperUser))
	if err != nil {
		return err
	}
	cfg.Password = p.cfg.SuperPassword
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to the source: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var stale bool
	err = conn.QueryRow(cctx, `SELECT NOT pg_is_in_recovery() AND (pg_control_checkpoint()).timeline_id <>
		('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int`).Scan(&stale)
	if err != nil {
		return fmt.Errorf("source timeline: %w", err)
	}
	if !stale {
		return nil
	}
	p.log.Info("checkpoint on the rewind source: its control file predates its promotion")
	qctx, cancel2 := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel2()
	if _, err := conn.Exec(qctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint on the source: %w", err)
	}
	return nil
}

// Start writes the configuration and standby.signal for the role and runs
// pg_ctl start -w.
func (p *PGCtl) Start(ctx context.Context, o ServerOptions) error {
	if pid := p.postmasterPID(); pid > 0 {
		return fmt.Errorf("start: postmaster %d already runs", pid)
	}
	if err := p.removeStaleLocks(); err != nil {
		return err
	}
	if err := p.configure(o); err != nil {
		return err
	}
	signal := p.path("standby.signal")
	if o.Standby {
		if err := os.WriteFile(signal, nil, 0o600); err != nil {
			return err
		}
	} else if err := os.Remove(signal); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, p.cfg.StartTimeout)
	defer cancel()
	if _, err := p.run(sctx, nil, "pg_ctl", "start", "-w", "-s", "-t", seconds(sctx, p.cfg.StartTimeout),
		"-D", p.cfg.DataDir, "-l", p.cfg.LogFile); err != nil {
		return fmt.Errorf("start: %w (log %s%s)", err, p.cfg.LogFile, logTail(p.cfg.LogFile, 5))
	}
	p.postmasterPID()
	return nil
}

// removeStaleLocks removes postmaster.pid when its process is gone: a
// killed postmaster may linger as a zombie nobody reaps, whose PID still
// answers kill(pid, 0) and would make the new server refuse to start.
func (p *PGCtl) removeStaleLocks() error {
	locks := []string{p.path("postmaster.pid")}
	if d := p.socketDir(); d != "" {
		locks = append(locks, filepath.Join(d, ".s.PGSQL."+p.port+".lock"))
	}
	for _, f := range locks {
		pid, err := proc.ReadPID(f)
		if err != nil || proc.Alive(pid) {
			continue
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// Reconfigure rewrites the configuration and reloads.
func (p *PGCtl) Reconfigure(ctx context.Context, o ServerOptions) error {
	if err := p.configure(o); err != nil {
		return err
	}
	if _, err := p.run(ctx, nil, "pg_ctl", "reload", "-s", "-D", p.cfg.DataDir); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	return nil
}

// configure writes pgrouter.conf and pg_hba.conf and makes sure
// postgresql.conf includes pgrouter.conf last.
func (p *PGCtl) configure(o ServerOptions) error {
	if err := p.ensureInclude(); err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(p.cfg.Listen)
	if host == "" {
		host = "*"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by the pgrouter agent %s at every start and reconfiguration: do not edit.\n", p.cfg.Name)
	if o.Upstream != nil {
		fmt.Fprintf(&b, "# pgrouter-upstream: %s\n", o.Upstream.Name)
	}
	if o.SyncStandby != "" {
		fmt.Fprintf(&b, "# pgrouter-sync: %s\n", o.SyncStandby)
	}
	defaults := map[string]string{
		"wal_keep_size":                "256MB",
		"max_wal_senders":              "10",
		"max_replication_slots":        "10",
		"wal_retrieve_retry_interval":  "1s",
		"wal_receiver_status_interval": "1s",
	}
	if len(p.socketDir()) > 0 {
		defaults["unix_socket_directories"] = p.socketDir()
	}
	params := map[string]string{}
	for k, v := range defaults {
		params[k] = v
	}
	for k, v := range p.cfg.Params {
		params[k] = v
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, literal(params[k]))
	}
	hot := "on"
	if p.cfg.Warm {
		hot = "off"
	}
	conninfo := ""
	if o.Standby && o.Upstream != nil {
		uh, up, err := net.SplitHostPort(o.Upstream.ConnAddr)
		if err != nil {
			return fmt.Errorf("upstream %s address %q: %w", o.Upstream.Name, o.Upstream.ConnAddr, err)
		}
		conninfo = strings.Join([]string{kv("host", uh), kv("port", up), kv("user", p.cfg.ReplUser),
			kv("password", p.cfg.ReplPassword), kv("application_name", p.cfg.Name),
			kv("connect_timeout", "2"), kv("keepalives_idle", "5"), kv("keepalives_interval", "1"),
			kv("keepalives_count", "3")}, " ")
	}
	ssn := ""
	if o.SyncStandby != "" {
		ssn = `FIRST 1 ("` + o.SyncStandby + `")`
	}
	for _, kv := range [][2]string{
		{"listen_addresses", host}, {"port", port}, {"cluster_name", p.cfg.Name},
		{"hot_standby", hot}, {"wal_level", "replica"}, {"wal_log_hints", "on"},
		{"primary_conninfo", conninfo}, {"recovery_target_timeline", "latest"},
		{"synchronous_standby_names", ssn},
	} {
		fmt.Fprintf(&b, "%s = %s\n", kv[0], literal(kv[1]))
	}
	if err := writeAtomic(p.path(confFile), b.String()); err != nil {
		return err
	}
	hba := "# Written by the pgrouter agent: do not edit; configure pg_hba lines in the agent.\n" +
		strings.Join(p.cfg.HBA, "\n") + "\n"
	return writeAtomic(p.path("pg_hba.conf"), hba)
}

// socketDir puts the Unix socket beside the data directory, unless the
// path would be too long for a socket.
func (p *PGCtl) socketDir() string {
	d := filepath.Dir(filepath.Clean(p.cfg.DataDir))
	if len(d)+len("/.s.PGSQL.65535") > 100 {
		return ""
	}
	return d
}

func (p *PGCtl) ensureInclude() error {
	path := p.path("postgresql.conf")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if bytes.Contains(b, []byte(includeLine)) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString("\n" + includeLine + "\n")
	return errors.Join(err, f.Close())
}

func writeAtomic(path, text string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Stop shuts the server down with pg_ctl, or by signals when the data
// directory is gone, and kills it when that does not finish before ctx
// ends (fencing passes a short deadline).
func (p *PGCtl) Stop(ctx context.Context, mode string) error {
	// The query connection is left alone: fencing calls Stop while the
	// leader loop may be using it; the next Observe finds it broken.
	pid := p.postmasterPID()
	if pid == 0 {
		_ = p.removeStaleLocks()
		return nil
	}
	var err error
	if exists(p.path("postmaster.pid")) {
		_, err = p.run(ctx, nil, "pg_ctl", "stop", "-w", "-s", "-t", seconds(ctx, time.Minute), "-m", mode, "-D", p.cfg.DataDir)
	} else {
		sig := syscall.SIGINT // fast
		if mode == "immediate" {
			sig = syscall.SIGQUIT
		}
		_ = syscall.Kill(pid, sig)
		err = proc.WaitGone(ctx, []int{pid})
	}
	if err == nil {
		// pg_ctl returns once postmaster.pid is gone; the process may take
		// a moment more to exit.
		gctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = proc.WaitGone(gctx, []int{pid})
		cancel()
		if err == nil {
			return nil
		}
	}
	p.log.Warn("postgres did not stop in time; killing it", zap.Int("pid", pid), zap.String("mode", mode), zap.Error(err))
	procs := append(proc.Children(pid), pid)
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	procs = append(proc.Children(pid), procs...)
	for _, c := range procs {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	kctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := proc.WaitGone(kctx, procs); err != nil {
		return fmt.Errorf("stop postgres %d: %w", pid, err)
	}
	_ = p.removeStaleLocks()
	return nil
}

// Promote ends recovery: pg_promote() on a hot standby, pg_ctl promote on
// a warm one, which takes no connections.
func (p *PGCtl) Promote(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !p.cfg.Warm {
		conn, err := p.connected(pctx)
		if err == nil {
			var ok bool
			if err := conn.QueryRow(pctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
				return fmt.Errorf("pg_promote: %w", err)
			}
			if !ok {
				return errors.New("pg_promote: not promoted within 60s")
			}
			return nil
		}
		if !warmStandby(err) {
			return fmt.Errorf("promote: %w", err)
		}
	}
	if _, err := p.run(pctx, nil, "pg_ctl", "promote", "-w", "-s", "-t", "60", "-D", p.cfg.DataDir); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	return nil
}

// Checkpoint runs CHECKPOINT.
func (p *PGCtl) Checkpoint(ctx context.Context) error {
	conn, err := p.connected(ctx)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "CHECKPOINT")
	return err
}

// FinalLSN is the latest checkpoint's position of the stopped server.
func (p *PGCtl) FinalLSN(ctx context.Context) (uint64, error) {
	cd, err := p.controlData(ctx)
	if err != nil {
		return 0, err
	}
	return cd.checkpoint, nil
}

// WaitReplayed polls the target's replay position every 10ms.
func (p *PGCtl) WaitReplayed(ctx context.Context, target dcs.Member, lsn uint64) error {
	host, port, err := net.SplitHostPort(target.ConnAddr)
	if err != nil {
		return err
	}
	cfg, err := pgx.ParseConfig(p.connString(host, port, p.cfg.SuperUser))
	if err != nil {
		return err
	}
	cfg.Password = p.cfg.SuperPassword
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if warmStandby(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("connect to %s: %w", target.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var at int64
		err := conn.QueryRow(ctx, "SELECT COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)").Scan(&at)
		if err != nil {
			return fmt.Errorf("%s replay position: %w", target.Name, err)
		}
		if uint64(at) >= lsn {
			return nil
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s replayed up to %s, not %s: %w", target.Name, topology.FormatLSN(uint64(at)), topology.FormatLSN(lsn), ctx.Err())
		case <-t.C:
		}
	}
}

// partialMarker is a file beside the data directory that exists while
// the agent fills it (initdb, pg_basebackup): a directory left half-made
// by a crash may be wiped even before it looks like a data directory.
func (p *PGCtl) partialMarker() string { return filepath.Clean(p.cfg.DataDir) + ".pgrouter-partial" }

// markPartial notes that the data directory is being filled; the returned
// func removes the note once it is complete.
func (p *PGCtl) markPartial() (done func(), err error) {
	if err := os.WriteFile(p.partialMarker(), nil, 0o600); err != nil {
		return nil, err
	}
	return func() { _ = os.Remove(p.partialMarker()) }, nil
}

// Wipe empties the data directory, creating it (mode 0700) if needed. It
// refuses a non-empty directory that is neither a PostgreSQL data
// directory nor one the agent was filling: --pgdata pointing at the wrong
// place must not cost anyone their files.
func (p *PGCtl) Wipe() error {
	if err := os.MkdirAll(p.cfg.DataDir, 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(p.cfg.DataDir)
	if err != nil {
		return err
	}
	if len(ents) > 0 && !exists(p.path("PG_VERSION")) && !exists(p.partialMarker()) {
		return fmt.Errorf("data directory %s is not empty and holds no PostgreSQL cluster: refusing to overwrite it", p.cfg.DataDir)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(p.cfg.DataDir, e.Name())); err != nil {
			return err
		}
	}
	return os.Chmod(p.cfg.DataDir, 0o700)
}

// controlData is what the agent reads from pg_controldata.
type controlData struct {
	state                         string
	systemID                      string
	checkpoint, minRecovery       uint64
	checkpointTLI, minRecoveryTLI uint32
}

func (p *PGCtl) controlData(ctx context.Context) (controlData, error) {
	var cd controlData
	out, err := p.run(ctx, nil, "pg_controldata", "-D", p.cfg.DataDir)
	if err != nil {
		return cd, err
	}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "Database cluster state":
			cd.state = v
		case "Database system identifier":
			cd.systemID = v
		case "Latest checkpoint location":
			cd.checkpoint, _ = topology.ParseLSN(v)
		case "Minimum recovery ending location":
			cd.minRecovery, _ = topology.ParseLSN(v)
		case "Latest checkpoint's TimeLineID":
			n, _ := strconv.ParseUint(v, 10, 32)
			cd.checkpointTLI = uint32(n)
		case "Min recovery ending loc's timeline":
			n, _ := strconv.ParseUint(v, 10, 32)
			cd.minRecoveryTLI = uint32(n)
		}
	}
	return cd, nil
}

// logTail returns the last lines of a log, indented, or "".
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return ":\n\t" + strings.Join(lines, "\n\t")
}
