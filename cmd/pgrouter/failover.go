package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/dcs"
	"github.com/pgrouter/pgrouter/election"
	"github.com/pgrouter/pgrouter/topology"
)

// failoverCommand is the operator's "promote this one now": the agents
// run it as a switchover to the named member (the old primary stops
// cleanly, the target replays everything, then takes the key), after
// checks that give a clear answer up front when the target cannot serve.
// An unplanned failover (the primary is gone) needs no command: the agents
// elect the most advanced eligible standby by themselves.
func failoverCommand() *cobra.Command {
	var api, to string
	var force bool
	var maxLag uint64
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "failover --to NAME",
		Short: "Promote the named standby now (asks for confirmation; --force skips it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" {
				return errors.New("failover: --to NAME is required (see `pgrouter status` for the members)")
			}
			v, err := agentView(cmd.Context(), api, "failover")
			if err != nil {
				return err
			}
			if err := checkFailover(v, to, maxLag); err != nil {
				return fmt.Errorf("failover to %s refused: %w", to, err)
			}
			if err := confirmed(cmd, force, "failover",
				fmt.Sprintf("Fail over scope %s from %s to %s? Writes stop until %s is promoted. [y/N] ", v.Scope, v.Leader, to, to)); err != nil {
				return err
			}
			res, err := requestSwitchover(api, to, timeout)
			if err != nil {
				return fmt.Errorf("failover to %s: %w", to, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "failover: %s -> %s in %dms\n", res.From, res.To, res.TookMS)
			return nil
		},
	}
	cmd.Flags().StringVar(&api, "api", "127.0.0.1:8008", "host:port of any agent's API")
	cmd.Flags().StringVar(&to, "to", "", "member to promote (required)")
	cmd.Flags().BoolVar(&force, "force", false, "do not ask for confirmation")
	cmd.Flags().Uint64Var(&maxLag, "max-lag", election.DefaultMaxLagOnFailover, "refuse when the target's replay is further behind the primary than this many bytes")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the new leader")
	return cmd
}

// checkFailover says why the agents could not promote to now, from an
// agent's view of the cluster; nil when they can. Pure.
func checkFailover(v election.View, to string, maxLag uint64) error {
	var target, leader *dcs.Member
	for i := range v.Members {
		switch v.Members[i].Name {
		case to:
			target = &v.Members[i]
		case v.Leader:
			leader = &v.Members[i]
		}
	}
	names := make([]string, 0, len(v.Members))
	for _, m := range v.Members {
		names = append(names, m.Name)
	}
	switch {
	case target == nil:
		return fmt.Errorf("%s is not a member of scope %s (members: %s)", to, v.Scope, strings.Join(names, ", "))
	case v.Leader == "":
		return errors.New("no leader holds the key: the agents are electing one by themselves " +
			"(the most advanced healthy standby wins); run `pgrouter status` to follow it")
	case to == v.Leader:
		return fmt.Errorf("%s is already the leader", to)
	case target.Role != dcs.RoleStandby:
		return fmt.Errorf("no healthy candidate: %s is %s, not a running standby (state %s)", to, target.Role, target.State)
	case !target.Streaming:
		return fmt.Errorf("no healthy candidate: %s does not stream from %s", to, v.Leader)
	case leader == nil:
		return fmt.Errorf("the leader %s has not published its state", v.Leader)
	}
	if v.Sync != nil && v.Sync.Leader == v.Leader && v.Sync.Standby != "" && v.Sync.Standby != to {
		return fmt.Errorf("synchronous mode: only the synchronous standby %s may be promoted without losing commits", v.Sync.Standby)
	}
	if lead, pos := leader.LSN(), replayed(*target); lead > pos && lead-pos > maxLag {
		return fmt.Errorf("lag too high: %s has replayed up to %s, %s behind the primary's %s (--max-lag %s)",
			to, topology.FormatLSN(pos), formatBytes(lead-pos), topology.FormatLSN(lead), formatBytes(maxLag))
	}
	return nil
}

// agentView reads the cluster as the agent at api sees it.
func agentView(ctx context.Context, api, what string) (election.View, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var v election.View
	if err := getJSON(ctx, api, "/status", &v); err != nil {
		return v, fmt.Errorf("%s: ask the agent at %s: %w", what, api, err)
	}
	return v, nil
}

// confirmed asks q unless force is set; anything but a yes aborts what.
func confirmed(cmd *cobra.Command, force bool, what, q string) error {
	if force {
		return nil
	}
	ok, err := confirm(cmd.InOrStdin(), cmd.OutOrStdout(), q)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New(what + ": aborted, nothing changed (use --force to skip the question)")
	}
	return nil
}

// confirm asks q on out and reads a yes from in; end of input is a no.
func confirm(in io.Reader, out io.Writer, q string) (bool, error) {
	fmt.Fprint(out, q)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	if errors.Is(err, io.EOF) && line == "" {
		fmt.Fprintln(out)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}
