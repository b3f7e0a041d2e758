package main

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// pgbench with prepared statements and more clients than servers: every
// client is lent many servers, so its statements are prepared again and
// again under the proxy's names; no server may leak from the pool.
func TestTransactionPoolingUnderPgbench(t *testing.T) {
	c := sharedCluster(t)
	p := startPooled(t, c, "transaction", "--pool-size", "4", "--query-wait-timeout", "20s")
	host, port, _ := net.SplitHostPort(p.RW)
	env := append(os.Environ(), "PGPASSWORD="+c.SuperPassword, "PGHOST="+host, "PGPORT="+port, "PGUSER="+c.SuperUser, "PGDATABASE=postgres")
	for _, args := range [][]string{
		{"-i", "-s", "1", "-q"},
		{"-n", "-c", "16", "-j", "16", "-t", "100", "-M", "prepared", "-N"},
		// Fewer threads than clients: pgbench 15 prepares with a
		// synchronous PQprepare that blocks its whole thread while the
		// thread's other clients hold servers in open transactions. A
		// pooler that needs a server to answer that Parse deadlocks; the
		// proxy answers it and prepares at first use.
		{"-n", "-c", "16", "-j", "2", "-t", "100", "-M", "prepared", "-N"},
		{"-n", "-c", "16", "-j", "2", "-t", "100", "-M", "extended", "-S"},
	} {
		cmd := exec.Command("pgbench", args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil || (args[0] != "-i" && !strings.Contains(string(out), "number of failed transactions: 0")) {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
	}
}
