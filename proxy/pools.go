package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgrouter/pgrouter/proxy/auth"
	"github.com/pgrouter/pgrouter/proxy/pool"
)

// PoolMode says how a listener's sessions get server connections.
type PoolMode string

// Pool modes.
const (
	// PoolPassthrough: one server session per client session, the client
	// authenticating end to end with the server.
	PoolPassthrough PoolMode = "passthrough"
	// PoolSession: the proxy authenticates the client and lends it a
	// pooled server for its whole session.
	PoolSession PoolMode = "session"
	// PoolTransaction: a server is lent per transaction.
	PoolTransaction PoolMode = "transaction"
)

// ParsePoolMode validates a mode name; "" is passthrough.
func ParsePoolMode(s string) (PoolMode, error) {
	switch m := PoolMode(s); m {
	case "", PoolPassthrough:
		return PoolPassthrough, nil
	case PoolSession, PoolTransaction:
		return m, nil
	}
	return "", fmt.Errorf("unknown pool mode %q (want passthrough, session or transaction)", s)
}

// AuthConfig is how pooled modes authenticate clients at the proxy.
type AuthConfig struct {
	HBA    *auth.HBA
	Lookup *auth.Lookup
}

// pools holds one pool per (member, database, user), created on first use.
type pools struct {
	mu sync.Mutex
	m  map[pool.Key]*poolEntry
}

type poolEntry struct {
	pool *pool.Pool
	// creds are the newest credentials a client of this user proved; the
	// pool logs in to servers with them.
	creds atomic.Pointer[auth.Credentials]
	// initial are the parameters a fresh server reports at login, kept
	// from the first login so clients can be greeted without a server.
	initial atomic.Pointer[map[string]string]
	// links says whether the pool's links to servers are plain TCP or
	// TLS, as of the last dial: a loop thread relays only plain ones.
	links atomic.Int32
}

const (
	linksUnknown int32 = iota
	linksPlain
	linksTLS
)

func newPools() *pools { return &pools{m: make(map[pool.Key]*poolEntry)} }

func (ps *pools) get(key pool.Key, cfg pool.Config, creds auth.Credentials, connect func(*poolEntry) pool.Connector) *poolEntry {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	e, ok := ps.m[key]
	if !ok {
		e = &poolEntry{}
		e.pool = pool.NewPool(key, cfg, connect(e))
		ps.m[key] = e
	}
	if old := e.creds.Load(); old == nil || !old.Equal(creds) {
		// Stored only when they change: a copy per client would be an
		// allocation per pgbench -C connection.
		c := creds
		e.creds.Store(&c)
	}
	return e
}

// closeMember closes every pool of a member (its role changed or it left);
// new pools are made on the next use.
func (ps *pools) closeMember(member string) {
	ps.mu.Lock()
	var closing []*pool.Pool
	for k, e := range ps.m {
		if k.Member == member {
			closing = append(closing, e.pool)
			delete(ps.m, k)
		}
	}
	ps.mu.Unlock()
	for _, p := range closing {
		p.Close()
	}
}

func (ps *pools) each(f func(*pool.Pool)) {
	ps.mu.Lock()
	list := make([]*pool.Pool, 0, len(ps.m))
	for _, e := range ps.m {
		list = append(list, e.pool)
	}
	ps.mu.Unlock()
	for _, p := range list {
		f(p)
	}
}

func (ps *pools) closeAll() {
	ps.mu.Lock()
	m := ps.m
	ps.m = make(map[pool.Key]*poolEntry)
	ps.mu.Unlock()
	for _, e := range m {
		e.pool.Close()
	}
}

// PoolStats lists every pool for the admin API.
func (s *Server) PoolStats() []pool.Stats {
	var out []pool.Stats
	s.pools.each(func(p *pool.Pool) { out = append(out, p.Stats()) })
	return out
}

func (s *Server) reapPools(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.pools.each(func(p *pool.Pool) { p.Reap(now) })
		}
	}
}

// serverConnector logs in to a member as the pool's user with the newest
// credentials a client proved, and reads the startup to ReadyForQuery.
func (s *Server) serverConnector(member, addr string, key pool.Key) func(*poolEntry) pool.Connector {
	return func(e *poolEntry) pool.Connector {
		return func(ctx context.Context) (*pool.ServerConn, error) {
			cfg := s.cfg.Load()
			sc, err := pool.Dial(ctx, member, addr, cfg.Server)
			if err != nil {
				return nil, err
			}
			if sc.TLS {
				e.links.Store(linksTLS)
			} else {
				e.links.Store(linksPlain)
			}
			dl := time.Now().Add(cfg.StartupTimeout)
			_ = sc.SetDeadline(dl)
			if err := loginServer(sc, key, *e.creds.Load()); err != nil {
				sc.Close()
				return nil, err
			}
			if e.initial.Load() == nil {
				m := maps.Clone(sc.Initial)
				e.initial.Store(&m)
			}
			_ = sc.SetDeadline(time.Time{})
			return sc, nil
		}
	}
}

// errServerRefused wraps the server's own refusal of a pooled login.
var errServerRefused = errors.New("server refused the login")

func loginServer(sc *pool.ServerConn, key pool.Key, creds auth.Credentials) error {
	// No application_name: a client that sends none must find none, as
	// on a direct connection, without a SET on every server it is lent.
	params := []param{{"user", key.User}, {"database", key.Database}}
	if _, err := sc.Write(encodeStartup(3<<16, params)); err != nil {
		return err
	}
	if err := auth.Login(sc, creds); err != nil {
		return err
	}
	sc.Params = make(map[string]string)
	sc.Prepared = make(map[string]struct{})
	sc.Applied = make(map[string]string)
	if _, err := readUntilReadyBuffered(sc); err != nil {
		var se *serverError
		if errors.As(err, &se) {
			return fmt.Errorf("%w: %s", errServerRefused, se.msg)
		}
		return err
	}
	sc.Initial = maps.Clone(sc.Params)
	return nil
}

func parseParameterStatus(body []byte) (string, string, bool) {
	i := indexZero(body)
	if i < 0 {
		return "", "", false
	}
	rest := body[i+1:]
	j := indexZero(rest)
	if j < 0 {
		return "", "", false
	}
	return string(body[:i]), string(rest[:j]), true
}

// errorField extracts one field (M for the message, C for the SQLSTATE)
// of an ErrorResponse body.
func errorField(body []byte, field byte) string {
	for len(body) > 1 {
		t := body[0]
		i := indexZero(body[1:])
		if i < 0 {
			break
		}
		if t == field {
			return string(body[1 : 1+i])
		}
		body = body[2+i:]
	}
	return ""
}

// serverError is an ErrorResponse a server sent the proxy itself.
type serverError struct{ msg string }

func (e *serverError) Error() string { return e.msg }

// readUntilReady reads a server's answers to the proxy's own request up
// to the next ReadyForQuery: it records ParameterStatus and BackendKeyData
// on sc, returns the first column of the last DataRow, and the first
// ErrorResponse as a *serverError (also when the server closes after it,
// as it does with a FATAL one).
func readUntilReady(sc *pool.ServerConn) (string, error) {
	return readAnswers(sc, sc)
}

// readUntilReadyBuffered is readUntilReady reading in chunks, not with two
// system calls per message, for answers after which the server sends
// nothing until asked (a login's greeting, a reset, settings applied):
// bytes after the ReadyForQuery, which the buffer would keep from the
// relay, make it fail, and the caller gives the server up.
func readUntilReadyBuffered(sc *pool.ServerConn) (string, error) {
	br := startupReaders.Get().(*bufio.Reader)
	br.Reset(sc)
	defer func() {
		br.Reset(nil)
		startupReaders.Put(br)
	}()
	value, err := readAnswers(sc, br)
	if err == nil && br.Buffered() > 0 {
		err = errors.New("the server sent more after its ReadyForQuery")
	}
	return value, err
}

// readAnswers is readUntilReady reading from r, sc or a buffer over it.
func readAnswers(sc *pool.ServerConn, r io.Reader) (string, error) {
	var firstErr error
	var value string
	for {
		typ, body, err := readMessage(r, maxStartupMessage)
		if err != nil {
			if firstErr != nil {
				return "", firstErr
			}
			return "", err
		}
		switch typ {
		case 'S':
			if name, v, ok := parseParameterStatus(body); ok {
				sc.Params[name] = v
			}
		case 'K':
			if len(body) >= 8 {
				sc.PID = getUint32(body)
				sc.Key = append([]byte(nil), body[4:]...)
			}
		case 'D':
			// int16 column count, int32 length, value
			if len(body) >= 6 {
				if n := int(int32(getUint32(body[2:6]))); n > 0 && 6+n <= len(body) {
					value = string(body[6 : 6+n])
				}
			}
		case 'E':
			if firstErr == nil {
				msg := errorField(body, 'M')
				if msg == "" {
					msg = "unknown error"
				}
				firstErr = &serverError{msg: msg}
			}
		case 'Z':
			return value, firstErr
		}
	}
}
