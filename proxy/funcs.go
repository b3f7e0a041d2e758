package proxy

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// FunctionCatalog knows the volatility of user functions, read from
// pg_proc of every database a split session uses, so that the classifier
// sends calls of volatile functions to the primary. A function unknown in
// every database loaded so far is unknown (the classifier then fails safe).
// Safe for concurrent use.
type FunctionCatalog struct {
	// Connect opens a connection to the primary's database db.
	Connect func(ctx context.Context, db string) (*pgconn.PgConn, error)
	Log     *zap.Logger
	// OnChange runs after a load changed what is known (to drop cached
	// classifications).
	OnChange func()

	mu      sync.Mutex
	vol     map[string]byte // name and schema.name -> most volatile seen
	loaded  map[string]time.Time
	loading map[string]bool
}

// Volatility returns 'i', 's' or 'v' for a function name.
func (f *FunctionCatalog) Volatility(name string) (byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vol[strings.ToLower(name)]
	return v, ok
}

// Ensure loads db's functions in the background unless loaded within the
// last minute.
func (f *FunctionCatalog) Ensure(db string) {
	f.mu.Lock()
	if f.loaded == nil {
		f.loaded, f.loading, f.vol = map[string]time.Time{}, map[string]bool{}, map[string]byte{}
	}
	if f.loading[db] || time.Since(f.loaded[db]) < time.Minute {
		f.mu.Unlock()
		return
	}
	f.loading[db] = true
	f.mu.Unlock()
	go f.load(db)
}

func (f *FunctionCatalog) load(db string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer func() {
		f.mu.Lock()
		f.loading[db] = false
		f.mu.Unlock()
	}()
	conn, err := f.Connect(ctx, db)
	if err != nil {
		if f.Log != nil {
			f.Log.Warn("cannot read pg_proc for the statement split", zap.String("database", db), zap.Error(err))
		}
		return
	}
	defer conn.Close(context.Background())
	rr := conn.ExecParams(ctx, `SELECT p.proname, n.nspname, p.provolatile::text FROM pg_proc p
		JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')`, nil, nil, nil, nil)
	found := map[string]byte{}
	for rr.NextRow() {
		v := rr.Values()
		name, nsp, vol := strings.ToLower(string(v[0])), strings.ToLower(string(v[1])), byte('v')
		if len(v[2]) > 0 {
			vol = v[2][0]
		}
		for _, k := range []string{name, nsp + "." + name} {
			if old, ok := found[k]; !ok || rank(vol) > rank(old) {
				found[k] = vol
			}
		}
	}
	if _, err := rr.Close(); err != nil {
		if f.Log != nil {
			f.Log.Warn("cannot read pg_proc for the statement split", zap.String("database", db), zap.Error(err))
		}
		return
	}
	changed := false
	f.mu.Lock()
	for k, v := range found {
		if old, ok := f.vol[k]; !ok || rank(v) > rank(old) {
			f.vol[k] = v
			changed = true
		}
	}
	f.loaded[db] = time.Now()
	f.mu.Unlock()
	if f.Log != nil {
		f.Log.Debug("user functions loaded for the statement split", zap.String("database", db), zap.Int("functions", len(found)/2), zap.Bool("changed", changed))
	}
	if changed && f.OnChange != nil {
		f.OnChange()
	}
}

// rank orders volatility so that merging databases keeps the most
// dangerous answer.
func rank(v byte) int {
	switch v {
	case 'i':
		return 0
	case 's':
		return 1
	}
	return 2
}
