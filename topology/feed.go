package topology

import "sync"

// Feed holds the newest Snapshot and tells waiters when a newer one
// arrives. Readers never block the publisher: each Publish closes the
// channel handed out with the previous snapshot, so any number of readers
// wake, and a slow reader simply sees the newest state when it looks.
// The zero value is ready to use and holds an empty snapshot.
type Feed struct {
	mu      sync.Mutex
	cur     *Snapshot
	changed chan struct{}
}

// Publish makes s the current snapshot and wakes every waiter. s must not be
// modified afterwards.
func (f *Feed) Publish(s *Snapshot) {
	f.mu.Lock()
	f.init()
	f.cur = s
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// Load returns the current snapshot and a channel that is closed once a newer
// one has been published.
func (f *Feed) Load() (*Snapshot, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	return f.cur, f.changed
}

func (f *Feed) init() {
	if f.changed == nil {
		f.changed = make(chan struct{})
		if f.cur == nil {
			f.cur = &Snapshot{}
		}
	}
}
