package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// LookupConfig says where Lookup finds users' secrets.
type LookupConfig struct {
	// AuthFile is a PgBouncer userlist.txt (see LoadAuthFile), read once
	// by NewLookup. "" means none.
	AuthFile string
	// AuthQuery returns the secret of the user in $1 as one row of two
	// columns (user name, secret), or no row for an unknown user; a NULL
	// secret counts as unknown. For example
	// "SELECT usename, passwd FROM pgrouter.user_lookup($1)", a SECURITY
	// DEFINER function over pg_shadow. It runs on the primary. "" means
	// none.
	AuthQuery string
	// AuthUser and AuthPassword log in to run AuthQuery; AuthUser is
	// required with AuthQuery.
	AuthUser, AuthPassword string
	// AuthDatabase is where AuthQuery runs. "" means postgres.
	AuthDatabase string
	// TTL is how long a secret from AuthQuery is reused. Zero means 30s.
	// An unknown user is remembered for min(TTL, 5s) and a failed query
	// for min(TTL, 1s), so that a burst of logins does not become a burst
	// of queries.
	TTL time.Duration
	// Connect opens the connection AuthQuery runs on, to the primary at
	// addr. Nil means pgconn.Connect as AuthUser to AuthDatabase with
	// sslmode=prefer and a 5s connect timeout; the proxy replaces it to
	// apply its own TLS settings.
	Connect func(ctx context.Context, addr string) (*pgconn.PgConn, error)
}

// Default durations of LookupConfig.
const (
	DefaultLookupTTL   = 30 * time.Second
	maxNegativeTTL     = 5 * time.Second
	maxErrorTTL        = time.Second
	authQueryTimeout   = 10 * time.Second
	authConnectTimeout = 5 * time.Second
	// sweepAbove is the cache size above which expired entries are
	// dropped, at most once per negative TTL, so that logins with made-up
	// names do not grow the cache without bound.
	sweepAbove = 1024
)

// Lookup finds users' secrets: in the auth file first, then with the auth
// query on the primary, whose answers (secrets, unknown users, failures)
// are cached for a while. Concurrent lookups of one user share one query,
// and queries run one at a time on one connection, reopened when the
// primary changes or the connection breaks. Safe for concurrent use;
// Close releases the connection.
type Lookup struct {
	cfg     LookupConfig
	file    map[string]Secret
	primary func() (addr string, ok bool)
	log     *zap.Logger
	now     func() time.Time // test seam
	queries atomic.Int64     // auth queries sent, for tests

	ctx    context.Context // ends at Close; bounds every query
	cancel context.CancelFunc
	wg     sync.WaitGroup // running fills

	mu        sync.Mutex
	cache     map[string]*lookupEntry // guarded by mu
	lastSweep time.Time               // guarded by mu

	connMu   sync.Mutex // held while a query runs
	conn     *pgconn.PgConn
	connAddr string
}

// lookupEntry is one user's cached answer. ready is closed once secret
// and err are set; they never change after.
type lookupEntry struct {
	ready   chan struct{}
	secret  Secret
	err     error
	expires time.Time
}

// NewLookup reads the auth file, if any, and checks the configuration.
// primary tells where the auth query runs (ok false: no primary now);
// it is needed only with an AuthQuery.
func NewLookup(cfg LookupConfig, primary func() (addr string, ok bool), log *zap.Logger) (*Lookup, error) {
	if log == nil {
		log = zap.NewNop()
	}
	var errs []error
	if cfg.TTL < 0 {
		errs = append(errs, fmt.Errorf("auth TTL %s is negative", cfg.TTL))
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultLookupTTL
	}
	if cfg.AuthDatabase == "" {
		cfg.AuthDatabase = "postgres"
	}
	if cfg.AuthQuery != "" {
		if !strings.Contains(cfg.AuthQuery, "$1") {
			errs = append(errs, errors.New("auth query must take the user name as $1"))
		}
		if cfg.AuthUser == "" && cfg.Connect == nil {
			errs = append(errs, errors.New("auth query needs an auth user"))
		}
		if primary == nil {
			errs = append(errs, errors.New("auth query needs a primary to run on"))
		}
	}
	l := &Lookup{cfg: cfg, primary: primary, log: log, now: time.Now, cache: map[string]*lookupEntry{}}
	if cfg.AuthFile != "" {
		f, err := LoadAuthFile(cfg.AuthFile)
		if err != nil {
			errs = append(errs, err)
		}
		l.file = f
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l, nil
}

// Secret returns the user's secret. An unknown user gives an error
// wrapping ErrUnknownUser; an auth query that cannot run or returns
// something unusable gives one wrapping ErrAuthQuery, logged here with its
// cause. Either way, pass the error to Authenticate, which fails the
// client with 28P01 and nothing more. ctx bounds the wait, not the query:
// a query outlives an impatient caller so that others waiting for the
// same user get its answer.
func (l *Lookup) Secret(ctx context.Context, user string) (Secret, error) {
	if s, ok := l.file[user]; ok {
		return s, nil
	}
	if l.cfg.AuthQuery == "" {
		return Secret{}, fmt.Errorf("%w: %q", ErrUnknownUser, user)
	}
	now := l.now()
	l.mu.Lock()
	e, ok := l.cache[user]
	if ok {
		select {
		case <-e.ready:
			if now.After(e.expires) {
				ok = false
			}
		default: // a query for this user is running
		}
	}
	if !ok {
		if err := l.ctx.Err(); err != nil {
			l.mu.Unlock()
			return Secret{}, fmt.Errorf("%w: lookup closed", ErrAuthQuery)
		}
		e = &lookupEntry{ready: make(chan struct{})}
		l.cache[user] = e
		l.sweepLocked(now)
		l.wg.Go(func() { l.fill(user, e) })
	}
	l.mu.Unlock()
	select {
	case <-e.ready:
		return e.secret, e.err
	case <-ctx.Done():
		return Secret{}, ctx.Err()
	}
}

// sweepLocked drops expired entries when the cache is large.
func (l *Lookup) sweepLocked(now time.Time) {
	if len(l.cache) <= sweepAbove || now.Sub(l.lastSweep) < l.negativeTTL() {
		return
	}
	l.lastSweep = now
	for user, e := range l.cache {
		select {
		case <-e.ready:
			if now.After(e.expires) {
				delete(l.cache, user)
			}
		default:
		}
	}
}

func (l *Lookup) negativeTTL() time.Duration { return min(l.cfg.TTL, maxNegativeTTL) }

// fill runs the auth query for user and publishes the answer in e.
func (l *Lookup) fill(user string, e *lookupEntry) {
	ctx, cancel := context.WithTimeout(l.ctx, authQueryTimeout)
	defer cancel()
	s, err := l.query(ctx, user)
	ttl := l.cfg.TTL
	switch {
	case errors.Is(err, ErrUnknownUser):
		ttl = l.negativeTTL()
		l.log.Debug("auth query: unknown user", zap.String("user", user))
	case err != nil:
		ttl = min(l.cfg.TTL, maxErrorTTL)
		l.log.Warn("auth query failed; clients of this user get 28P01", zap.String("user", user), zap.Error(err))
	}
	e.secret, e.err, e.expires = s, err, l.now().Add(ttl)
	close(e.ready)
}

// query runs the auth query on the primary.
func (l *Lookup) query(ctx context.Context, user string) (Secret, error) {
	addr, ok := l.primary()
	if !ok {
		return Secret{}, fmt.Errorf("%w: no primary to run it on", ErrAuthQuery)
	}
	l.connMu.Lock()
	defer l.connMu.Unlock()
	if l.conn != nil && (l.connAddr != addr || l.conn.IsClosed()) {
		l.closeConnLocked()
	}
	if l.conn == nil {
		conn, err := l.connect(ctx, addr)
		if err != nil {
			return Secret{}, fmt.Errorf("%w: connect to %s as %q: %w", ErrAuthQuery, addr, l.cfg.AuthUser, err)
		}
		l.conn, l.connAddr = conn, addr
	}
	l.queries.Add(1)
	rr := l.conn.ExecParams(ctx, l.cfg.AuthQuery, [][]byte{[]byte(user)}, nil, nil, nil)
	rows := 0
	var secret []byte // the second column of the first row; nil for NULL
	for rr.NextRow() {
		if v := rr.Values(); rows == 0 && len(v) == 2 && v[1] != nil {
			secret = append([]byte{}, v[1]...)
		}
		rows++
	}
	cols := len(rr.FieldDescriptions())
	if _, err := rr.Close(); err != nil {
		if l.conn.IsClosed() {
			l.closeConnLocked()
		}
		return Secret{}, fmt.Errorf("%w: on %s: %w", ErrAuthQuery, addr, err)
	}
	switch {
	case cols != 2:
		return Secret{}, fmt.Errorf("%w: it returns %d columns, want 2 (user name, secret)", ErrAuthQuery, cols)
	case rows == 0:
		return Secret{}, fmt.Errorf("%w: %q", ErrUnknownUser, user)
	case rows > 1:
		return Secret{}, fmt.Errorf("%w: it returns %d rows for user %q, want at most 1", ErrAuthQuery, rows, user)
	case secret == nil:
		return Secret{}, fmt.Errorf("%w: %q has no password", ErrUnknownUser, user)
	}
	s, err := ParseSecret(string(secret))
	if err != nil {
		return Secret{}, fmt.Errorf("%w: secret of user %q: %w", ErrAuthQuery, user, err)
	}
	return s, nil
}

func (l *Lookup) connect(ctx context.Context, addr string) (*pgconn.PgConn, error) {
	if l.cfg.Connect != nil {
		return l.cfg.Connect(ctx, addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=prefer",
		connValue(host), connValue(port), connValue(l.cfg.AuthUser), connValue(l.cfg.AuthPassword), connValue(l.cfg.AuthDatabase)))
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = authConnectTimeout
	return pgconn.ConnectConfig(ctx, cfg)
}

// connValue quotes a libpq connection string value.
func connValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func (l *Lookup) closeConnLocked() {
	if l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
	l.conn, l.connAddr = nil, ""
}

// Close waits for running queries, which it cancels, and closes the
// connection. Secret fails with ErrAuthQuery afterwards for users not in
// the auth file.
func (l *Lookup) Close() error {
	l.mu.Lock()
	l.cancel()
	l.mu.Unlock()
	l.wg.Wait()
	l.connMu.Lock()
	defer l.connMu.Unlock()
	l.closeConnLocked()
	return nil
}
