package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Cancellation across proxy replicas. A client's CancelRequest opens a new
// connection, which a load balancer in front of several replicas may hand
// to a replica other than the one holding the session. A replica that does
// not know a key passes the request on to its peers' peer ports, where it
// is looked up locally and never passed on again: one hop, no loops, and
// no need to encode a replica's identity into keys as short as 4 bytes.

// PeerConfig makes cancellation work across replicas of a standalone proxy.
type PeerConfig struct {
	// Listen is host:port of this replica's peer port, which accepts only
	// cancel requests from other replicas. "" means none.
	Listen string
	// Peers are the other replicas' peer ports as host:port. A host that
	// resolves to several addresses (a Kubernetes headless Service) names
	// every one of them; it is resolved at each use, so replicas that come
	// and go are followed. Listing this replica too is harmless.
	Peers []string
}

// maxPeerForwards bounds the cancel requests being passed to peers at
// once, so forged keys cannot turn one replica into an amplifier.
const maxPeerForwards = 16

// peerTimeout bounds resolving, dialing and writing to one peer.
const peerTimeout = 2 * time.Second

// forwardToPeers sends a cancel request unknown here to every peer, in the
// background. It reports false when too many are already under way.
func (s *Server) forwardToPeers(peers []string, pid uint32, key []byte) bool {
	select {
	case s.peerSlots <- struct{}{}:
	default:
		return false
	}
	msg := encodeCancel(pid, key)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.peerSlots }()
		ctx, cancel := context.WithTimeout(context.Background(), peerTimeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, addr := range resolvePeers(ctx, peers) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := sendCancel(ctx, addr, msg); err != nil {
					s.log.Debug("cannot pass cancel request to peer", zap.String("peer", addr), zap.Error(err))
				}
			}()
		}
		wg.Wait()
	}()
	return true
}

// resolvePeers expands each host:port into one address per IP the host
// resolves to.
func resolvePeers(ctx context.Context, peers []string) []string {
	var out []string
	for _, p := range peers {
		host, port, err := net.SplitHostPort(p)
		if err != nil {
			continue
		}
		ips, err := net.DefaultResolver.LookupHost(ctx, host)
		if err != nil {
			continue
		}
		for _, ip := range ips {
			out = append(out, net.JoinHostPort(ip, port))
		}
	}
	return out
}

func sendCancel(ctx context.Context, addr string, msg []byte) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	_, err = c.Write(msg)
	return err
}

// servePeers answers other replicas' cancel requests on the peer port
// until ctx ends. Anything but a cancel request is closed unanswered.
func (s *Server) servePeers(ctx context.Context, ln net.Listener) {
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("peer accept failed", zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(peerTimeout))
			p, err := readStartupPacket(nc, 16+256)
			if err != nil || p.kind != packetCancel {
				s.metrics.cancels.WithLabelValues("peer_refused").Inc()
				return
			}
			s.forwardCancel(p.cancelPID, p.cancelKey, s.cfg.Load(), true)
		}()
	}
}
