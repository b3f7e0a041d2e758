package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// Kind is an operation of the key-value workload.
type Kind uint8

// The operations: read a key, write a value, compare-and-set.
const (
	Read Kind = iota
	Write
	CAS
)

func (k Kind) String() string { return [...]string{"read", "write", "cas"}[k] }

// Op is one operation of one client, as the client saw it. Times are
// nanoseconds since the campaign started (one monotonic clock for every
// client). Values are unique per write, so a value names the write that
// put it there.
type Op struct {
	Client int    `json:"client"`
	Port   string `json:"port"` // proxy address the client used
	Kind   Kind   `json:"kind"`
	Key    int    `json:"key"`
	// Value is what a write wrote, what a read returned, and the new value
	// of a compare-and-set (whose expected old value is Old).
	Value int64 `json:"value"`
	Old   int64 `json:"old,omitempty"`
	Call  int64 `json:"call"`
	Ret   int64 `json:"ret"`
	// OK: the operation completed (a CAS that did not apply completes
	// with Applied false). Not OK: an error, Err says which (a SQLSTATE or
	// a network class); a failed write's outcome is unknown until the
	// final primary is asked (Resolve).
	OK      bool   `json:"ok"`
	Applied bool   `json:"applied,omitempty"`
	Err     string `json:"err,omitempty"`
	// Member (server address) and Timeline the operation ran on, when it
	// succeeded.
	Member   string `json:"member,omitempty"`
	Timeline int32  `json:"timeline,omitempty"`
}

// History collects operations from every client.
type History struct {
	start time.Time
	mu    sync.Mutex
	ops   []Op
}

// NewHistory starts the clock.
func NewHistory() *History { return &History{start: time.Now()} }

// Now is nanoseconds since the history started.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// At converts a history time to wall time.
func (h *History) At(ns int64) time.Time { return h.start.Add(time.Duration(ns)) }

func (h *History) add(op Op) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// Ops returns a copy of the operations so far.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// Keys is the number of keys in the workload; few keys make operations
// contend, which is what linearizability checking needs.
const Keys = 5

// timelineSQL is the server's current timeline: the first eight hex
// digits of the current WAL file name. (The checkpoint's timeline in
// pg_control lags behind a fast promotion.)
const timelineSQL = `('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int`

const (
	readSQL  = `SELECT v, host(inet_server_addr()), ` + timelineSQL + ` FROM kv WHERE k = $1`
	writeSQL = `WITH u AS (UPDATE kv SET v = $2 WHERE k = $1 RETURNING k)
INSERT INTO wlog (v, k) SELECT $2, k FROM u RETURNING host(inet_server_addr()), ` + timelineSQL
	casSQL = `WITH u AS (UPDATE kv SET v = $3 WHERE k = $1 AND v = $2 RETURNING k)
INSERT INTO wlog (v, k) SELECT $3, k FROM u RETURNING host(inet_server_addr()), ` + timelineSQL
)

// Schema creates the workload's tables: kv holds the keys, wlog one row
// per applied write (in the same transaction), which tells after the run
// whether a write whose client saw an error committed.
const Schema = `CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL);
CREATE TABLE wlog (v bigint PRIMARY KEY, k int NOT NULL);
INSERT INTO kv SELECT g, 0 FROM generate_series(0, 4) g;`

// Client runs operations through one proxy port until ctx ends,
// reconnecting after every error.
type Client struct {
	ID   int
	Addr string
	H    *History
	// Direct clients connect to one member's PostgreSQL, bypassing the
	// proxies, and only write: they find out whether a server that is no
	// longer the leader (a paused or partitioned one) still acknowledges
	// writes. Their reads would be stale by design there (the proxy is
	// what keeps clients off such a server), so they do none.
	Direct bool
	rng    *rand.Rand
	seq    int64
	// last value this client saw per key, to aim compare-and-sets at a
	// value that may still be there.
	seen [Keys]int64
}

// NewClient makes client id; its random choices come from seed.
func NewClient(id int, addr string, h *History, seed uint64) *Client {
	return &Client{ID: id, Addr: addr, H: h, rng: rand.New(rand.NewPCG(seed, uint64(id)))}
}

// Run loops until ctx ends. Each operation has a 5 s deadline; a client
// pauses a little between operations to keep the history checkable.
func (c *Client) Run(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			var err error
			conn, err = connect(cctx, c.Addr)
			cancel()
			if err != nil {
				conn = nil
				if ctx.Err() == nil {
					// Recorded as a failed read of no key: counted among the
					// errors, ignored by the checks.
					now := c.H.Now()
					c.H.add(Op{Client: c.ID, Port: c.port(), Key: -1, Call: now, Ret: now, Err: "connect:" + errClass(err)})
				}
				_ = pgtest.Sleep(ctx, 50*time.Millisecond)
				continue
			}
		}
		op := c.next()
		op.Call = c.H.Now()
		err := c.do(ctx, conn, &op)
		op.Ret = c.H.Now()
		if ctx.Err() != nil && err != nil {
			// Stopped by the campaign, not by a fault: the outcome is as
			// unknown as any other error's.
			op.Err = "stopped"
		} else if err != nil {
			op.Err = errClass(err)
		} else {
			op.OK = true
		}
		c.H.add(op)
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			if c.Direct {
				// Standbys refuse every write: do not hammer them.
				_ = pgtest.Sleep(ctx, 200*time.Millisecond)
			}
			_ = pgtest.Sleep(ctx, 20*time.Millisecond)
			continue
		}
		pace := time.Duration(10+c.rng.IntN(30)) * time.Millisecond
		if c.Direct {
			pace *= 4
		}
		_ = pgtest.Sleep(ctx, pace)
	}
}

// port names where the client's operations went: a proxy address, or
// direct:<member address>.
func (c *Client) port() string {
	if c.Direct {
		return "direct:" + c.Addr
	}
	return c.Addr
}

func (c *Client) next() Op {
	op := Op{Client: c.ID, Port: c.port(), Key: c.rng.IntN(Keys)}
	switch r := c.rng.IntN(10); {
	case c.Direct:
		op.Kind = Write
	case r < 4:
		op.Kind = Read
	case r < 7:
		op.Kind = Write
	default:
		op.Kind = CAS
		op.Old = c.seen[op.Key]
	}
	if op.Kind != Read {
		c.seq++
		op.Value = int64(c.ID+1)<<40 | c.seq
	}
	return op
}

func (c *Client) do(ctx context.Context, conn *pgx.Conn, op *Op) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	switch op.Kind {
	case Read:
		err := conn.QueryRow(qctx, readSQL, op.Key).Scan(&op.Value, &op.Member, &op.Timeline)
		if err == nil {
			c.seen[op.Key] = op.Value
		}
		return err
	case Write:
		err := conn.QueryRow(qctx, writeSQL, op.Key, op.Value).Scan(&op.Member, &op.Timeline)
		if err == nil {
			c.seen[op.Key] = op.Value
		}
		return err
	default:
		err := conn.QueryRow(qctx, casSQL, op.Key, op.Old, op.Value).Scan(&op.Member, &op.Timeline)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // did not apply: a definite answer
		}
		if err == nil {
			op.Applied = true
			c.seen[op.Key] = op.Value
		}
		return err
	}
}

// errClass names an error for the report: the SQLSTATE of a server (or
// proxy) error, else the kind of failure.
func errClass(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case pgconn.SafeToRetry(err):
		return "conn-refused"
	default:
		return "conn-lost"
	}
}

// String describes an operation for reports.
func (op Op) String() string {
	res := "ok"
	if !op.OK {
		res = "err " + op.Err
	}
	switch op.Kind {
	case CAS:
		return fmt.Sprintf("c%d cas(k%d, %d→%d) %s applied=%v on %s/tl%d [%d,%d]", op.Client, op.Key, op.Old, op.Value, res, op.Applied, op.Member, op.Timeline, op.Call, op.Ret)
	default:
		return fmt.Sprintf("c%d %s(k%d)=%d %s on %s/tl%d [%d,%d]", op.Client, op.Kind, op.Key, op.Value, res, op.Member, op.Timeline, op.Call, op.Ret)
	}
}
