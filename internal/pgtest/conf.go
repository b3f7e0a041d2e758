package pgtest

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
)

// memberConf is appended to every member's postgresql.conf: the shared
// settings, then Params, then an include of the node's own settings.
func memberConf(params map[string]string) (string, error) {
	var b strings.Builder
	b.WriteString(`
# pgtest: settings shared by every member
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '256MB'
hot_standby = on
fsync = off
full_page_writes = off
wal_log_hints = on
max_connections = 200
# a standby whose primary went away retries every 500ms, not 5s
wal_retrieve_retry_interval = '500ms'
log_line_prefix = '%m [%p] %q%u@%d '
`)
	keys := make([]string, 0, len(params))
	for k := range params {
		if !confName.MatchString(k) {
			return "", fmt.Errorf("pgtest: Params: %q is not a setting name", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 0 {
		b.WriteString("# pgtest: Options.Params\n")
	}
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, literal(params[k]))
	}
	fmt.Fprintf(&b, "# pgtest: this node's own settings; pg_basebackup copies the file, pgtest rewrites it\ninclude '%s'\n", nodeConfName)
	return b.String(), nil
}

var confName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// nodeConfName is the file in the data directory with the settings that
// differ between members.
const nodeConfName = "pgtest_node.conf"

func nodeConf(n *Node) string {
	hot := "on"
	if n.Warm {
		hot = "off"
	}
	return fmt.Sprintf("port = %d\nunix_socket_directories = %s\ncluster_name = %s\nhot_standby = %s\n",
		n.Port, literal(n.SocketDir), literal(n.Name), hot)
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	return errors.Join(err, f.Close())
}

// writeOwned writes a file in a data directory, owned by the servers' user.
func writeOwned(r *runner, path, text string) error {
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return err
	}
	return r.own(path)
}
