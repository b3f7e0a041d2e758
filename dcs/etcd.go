package dcs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

var _ Store = (*Etcd)(nil)

// EtcdConfig says how to reach etcd and who this member is.
type EtcdConfig struct {
	// Endpoints are etcd client URLs or host:port pairs.
	Endpoints []string
	// Scope names the cluster; its keys live under /pgrouter/<scope>/.
	Scope string
	// Name is this member; empty for a read-only Store (discovery).
	Name string
	// TTL is the lease of the leader key and of the member record, in
	// whole seconds (etcd leases are granted in seconds).
	TTL time.Duration
	// DialTimeout bounds the first connection; default 2s.
	DialTimeout time.Duration
	// Log receives the etcd client's warnings; nil logs nothing.
	Log *zap.Logger
}

// Etcd is the Store on etcd: the leader key is attached to a lease that
// the leader renews with KeepAliveOnce, and every write the leader makes
// is a transaction that first checks the key still names it with its
// lease. The member record lives on a second lease.
type Etcd struct {
	cli  *clientv3.Client
	keys Keys
	name string
	ttl  int64

	mu          sync.Mutex
	leaderLease clientv3.LeaseID // 0 when not holding the key
	memberLease clientv3.LeaseID // 0 before the first publish
	lastMember  []byte           // last record written, UpdatedAt zeroed
	lastPut     time.Time
	lastKA      time.Time
}

// NewEtcd connects to etcd. It does not wait for etcd to answer.
func NewEtcd(c EtcdConfig) (*Etcd, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if !ValidName(c.Scope) {
		return nil, fmt.Errorf("etcd: invalid scope %q", c.Scope)
	}
	ttl := int64(c.TTL / time.Second)
	if c.Name != "" && (ttl < 2 || c.TTL%time.Second != 0) {
		return nil, fmt.Errorf("etcd: lease TTL %v must be whole seconds, at least 2s", c.TTL)
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 2 * time.Second
	}
	log := c.Log
	if log == nil {
		log = zap.NewNop()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            c.Endpoints,
		DialTimeout:          c.DialTimeout,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		// The client logs every retry at warn: keep errors only.
		Logger: log.WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel)),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(c.Endpoints, ","), err)
	}
	return &Etcd{cli: cli, keys: NewKeys(c.Scope), name: c.Name, ttl: ttl}, nil
}

// Close closes the client; the leases expire by themselves.
func (e *Etcd) Close() error { return e.cli.Close() }

// Load reads every key of the scope in one request.
func (e *Etcd) Load(ctx context.Context) (*Cluster, error) {
	resp, err := e.cli.Get(ctx, e.keys.Prefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd load: %w", err)
	}
	c := &Cluster{Members: map[string]Member{}, Rev: resp.Header.Revision}
	var errs []error
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case key == e.keys.Leader():
			c.Leader = string(kv.Value)
		case key == e.keys.Initialize():
			if v := string(kv.Value); strings.HasPrefix(v, bootstrapPrefix) {
				c.Bootstrapping = strings.TrimPrefix(v, bootstrapPrefix)
			} else {
				c.Initialized = v
			}
		case key == e.keys.Sync():
			errs = append(errs, decode(key, kv.Value, &c.Sync))
		case key == e.keys.Status():
			errs = append(errs, decode(key, kv.Value, &c.Status))
		case key == e.keys.Switchover():
			var sw Switchover
			if err := decode(key, kv.Value, &sw); err != nil {
				errs = append(errs, err)
			} else {
				c.Switchover = &sw
			}
		case strings.HasPrefix(key, e.keys.Members()):
			var m Member
			if err := decode(key, kv.Value, &m); err != nil {
				errs = append(errs, err)
				continue
			}
			m.Rev = kv.ModRevision
			c.Members[strings.TrimPrefix(key, e.keys.Members())] = m
		}
	}
	return c, errors.Join(errs...)
}

func decode(key string, b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("etcd key %s: %w", key, err)
	}
	return nil
}

// Watch notifies after changes of the scope's keys until ctx ends. Member
// records and the leader's status change on every tick of every agent, so
// they notify only when members is set.
func (e *Etcd) Watch(ctx context.Context, members bool, notify func()) error {
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ch := e.cli.Watch(wctx, e.keys.Prefix(), clientv3.WithPrefix())
		for resp := range ch {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				key := string(ev.Kv.Key)
				isMember := strings.HasPrefix(key, e.keys.Members()) || key == e.keys.Status()
				if members || !isMember {
					notify()
					break
				}
			}
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		notify() // changes may have been missed while the watch was down
		t := time.NewTimer(500 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// PublishMember writes the record when it changed or every TTL/2, and
// keeps the member lease alive every TTL/3.
func (e *Etcd) PublishMember(ctx context.Context, m Member, force bool) error {
	if e.name == "" {
		return errors.New("etcd: read-only store")
	}
	m.Name = e.name
	same, data, err := encodeMember(m)
	if err != nil {
		return err
	}
	e.mu.Lock()
	lease, lastMember, lastPut, lastKA := e.memberLease, e.lastMember, e.lastPut, e.lastKA
	e.mu.Unlock()
	ttl := time.Duration(e.ttl) * time.Second
	now := time.Now()

	if lease != 0 && now.Sub(lastKA) >= ttl/3 {
		ka, err := e.cli.KeepAliveOnce(ctx, lease)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && ka.TTL <= 0):
			lease = 0 // expired: the record is gone too
		case err != nil:
			return fmt.Errorf("etcd member keepalive: %w", err)
		default:
			lastKA = now
		}
	}
	if lease == 0 {
		g, err := e.cli.Grant(ctx, e.ttl)
		if err != nil {
			return fmt.Errorf("etcd member lease: %w", err)
		}
		lease, lastKA, force = g.ID, now, true
	}
	if force || !bytes.Equal(same, lastMember) || now.Sub(lastPut) >= ttl/2 {
		if _, err := e.cli.Put(ctx, e.keys.Member(e.name), string(data), clientv3.WithLease(lease)); err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				lease = 0
			}
			e.mu.Lock()
			e.memberLease = lease
			e.mu.Unlock()
			return fmt.Errorf("etcd publish member: %w", err)
		}
		lastMember, lastPut = same, now
	}
	e.mu.Lock()
	e.memberLease, e.lastMember, e.lastPut, e.lastKA = lease, lastMember, lastPut, lastKA
	e.mu.Unlock()
	return nil
}

// DeleteMember removes the record and its lease.
func (e *Etcd) DeleteMember(ctx context.Context) error {
	e.mu.Lock()
	lease := e.memberLease
	e.memberLease, e.lastMember = 0, nil
	e.mu.Unlock()
	if lease != 0 {
		_, _ = e.cli.Revoke(ctx, lease)
	}
	_, err := e.cli.Delete(ctx, e.keys.Member(e.name))
	return err
}

// Acquire creates the leader key on a fresh lease if it is absent, or
// re-attaches it to a fresh lease if it already names this member.
func (e *Etcd) Acquire(ctx context.Context, bootstrap bool) error {
	if e.name == "" {
		return errors.New("etcd: read-only store")
	}
	g, err := e.cli.Grant(ctx, e.ttl)
	if err != nil {
		return fmt.Errorf("etcd grant: %w", err)
	}
	lease := g.ID
	fail := func(err error) error {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_, _ = e.cli.Revoke(rctx, lease)
		return err
	}
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(e.keys.Leader()), "=", 0)}
	ops := []clientv3.Op{clientv3.OpPut(e.keys.Leader(), e.name, clientv3.WithLease(lease))}
	if bootstrap {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(e.keys.Initialize()), "=", 0))
		ops = append(ops, clientv3.OpPut(e.keys.Initialize(), bootstrapPrefix+e.name, clientv3.WithLease(lease)))
	}
	resp, err := e.cli.Txn(ctx).If(cmps...).Then(ops...).
		Else(clientv3.OpGet(e.keys.Leader()), clientv3.OpGet(e.keys.Initialize())).Commit()
	if err != nil {
		return fail(fmt.Errorf("etcd acquire: %w", err))
	}
	if resp.Succeeded {
		e.setLeaderLease(lease)
		return nil
	}
	leader := resp.Responses[0].GetResponseRange().Kvs
	if bootstrap && len(resp.Responses[1].GetResponseRange().Kvs) > 0 {
		return fail(ErrInitialized)
	}
	if bootstrap || len(leader) != 1 || string(leader[0].Value) != e.name {
		return fail(ErrNotLeader)
	}
	// The key names us, from an earlier lease of ours: adopt it.
	old := leader[0]
	resp, err = e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(e.keys.Leader()), "=", old.ModRevision)).
		Then(clientv3.OpPut(e.keys.Leader(), e.name, clientv3.WithLease(lease))).Commit()
	if err != nil {
		return fail(fmt.Errorf("etcd acquire: %w", err))
	}
	if !resp.Succeeded {
		return fail(ErrNotLeader)
	}
	e.setLeaderLease(lease)
	if old.Lease != 0 && clientv3.LeaseID(old.Lease) != lease {
		_, _ = e.cli.Revoke(ctx, clientv3.LeaseID(old.Lease))
	}
	return nil
}

func (e *Etcd) setLeaderLease(id clientv3.LeaseID) {
	e.mu.Lock()
	e.leaderLease = id
	e.mu.Unlock()
}

func (e *Etcd) heldLease() clientv3.LeaseID {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leaderLease
}

// Renew keeps the lease alive and checks the key still names us on it.
func (e *Etcd) Renew(ctx context.Context) error {
	lease := e.heldLease()
	if lease == 0 {
		return ErrLost
	}
	ka, err := e.cli.KeepAliveOnce(ctx, lease)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && ka.TTL <= 0) {
		e.setLeaderLease(0)
		return ErrLost
	}
	if err != nil {
		return fmt.Errorf("etcd renew: %w", err)
	}
	resp, err := e.cli.Get(ctx, e.keys.Leader())
	if err != nil {
		return fmt.Errorf("etcd renew: %w", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != e.name || clientv3.LeaseID(resp.Kvs[0].Lease) != lease {
		e.setLeaderLease(0)
		_, _ = e.cli.Revoke(ctx, lease)
		return ErrLost
	}
	return nil
}

// Release revokes the lease, which deletes the leader key at once.
func (e *Etcd) Release(ctx context.Context) error {
	lease := e.heldLease()
	if lease == 0 {
		return nil
	}
	e.setLeaderLease(0)
	if _, err := e.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("etcd release: %w", err)
	}
	return nil
}

// Handover deletes the leader key and writes sw in one transaction.
func (e *Etcd) Handover(ctx context.Context, sw Switchover) error {
	lease := e.heldLease()
	if lease == 0 {
		return ErrNotLeader
	}
	data, err := json.Marshal(sw)
	if err != nil {
		return err
	}
	resp, err := e.cli.Txn(ctx).If(e.isLeader(lease)...).
		Then(clientv3.OpPut(e.keys.Switchover(), string(data)), clientv3.OpDelete(e.keys.Leader())).Commit()
	if err != nil {
		return fmt.Errorf("etcd handover: %w", err)
	}
	if !resp.Succeeded {
		return ErrNotLeader
	}
	e.setLeaderLease(0)
	_, _ = e.cli.Revoke(ctx, lease)
	return nil
}

func (e *Etcd) isLeader(lease clientv3.LeaseID) []clientv3.Cmp {
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.Value(e.keys.Leader()), "=", e.name),
		clientv3.Compare(clientv3.LeaseValue(e.keys.Leader()), "=", lease),
	}
}

// putAsLeader writes key only while this member holds the leader key.
func (e *Etcd) putAsLeader(ctx context.Context, key, value string) error {
	lease := e.heldLease()
	if lease == 0 {
		return ErrNotLeader
	}
	resp, err := e.cli.Txn(ctx).If(e.isLeader(lease)...).Then(clientv3.OpPut(key, value)).Commit()
	if err != nil {
		return fmt.Errorf("etcd put %s: %w", key, err)
	}
	if !resp.Succeeded {
		return ErrNotLeader
	}
	return nil
}

func (e *Etcd) putJSONAsLeader(ctx context.Context, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return e.putAsLeader(ctx, key, string(data))
}

// SetInitialized replaces the bootstrapping marker with the system id.
func (e *Etcd) SetInitialized(ctx context.Context, systemID string) error {
	return e.putAsLeader(ctx, e.keys.Initialize(), systemID)
}

// SetSync writes the sync key.
func (e *Etcd) SetSync(ctx context.Context, s Sync) error {
	return e.putJSONAsLeader(ctx, e.keys.Sync(), s)
}

// SetStatus writes the status key.
func (e *Etcd) SetStatus(ctx context.Context, s Status) error {
	return e.putJSONAsLeader(ctx, e.keys.Status(), s)
}

// RequestSwitchover writes the switchover key; any member may.
func (e *Etcd) RequestSwitchover(ctx context.Context, sw Switchover) error {
	data, err := json.Marshal(sw)
	if err != nil {
		return err
	}
	if _, err := e.cli.Put(ctx, e.keys.Switchover(), string(data)); err != nil {
		return fmt.Errorf("etcd switchover: %w", err)
	}
	return nil
}

// ClearSwitchover deletes the switchover key.
func (e *Etcd) ClearSwitchover(ctx context.Context) error {
	if _, err := e.cli.Delete(ctx, e.keys.Switchover()); err != nil {
		return fmt.Errorf("etcd clear switchover: %w", err)
	}
	return nil
}
