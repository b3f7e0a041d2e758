// Package discovery finds the members of a cluster and the roles that the
// cluster's own machinery claims for them. Health checks confirm the claims.
package discovery

import (
	"context"

	"github.com/pgrouter/pgrouter/topology"
)

// Source publishes the full member list on every change until ctx ends.
// publish is called from the source's goroutine and must not block for long;
// the slice belongs to the receiver.
type Source interface {
	Run(ctx context.Context, publish func([]topology.Member)) error
}
