package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/pgrouter/pgrouter/topology"
)

var _ Source = (*Static)(nil)

// Static is a fixed list of addresses from configuration. Each member is
// named by its address and claims RoleUnknown: health checks alone decide
// which one is the primary. Update replaces the list (a SIGHUP reload).
// Its methods are safe for concurrent use; run it at most once at a time.
type Static struct {
	mu      sync.Mutex
	members []topology.Member
	gen     uint64        // bumped by every Update
	updated chan struct{} // cap 1: a pending Update wakes Run once
}

// NewStatic returns a source for addrs, each "host:port". It reports every
// invalid address at once (see ParseAddrs).
func NewStatic(addrs []string) (*Static, error) {
	if err := ParseAddrs(addrs); err != nil {
		return nil, err
	}
	return &Static{members: members(addrs), updated: make(chan struct{}, 1)}, nil
}

// Update replaces the list; a running Run publishes it, even when it is
// unchanged. An invalid list is rejected and the old one kept.
func (s *Static) Update(addrs []string) error {
	if err := ParseAddrs(addrs); err != nil {
		return err
	}
	s.mu.Lock()
	s.members = members(addrs)
	s.gen++
	s.mu.Unlock()
	select {
	case s.updated <- struct{}{}:
	default: // a wake-up is already pending; Run reads the newest list
	}
	return nil
}

// Run publishes the list at once and again after each Update, until ctx
// ends; then it returns nil.
func (s *Static) Run(ctx context.Context, publish func([]topology.Member)) error {
	published := ^uint64(0)
	for {
		s.mu.Lock()
		gen, list := s.gen, append([]topology.Member(nil), s.members...)
		s.mu.Unlock()
		if gen != published {
			publish(list)
			published = gen
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.updated:
		}
	}
}

// ParseAddrs checks that addrs is a non-empty list of distinct "host:port"
// addresses with a non-empty host and a port in 1..65535. It reports every
// problem at once.
func ParseAddrs(addrs []string) error {
	if len(addrs) == 0 {
		return errors.New("static discovery: no addresses")
	}
	var errs []error
	seen := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		if err := checkAddr(a); err != nil {
			errs = append(errs, fmt.Errorf("address %q: %w", a, err))
			continue
		}
		if seen[a] {
			errs = append(errs, fmt.Errorf("address %q: listed twice", a))
		}
		seen[a] = true
	}
	return errors.Join(errs...)
}

func checkAddr(a string) error {
	if strings.TrimSpace(a) != a {
		return errors.New("surrounding spaces")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("missing host")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

func members(addrs []string) []topology.Member {
	ms := make([]topology.Member, len(addrs))
	for i, a := range addrs {
		ms[i] = topology.Member{Name: a, Addr: a, Claimed: topology.RoleUnknown}
	}
	return ms
}
