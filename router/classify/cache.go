package classify

import "sync"

// cacheShards splits the cache so that concurrent sessions rarely meet on
// one lock; a hit takes only its shard's read lock.
const cacheShards = 16

// entry is one cached classification.
type entry struct {
	res Result
	// gen is the function generation the result was computed under, or 0
	// when it does not depend on the Volatility hook.
	gen uint64
	// exactOnly marks a normalized key whose statement depends on a
	// literal's value: look the text up by its exact key instead.
	exactOnly bool
}

// cache maps 64-bit keys to entries. It is bounded: a full shard drops a
// random entry (Go's map iteration starts at a random place) to make room.
// It is safe for concurrent use.
type cache struct {
	perShard int
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[uint64]entry
	_  [40]byte // keep shards' locks on separate cache lines
}

func newCache(size int) *cache {
	c := &cache{perShard: max(1, (size+cacheShards-1)/cacheShards)}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]entry)
	}
	return c
}

func (c *cache) get(k uint64) (entry, bool) {
	s := &c.shards[k>>60]
	s.mu.RLock()
	e, ok := s.m[k]
	s.mu.RUnlock()
	return e, ok
}

func (c *cache) put(k uint64, e entry) {
	s := &c.shards[k>>60]
	s.mu.Lock()
	if _, ok := s.m[k]; !ok && len(s.m) >= c.perShard {
		for old := range s.m {
			delete(s.m, old)
			break
		}
	}
	s.m[k] = e
	s.mu.Unlock()
}

func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
