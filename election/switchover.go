package election

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/dcs"

	"github.com/pgrouter/pgrouter/topology"
)

// switchoverRequestTTL is how long a request waits for the leader.
const switchoverRequestTTL = 30 * time.Second

// switchover runs a planned switchover requested in cl: checkpoint, stop
// cleanly (a fast shutdown sends the remaining WAL to the connected
// standbys), wait until the target has replayed the shutdown checkpoint,
// then hand the key over so that only the target may take it. done is
// false when the request was refused or aborted and this member stays
// the leader.
func (a *Agent) switchover(ctx context.Context, st PGState, cl *dcs.Cluster) (leadResult, bool) {
	sw := *cl.Switchover
	if a.now().Sub(sw.At) > switchoverRequestTTL {
		a.log.Warn("ignoring a stale switchover request", zap.Time("requested", sw.At))
		_ = a.store.ClearSwitchover(ctx)
		return leadResult{}, false
	}
	target, why := a.switchoverTarget(sw, st, cl)
	if target == "" {
		a.refuseSwitchover(ctx, sw, why)
		return leadResult{}, false
	}
	tm := cl.Members[target]
	a.log.Info("switchover: demoting", zap.String("to", target))
	a.setReason("switchover to " + target)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	if err := a.pg.Checkpoint(cctx); err != nil {
		a.log.Warn("switchover: checkpoint", zap.Error(err))
	}
	cancel()

	began := a.now()
	a.setState("demoting")
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	err := a.pg.Stop(sctx, "fast")
	cancel()
	if err != nil {
		return leadResult{reason: "switchover: stop failed: " + err.Error(), code: "switchover_failed", stop: true}, true
	}
	a.noteRole(dcs.RoleStopped)
	final, err := a.pg.FinalLSN(ctx)
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = a.pg.WaitReplayed(wctx, tm, final+1)
		cancel()
	}
	if err != nil {
		a.log.Error("switchover: target did not replay everything; staying the leader", zap.String("to", target), zap.Error(err))
		a.setReason("switchover aborted: restarting as primary")
		if serr := a.pg.Start(ctx, ServerOptions{SyncStandby: st.SyncStandby}); serr != nil {
			return leadResult{reason: "switchover aborted and restart failed: " + serr.Error(), code: "switchover_failed"}, true
		}
		a.refuseSwitchover(ctx, sw, "target did not replay the old primary's final WAL: "+err.Error())
		return leadResult{}, false
	}
	sw.From, sw.To, sw.HandedOverAt, sw.LSN = a.cfg.Name, target, a.now().UTC(), final
	hctx, cancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
	err = a.store.Handover(hctx, sw)
	cancel()
	if err != nil {
		// The lease is in doubt: leave the server stopped, the renew loop
		// or an election settles it.
		return leadResult{reason: "switchover: handover failed: " + err.Error(), code: "switchover_failed"}, true
	}
	a.metrics.switchedOver()
	a.log.Info("switchover: handed over", zap.String("to", target), zap.String("final_lsn", topology.FormatLSN(final)),
		zap.Duration("stopped_for", a.now().Sub(began)))
	return leadResult{reason: "switchover to " + target, code: "switchover", handedOver: true}, true
}

// switchoverTarget checks the requested target, or picks one: the
// synchronous standby in synchronous mode, else the streaming standby with
// the furthest flush position.
func (a *Agent) switchoverTarget(sw dcs.Switchover, st PGState, cl *dcs.Cluster) (string, string) {
	if sw.From != "" && sw.From != a.cfg.Name {
		return "", fmt.Sprintf("requested from %s, but %s leads", sw.From, a.cfg.Name)
	}
	target := sw.To
	if target == "" {
		if a.cfg.Synchronous {
			target = cl.Sync.Standby
		} else {
			target = ChooseSync("", st.Replication, cl.Members).Standby
		}
		if target == "" {
			return "", "no standby streams from the leader"
		}
	}
	if target == a.cfg.Name {
		return "", target + " is already the leader"
	}
	m, ok := cl.Members[target]
	switch {
	case !ok:
		return "", target + " is not a member"
	case m.Role != dcs.RoleStandby:
		return "", target + " is not running as a standby"
	case st.Replication[target].State != "streaming":
		return "", target + " does not stream from the leader"
	case a.cfg.Synchronous && (cl.Sync.Leader != a.cfg.Name || cl.Sync.Standby != target):
		return "", fmt.Sprintf("synchronous mode: %s is not the synchronous standby (%q is)", target, cl.Sync.Standby)
	}
	return target, ""
}

func (a *Agent) refuseSwitchover(ctx context.Context, sw dcs.Switchover, why string) {
	a.log.Warn("switchover refused", zap.String("to", sw.To), zap.String("reason", why))
	sw.Error = why
	rctx, cancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
	defer cancel()
	_ = a.store.RequestSwitchover(rctx, sw)
}
