package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/topology"
)

// probeSQL observes a member in one round trip: whether it is in recovery,
// its WAL position, its timeline and, on a standby with WAL left to replay,
// the age of the last replayed transaction. The guard r is read once, and a
// server only ever leaves recovery, so pg_current_wal_lsn() and
// pg_walfile_name() never run on a standby.
const probeSQL = `SELECT r,
  CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
  CASE WHEN r THEN COALESCE(
      (SELECT received_tli FROM pg_stat_wal_receiver)::bigint,
      (pg_control_checkpoint()).timeline_id::bigint)
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,
  CASE WHEN NOT r OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
    ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END
FROM (SELECT pg_is_in_recovery() AS r) AS s`

// prober runs probes against one member. It is used by one goroutine.
type prober interface {
	// probe observes the member. On success the returned Health has Role,
	// Timeline, WALPosition and ReplayLag set.
	probe(ctx context.Context) (topology.Health, error)
	// close releases the connection, if any.
	close()
}

// pgProber probes over one pgconn connection kept open between probes; it
// reconnects on the next probe after the connection breaks.
type pgProber struct {
	config         *pgconn.Config
	timeout        time.Duration
	connectTimeout time.Duration
	conn           *pgconn.PgConn // nil when not connected
}

func newPGProber(m topology.Member, cfg Config) (*pgProber, error) {
	host, port, err := net.SplitHostPort(m.Addr)
	if err != nil {
		return nil, fmt.Errorf("member %s: address %q: %w", m.Name, m.Addr, err)
	}
	dsn := strings.Join([]string{
		kv("host", host), kv("port", port), kv("user", cfg.User), kv("password", cfg.Password),
		kv("dbname", cfg.Database), kv("sslmode", cfg.SSLMode), kv("application_name", "pgrouter-health"),
	}, " ")
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", m.Name, err)
	}
	pc.ConnectTimeout = cfg.ConnectTimeout
	return &pgProber{config: pc, timeout: cfg.Timeout, connectTimeout: cfg.ConnectTimeout}, nil
}

// kv quotes a libpq keyword/value pair.
func kv(k, v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return k + "='" + v + "'"
}

func (p *pgProber) probe(ctx context.Context) (topology.Health, error) {
	reused := p.conn != nil
	h, err := p.try(ctx)
	if err != nil && reused && p.conn == nil && ctx.Err() == nil {
		// The kept connection broke since the last probe (a server
		// restart, an idle timeout): that says nothing about the member
		// now, so try once more on a fresh one.
		h, err = p.try(ctx)
	}
	return h, err
}

func (p *pgProber) try(ctx context.Context) (topology.Health, error) {
	if p.conn == nil {
		cctx, cancel := context.WithTimeout(ctx, p.connectTimeout)
		conn, err := pgconn.ConnectConfig(cctx, p.config)
		cancel()
		if err != nil {
			return topology.Health{}, err
		}
		p.conn = conn
	}
	qctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	results, err := p.conn.Exec(qctx, probeSQL).ReadAll()
	if err != nil {
		if p.conn.IsClosed() || qctx.Err() != nil {
			p.close()
		}
		return topology.Health{}, fmt.Errorf("probe: %w", err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) != 4 {
		return topology.Health{}, errors.New("probe: unexpected result shape")
	}
	return parseProbeRow(results[0].Rows[0])
}

func (p *pgProber) close() {
	if p.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	_ = p.conn.Close(ctx)
	p.conn = nil
}

// parseProbeRow reads probeSQL's text-format row.
func parseProbeRow(row [][]byte) (topology.Health, error) {
	var h topology.Health
	switch string(row[0]) {
	case "t":
		h.Role = topology.RoleStandby
	case "f":
		h.Role = topology.RolePrimary
	default:
		return h, fmt.Errorf("probe: pg_is_in_recovery() = %q", row[0])
	}
	if row[1] != nil { // NULL on a standby that has replayed nothing yet
		lsn, err := topology.ParseLSN(string(row[1]))
		if err != nil {
			return h, fmt.Errorf("probe: %w", err)
		}
		h.WALPosition = lsn
	}
	if row[2] != nil {
		tl, err := strconv.ParseUint(string(row[2]), 10, 32)
		if err != nil {
			return h, fmt.Errorf("probe: timeline %q: %w", row[2], err)
		}
		h.Timeline = uint32(tl)
	}
	if row[3] != nil {
		secs, err := strconv.ParseFloat(string(row[3]), 64)
		if err != nil {
			return h, fmt.Errorf("probe: replay lag %q: %w", row[3], err)
		}
		if secs > 0 {
			h.ReplayLag = time.Duration(secs * float64(time.Second))
		}
	}
	return h, nil
}

// notAccepting reports whether err is the server refusing connections
// while alive (SQLSTATE 57P03: a warm standby, startup, shutdown), and the
// role that tells: standby when hot standby is disabled, else unknown.
func notAccepting(err error) (topology.Role, bool) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P03" {
		return topology.RoleUnknown, false
	}
	msg := strings.ToLower(pgErr.Message + " " + pgErr.Detail)
	if strings.Contains(msg, "hot standby mode is disabled") {
		return topology.RoleStandby, true
	}
	return topology.RoleUnknown, true
}

// observe folds one probe result into a member's health. A success or a
// "not accepting connections" reply applies at once, role changes included;
// other failures keep the previous state, error aside, until threshold of
// them in a row mark the member down. It returns the new health and the new
// count of consecutive failures.
func observe(prev topology.Health, failures int, got topology.Health, err error, took time.Duration, now time.Time, threshold int) (topology.Health, int) {
	if err == nil {
		got.Up, got.AcceptsConnections = true, true
		got.ReplayLagBytes = 0
		got.Latency, got.CheckedAt, got.Err = took, now, ""
		return got, 0
	}
	if role, ok := notAccepting(err); ok {
		return topology.Health{Up: true, Role: role, Latency: took, CheckedAt: now, Err: errText(err)}, 0
	}
	failures++
	if failures >= threshold {
		return topology.Health{CheckedAt: now, Err: errText(err)}, failures
	}
	prev.CheckedAt, prev.Err = now, errText(err)
	return prev, failures
}

// errText is the error for the snapshot and logs, on one line: a server
// error's own message rather than pgx's wrapping.
func errText(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if pgErr.Detail != "" {
			return fmt.Sprintf("%s: %s (SQLSTATE %s)", pgErr.Message, pgErr.Detail, pgErr.Code)
		}
		return fmt.Sprintf("%s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
	}
	// pgx joins the errors of its attempts (TLS, then plain) with "\n\t".
	return strings.ReplaceAll(err.Error(), "\n\t", "; ")
}
