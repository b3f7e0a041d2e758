package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
)

// The roles Start creates on the primary, with their passwords; every
// Cluster carries the same values in its Users. Each role exercises one way
// a client authenticates (see hbaConf).
const (
	// SuperUser is the bootstrap superuser; it logs in with SCRAM-SHA-256.
	SuperUser = "postgres"
	// SuperPassword is SuperUser's password.
	SuperPassword = "pgtest-super"
	// ReplUser has REPLICATION and LOGIN and logs in with SCRAM-SHA-256;
	// standbys stream as it.
	ReplUser = "replicator"
	// ReplPassword is ReplUser's password.
	ReplPassword = "pgtest-repl"
	// AppUser owns database AppDB and logs in with SCRAM-SHA-256.
	AppUser = "app"
	// AppPassword is AppUser's password.
	AppPassword = "pgtest-app"
	// AppDB is the database owned by AppUser.
	AppDB = "app"
	// MD5User's password is stored as an MD5 hash, and pg_hba.conf asks it
	// for md5 authentication.
	MD5User = "md5user"
	// MD5Password is MD5User's password.
	MD5Password = "pgtest-md5"
	// TrustUser has no password; pg_hba.conf trusts it from 127.0.0.1.
	TrustUser = "trustuser"
	// Scram2User is a second SCRAM-SHA-256 role, with a longer password.
	// (PostgreSQL 15 has no scram_iterations to vary per role.)
	Scram2User = "scram2"
	// Scram2Password is Scram2User's password.
	Scram2Password = "pgtest-scram2-longer-password"
)

// Users are the roles of a Cluster and their passwords: the constants of
// the same names.
type Users struct {
	SuperUser, SuperPassword   string
	ReplUser, ReplPassword     string
	AppUser, AppPassword       string
	AppDB                      string
	MD5User, MD5Password       string
	TrustUser                  string
	Scram2User, Scram2Password string
}

var defaultUsers = Users{
	SuperUser: SuperUser, SuperPassword: SuperPassword,
	ReplUser: ReplUser, ReplPassword: ReplPassword,
	AppUser: AppUser, AppPassword: AppPassword, AppDB: AppDB,
	MD5User: MD5User, MD5Password: MD5Password,
	TrustUser:  TrustUser,
	Scram2User: Scram2User, Scram2Password: Scram2Password,
}

// hbaConf is the whole pg_hba.conf of every member; the first matching
// line wins, so the per-user lines come before the catch-all.
const hbaConf = `# pg_hba.conf written by pgtest
local  all          all                       trust
host   all          ` + TrustUser + `  127.0.0.1/32  trust
host   all          ` + MD5User + `    127.0.0.1/32  md5
host   all          all        127.0.0.1/32  scram-sha-256
host   replication  all        127.0.0.1/32  scram-sha-256
`

// createUsers creates the roles and AppDB on a fresh primary. CREATE
// DATABASE cannot run in a transaction, so each statement is sent alone.
func createUsers(ctx context.Context, conn *pgx.Conn, u Users) error {
	id := func(s string) string { return pgx.Identifier{s}.Sanitize() }
	stmts := []string{
		fmt.Sprintf("CREATE ROLE %s WITH LOGIN REPLICATION PASSWORD %s", id(u.ReplUser), literal(u.ReplPassword)),
		"SET password_encryption = 'scram-sha-256'",
		fmt.Sprintf("CREATE ROLE %s WITH LOGIN PASSWORD %s", id(u.AppUser), literal(u.AppPassword)),
		fmt.Sprintf("CREATE ROLE %s WITH LOGIN PASSWORD %s", id(u.Scram2User), literal(u.Scram2Password)),
		fmt.Sprintf("CREATE ROLE %s WITH LOGIN", id(u.TrustUser)),
		"SET password_encryption = 'md5'",
		fmt.Sprintf("CREATE ROLE %s WITH LOGIN PASSWORD %s", id(u.MD5User), literal(u.MD5Password)),
		"RESET password_encryption",
		fmt.Sprintf("CREATE DATABASE %s OWNER %s", id(u.AppDB), id(u.AppUser)),
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// literal quotes s as an SQL string literal.
func literal(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// WriteAuthFile writes a PgBouncer-format userlist with every role's
// secret as the primary stores it (SCRAM secrets, md5 hashes), so that a
// pooling proxy can verify clients and log in to servers as them.
func (c *Cluster) WriteAuthFile(ctx context.Context, path string) error {
	conn, err := c.connect(ctx, c.Primary())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return WriteUserlist(ctx, conn, path)
}

// WriteUserlist writes the PgBouncer-format userlist of the server conn is
// connected to (it must be allowed to read pg_authid) into path.
func WriteUserlist(ctx context.Context, conn *pgx.Conn, path string) error {
	rows, err := conn.Query(ctx, "SELECT rolname, rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL ORDER BY rolname")
	if err != nil {
		return fmt.Errorf("read pg_authid: %w", err)
	}
	var b strings.Builder
	for rows.Next() {
		var name, secret string
		if err := rows.Scan(&name, &secret); err != nil {
			return err
		}
		fmt.Fprintf(&b, "%q %q\n", name, secret)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// StreamingStandbys returns the application_name and sync_state of every
// standby streaming from the server conn is connected to.
func StreamingStandbys(ctx context.Context, conn *pgx.Conn) (map[string]string, error) {
	rows, err := conn.Query(ctx, "SELECT application_name, sync_state FROM pg_stat_replication WHERE state = 'streaming'")
	if err != nil {
		return nil, err
	}
	streaming := map[string]string{}
	for rows.Next() {
		var name, ss string
		if err := rows.Scan(&name, &ss); err != nil {
			return nil, err
		}
		streaming[name] = ss
	}
	return streaming, rows.Err()
}
