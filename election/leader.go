package election

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/dcs"

	"github.com/pgrouter/pgrouter/topology"
)

// leadResult is why the leader loop returned.
type leadResult struct {
	// reason is logged; code labels the metric.
	reason, code string
	// stop asks for PostgreSQL to be stopped before the lease goes.
	stop bool
	// handedOver is set after a switchover: the key is already the
	// target's to take.
	handedOver bool
}

// hold runs the leader loop under its own context and renews the lease
// until the loop gives up, the lease is lost, or ctx ends. It returns only
// after the leader loop has returned, so two never overlap.
func (a *Agent) hold(ctx context.Context, acq acquisition) {
	a.isLeader.Store(true)
	a.metrics.acquired(acq.kind)
	a.log.Info("acquired the leader lease", zap.String("kind", acq.kind), zap.String("reason", acq.reason))
	leadCtx, cancelLead := context.WithCancel(ctx)
	defer cancelLead()
	done := make(chan leadResult, 1)
	go func() { done <- a.lead(leadCtx, acq) }()

	lastRenew := acq.at
	t := time.NewTicker(a.cfg.RetryPeriod)
	defer t.Stop()
	for {
		select {
		case res := <-done:
			a.stepDown(res)
			return
		case <-ctx.Done():
			cancelLead()
			<-done
			a.stepDown(leadResult{reason: "agent shutting down", code: "shutdown", stop: true})
			return
		case <-t.C:
		}
		deadline := lastRenew.Add(a.cfg.RenewDeadline)
		began := a.now()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		err := a.store.Renew(rctx)
		cancel()
		a.metrics.renewal(a.now().Sub(began), err)
		if err == nil {
			lastRenew = began
			continue
		}
		if ctx.Err() != nil {
			continue // shut down cleanly above
		}
		var why, code string
		switch {
		case errors.Is(err, dcs.ErrLost):
			why, code = "leader lease lost: "+err.Error(), "lost"
		case !a.now().Before(deadline):
			why, code = fmt.Sprintf("could not renew the leader lease within the renew deadline %v: %v", a.cfg.RenewDeadline, err), "renew_deadline"
		default:
			a.every("renew", 5*time.Second, func() { a.log.Warn("renewing the leader lease failed; retrying", zap.Error(err)) })
			continue
		}
		a.fence(why, code, lastRenew, cancelLead, done)
		return
	}
}

// fenceBudget bounds the immediate stop of a fence before the postmaster
// is killed: half of what the lease arithmetic leaves.
func (a *Agent) fenceBudget() time.Duration {
	return max(200*time.Millisecond, (a.cfg.TTL-a.cfg.RenewDeadline-a.cfg.RetryPeriod)/2)
}

// fence stops PostgreSQL at once, without waiting for the leader loop,
// which it cancels: the lease may be someone else's within
// TTL − RenewDeadline.
func (a *Agent) fence(why, code string, lastRenew time.Time, cancelLead context.CancelFunc, done <-chan leadResult) {
	a.isLeader.Store(false)
	a.setReason("fenced: " + why)
	a.log.Error("fencing: stopping postgres so that it accepts no writes", zap.String("reason", why),
		zap.Duration("since_last_renewal", a.now().Sub(lastRenew)))
	cancelLead()
	fctx, cancel := context.WithTimeout(context.Background(), a.fenceBudget())
	err := a.pg.Stop(fctx, "immediate")
	cancel()
	if err != nil {
		a.log.Error("fencing: stop postgres", zap.Error(err))
	}
	a.metrics.fenced(code)
	a.log.Info("fenced", zap.Duration("since_last_renewal", a.now().Sub(lastRenew)))
	<-done
	// The leader loop may have been starting or promoting postgres when
	// it was cancelled.
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.pg.Stop(sctx, "immediate"); err != nil {
		a.log.Error("fencing: stop postgres", zap.Error(err))
	}
	a.noteRole(dcs.RoleStopped)
	a.setState("fenced")
	rctx, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	_ = a.store.Release(rctx)
	a.metrics.released(code)
}

// stepDown ends a leadership the leader loop gave up.
func (a *Agent) stepDown(res leadResult) {
	a.isLeader.Store(false)
	a.setReason(res.reason)
	if res.handedOver {
		a.log.Info("stepped down", zap.String("reason", res.reason))
		a.metrics.released(res.code)
		return
	}
	if res.stop {
		mode := "immediate"
		if res.code == "shutdown" {
			mode = "fast" // standbys receive all WAL before the lease goes
		}
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := a.pg.Stop(sctx, mode); err != nil {
			a.log.Error("stop postgres before releasing the lease", zap.Error(err))
		}
		cancel()
		a.noteRole(dcs.RoleStopped)
	}
	rctx, cancel := context.WithTimeout(context.Background(), a.cfg.RenewDeadline)
	defer cancel()
	if err := a.store.Release(rctx); err != nil {
		a.log.Warn("release the leader lease", zap.Error(err))
	}
	a.metrics.released(res.code)
	a.log.Info("released the leader lease", zap.String("reason", res.reason))
}

// lead is the leader loop: it makes the local server the primary, then
// keeps it so, publishes the leader's status, manages the synchronous
// standby and runs switchovers. It returns why leadership should end; a
// cancelled ctx means the caller is ending it.
func (a *Agent) lead(ctx context.Context, acq acquisition) leadResult {
	switch acq.kind {
	case "bootstrap":
		if res, ok := a.bootstrap(ctx); !ok {
			return res
		}
	default:
		st := a.pg.Observe(ctx)
		switch {
		case !st.Running:
			return leadResult{reason: "postgres is not running", code: "postgres_down"}
		case st.InRecovery:
			if err := a.promote(ctx, acq); err != nil {
				return leadResult{reason: "promotion failed: " + err.Error(), code: "promote_failed"}
			}
		}
		if acq.kind == "switchover" {
			cctx, cancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
			_ = a.store.ClearSwitchover(cctx)
			cancel()
		}
	}
	a.setState("running")
	t := time.NewTicker(a.cfg.RetryPeriod)
	defer t.Stop()
	var sync syncProgress
	var unhealthySince time.Time
	for {
		if res, stop := a.leadTick(ctx, &sync, &unhealthySince); stop {
			return res
		}
		select {
		case <-ctx.Done():
			return leadResult{reason: "cancelled", code: "cancelled"}
		case <-t.C:
		case <-a.wake:
		}
	}
}

// bootstrap initializes the cluster under the leader lease.
func (a *Agent) bootstrap(ctx context.Context) (leadResult, bool) {
	a.setState("bootstrapping")
	a.setReason("bootstrap: initdb")
	a.log.Info("bootstrapping the cluster (initdb)")
	began := a.now()
	id, err := a.pg.Bootstrap(ctx)
	if err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = a.pg.Stop(sctx, "immediate")
		cancel()
		_ = a.pg.Wipe()
		return leadResult{reason: "bootstrap failed: " + err.Error(), code: "bootstrap_failed"}, false
	}
	for {
		ictx, cancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
		err := a.store.SetInitialized(ictx, id)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return leadResult{reason: "cancelled", code: "cancelled"}, false
		}
		a.log.Warn("record the bootstrap", zap.Error(err))
		time.Sleep(a.cfg.RetryPeriod)
	}
	a.log.Info("bootstrapped", zap.String("system_id", id), zap.Duration("took", a.now().Sub(began)))
	a.noteRole(dcs.RolePrimary)
	return leadResult{}, true
}

// promote makes the local standby the primary. In synchronous mode the
// sync record names only this member first: commits it acknowledges
// before a new synchronous standby is confirmed exist only here.
func (a *Agent) promote(ctx context.Context, acq acquisition) error {
	a.setState("promoting")
	a.setReason(acq.kind + ": " + acq.reason)
	if a.cfg.Synchronous {
		sctx, cancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
		err := a.store.SetSync(sctx, dcs.Sync{Leader: a.cfg.Name})
		cancel()
		if err != nil {
			return fmt.Errorf("record sync state: %w", err)
		}
	}
	began := a.now()
	if err := a.pg.Promote(ctx); err != nil {
		return err
	}
	took := a.now().Sub(began)
	if err := a.pg.Reconfigure(ctx, ServerOptions{}); err != nil {
		a.log.Warn("reconfigure after promotion", zap.Error(err))
	}
	a.metrics.promoted(acq.kind)
	a.log.Info("promoted", zap.String("kind", acq.kind), zap.String("reason", acq.reason), zap.Duration("took", took),
		zap.Duration("since_lease", a.now().Sub(acq.at)))
	a.noteRole(dcs.RolePrimary)
	return nil
}

// leadTick is one pass of the leader loop; stop reports the loop must end.
func (a *Agent) leadTick(ctx context.Context, sync *syncProgress, unhealthySince *time.Time) (leadResult, bool) {
	st := a.pg.Observe(ctx)
	if ctx.Err() != nil {
		return leadResult{reason: "cancelled", code: "cancelled"}, true
	}
	switch {
	case !st.Initialized:
		a.log.Error("data directory is gone: stopping postgres and releasing the lease at once")
		sctx, cancel := context.WithTimeout(context.Background(), a.fenceBudget())
		_ = a.pg.Stop(sctx, "immediate")
		cancel()
		return leadResult{reason: "data directory is gone", code: "datadir_gone"}, true
	case !st.Running:
		return leadResult{reason: "postgres is not running", code: "postgres_down"}, true
	case !st.Answering:
		if unhealthySince.IsZero() {
			*unhealthySince = a.now()
		}
		if d := a.now().Sub(*unhealthySince); d > a.cfg.UnhealthyTimeout {
			return leadResult{reason: fmt.Sprintf("postgres has not answered for %v: %v", d.Round(time.Millisecond), st.Err),
				code: "postgres_unhealthy", stop: true}, true
		}
		return leadResult{}, false
	case st.InRecovery:
		return leadResult{reason: "postgres is in recovery", code: "in_recovery", stop: true}, true
	}
	*unhealthySince = time.Time{}
	lctx, cancel := context.WithTimeout(ctx, a.cfg.RenewDeadline)
	defer cancel()
	cl, err := a.store.Load(lctx)
	if err != nil {
		a.setView(st, nil, err)
		return leadResult{}, false // renewing decides whether we still lead
	}
	a.publish(ctx, st, cl, false)
	a.setView(st, cl, nil)
	if cl.Leader != a.cfg.Name {
		return leadResult{}, false
	}
	if cl.Initialized == "" && st.SystemID != "" {
		_ = a.store.SetInitialized(lctx, st.SystemID)
	}
	status := dcs.Status{Leader: a.cfg.Name, Timeline: st.Timeline, LSN: st.ReceivedLSN, Replication: st.Replication, UpdatedAt: a.now().UTC()}
	if err := a.store.SetStatus(lctx, status); err != nil && !errors.Is(err, dcs.ErrNotLeader) {
		a.every("status", 10*time.Second, func() { a.log.Warn("write leader status", zap.Error(err)) })
	}
	if a.cfg.Synchronous {
		a.manageSync(lctx, st, cl, sync)
	} else if st.SyncStandby != "" {
		a.log.Info("synchronous mode is off: clearing synchronous_standby_names")
		_ = a.pg.Reconfigure(ctx, ServerOptions{})
	}
	if sw := cl.Switchover; sw != nil && sw.HandedOverAt.IsZero() && sw.Error == "" {
		if res, done := a.switchover(ctx, st, cl); done {
			return res, true
		}
	}
	return leadResult{}, false
}

// syncProgress is a synchronous standby named in
// synchronous_standby_names but not yet recorded: it is recorded once it
// is synchronous and has flushed what the primary had written when it was
// named.
type syncProgress struct {
	name string
	lsn  uint64
}

// manageSync keeps one synchronous standby, so that failover never loses
// an acknowledged commit. The record (who may be promoted) is withdrawn
// before synchronous_standby_names changes and written only after the new
// standby has caught up.
func (a *Agent) manageSync(ctx context.Context, st PGState, cl *dcs.Cluster, p *syncProgress) {
	me := a.cfg.Name
	alone := dcs.Sync{Leader: me}
	want := ChooseSync(st.SyncStandby, st.Replication, cl.Members)
	if want.Standby != st.SyncStandby {
		if cl.Sync != alone {
			if err := a.store.SetSync(ctx, alone); err != nil {
				a.log.Warn("withdraw the sync record", zap.Error(err))
				return
			}
		}
		if err := a.pg.Reconfigure(ctx, ServerOptions{SyncStandby: want.Standby}); err != nil {
			a.log.Error("set synchronous_standby_names", zap.Error(err))
			return
		}
		a.log.Info("synchronous standby changed", zap.String("from", st.SyncStandby), zap.String("to", want.Standby),
			zap.String("reason", want.Reason))
		a.metrics.syncChanged()
		*p = syncProgress{name: want.Standby}
		return
	}
	if want.Standby == "" {
		if cl.Sync != alone {
			_ = a.store.SetSync(ctx, alone)
		}
		return
	}
	if cl.Sync == (dcs.Sync{Leader: me, Standby: want.Standby}) {
		return
	}
	if p.name != want.Standby || p.lsn == 0 {
		*p = syncProgress{name: want.Standby, lsn: st.ReceivedLSN}
		return
	}
	if r := st.Replication[want.Standby]; r.SyncState == "sync" && r.FlushLSN >= p.lsn {
		if err := a.store.SetSync(ctx, dcs.Sync{Leader: me, Standby: want.Standby}); err != nil {
			a.log.Warn("record the synchronous standby", zap.Error(err))
			return
		}
		a.log.Info("synchronous standby confirmed", zap.String("standby", want.Standby), zap.String("flushed", topology.FormatLSN(r.FlushLSN)))
	}
}
