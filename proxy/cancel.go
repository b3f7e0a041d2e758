package proxy

import (
	"crypto/rand"
	"sync"
)

// cancelKey identifies a session to a client: the backend's real process
// id and a secret key the proxy made up. The backend's own key never
// reaches the client, so a client can cancel only what the proxy lets it.
type cancelKey struct {
	pid uint32
	key string
}

// cancelTarget is where a CancelRequest for a session must go.
type cancelTarget struct {
	addr    string
	pid     uint32
	realKey []byte
	// session is set for pooled sessions, whose server changes.
	session *session
}

// cancelRegistry maps client-visible keys to backends. Two backends on
// different members may hand out the same process id; the proxy's random
// key tells them apart. Safe for concurrent use.
type cancelRegistry struct {
	mu sync.Mutex
	m  map[cancelKey]cancelTarget
}

func newCancelRegistry() *cancelRegistry {
	return &cancelRegistry{m: make(map[cancelKey]cancelTarget)}
}

// register stores t and returns the key the client must present: the same
// length as the backend's key (4 bytes before protocol 3.2, up to 256 with
// it), random, and unique among live sessions with that pid.
func (r *cancelRegistry) register(t cancelTarget) ([]byte, error) {
	n := len(t.realKey)
	if n == 0 {
		n = 4
	}
	key := make([]byte, n)
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		k := cancelKey{pid: t.pid, key: string(key)}
		if _, taken := r.m[k]; !taken {
			r.m[k] = t
			return key, nil
		}
	}
}

func (r *cancelRegistry) lookup(pid uint32, key []byte) (cancelTarget, bool) {
	r.mu.Lock()
	t, ok := r.m[cancelKey{pid: pid, key: string(key)}]
	r.mu.Unlock()
	return t, ok
}

func (r *cancelRegistry) remove(pid uint32, key []byte) {
	r.mu.Lock()
	delete(r.m, cancelKey{pid: pid, key: string(key)})
	r.mu.Unlock()
}

// registerSession gives a pooled session a key of the proxy's own, and a
// process id: pid when not 0 (a session-mode client's server's, which it
// keeps for the whole session), or one of the proxy's own. Cancel requests
// with them reach whatever server the session holds at that moment.
func (r *cancelRegistry) registerSession(sess *session, pid uint32) (uint32, []byte, error) {
	key := make([]byte, 4)
	var pidb [4]byte
	fixed := pid != 0
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if _, err := rand.Read(key); err != nil {
			return 0, nil, err
		}
		if !fixed {
			if _, err := rand.Read(pidb[:]); err != nil {
				return 0, nil, err
			}
			pid = getUint32(pidb[:]) & 0x7fffffff
		}
		k := cancelKey{pid: pid, key: string(key)}
		if _, taken := r.m[k]; !taken && pid != 0 {
			r.m[k] = cancelTarget{session: sess}
			return pid, key, nil
		}
	}
}
