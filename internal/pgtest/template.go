package pgtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// templatePrefix names the cached initdb output in DefaultDir(). initdb
// takes seconds and its output is the same for every cluster, so the first
// Start on a machine keeps a copy that later ones, in any process, copy in
// a fraction of the time. The name holds a hash of everything that shapes
// the output, so another PostgreSQL build or password gets its own.
const templatePrefix = "pgtemplate-"

// initdbArgs are initdb's arguments apart from -D.
func (c *Cluster) initdbArgs(pwfile string) []string {
	return []string{"-U", c.SuperUser, "--pwfile=" + pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions",
		// 1 MB WAL segments instead of 16: less to write, copy and stream.
		"--wal-segsize=1",
		"--locale=C", "--encoding=UTF8"}
}

// initData fills n.DataDir as initdb would: from the template when there is
// one or one can be made, else by running initdb there.
func (c *Cluster) initData(ctx context.Context, n *Node) error {
	began := time.Now()
	tmpl, err := c.template(ctx)
	if err == nil {
		if err = copyDir(c.r, tmpl, n.DataDir); err == nil {
			c.logf("pgtest: %s copied from %s in %s", n.Name, tmpl, time.Since(began).Round(time.Millisecond))
			return nil
		}
		if rerr := os.RemoveAll(n.DataDir); rerr != nil {
			return n.errorf("copy template: %w", errors.Join(err, rerr))
		}
	}
	c.logf("pgtest: no initdb template (%v); running initdb", err)
	if err := c.initdb(ctx, n.DataDir); err != nil {
		return n.errorf("%w", err)
	}
	c.logf("pgtest: initdb %s took %s", n.Name, time.Since(began).Round(time.Millisecond))
	return nil
}

// initdb runs initdb into dataDir, whose parent belongs to the servers' user.
func (c *Cluster) initdb(ctx context.Context, dataDir string) error {
	pwfile := filepath.Join(filepath.Dir(dataDir), "pwfile")
	if err := writeOwned(c.r, pwfile, c.SuperPassword+"\n"); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	defer os.Remove(pwfile)
	_, err := c.r.run(ctx, filepath.Dir(dataDir), nil, "initdb", append([]string{"-D", dataDir}, c.initdbArgs(pwfile)...)...)
	return err
}

// template returns the data directory of the cached initdb output, making
// it first if needed. Processes racing to make it each build their own and
// rename it into place; the loser discards its copy.
func (c *Cluster) template(ctx context.Context) (string, error) {
	key, err := c.templateKey()
	if err != nil {
		return "", err
	}
	final := filepath.Join(DefaultDir(), templatePrefix+key)
	data := filepath.Join(final, "data")
	if _, err := os.Stat(filepath.Join(data, "global", "pg_control")); err == nil {
		return data, nil
	}
	removeOldBuilds()
	build, err := os.MkdirTemp(DefaultDir(), templatePrefix+"build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(build)
	if err := c.r.own(build); err != nil {
		return "", err
	}
	// Let another OS user that runs tests later read it too.
	if err := os.Chmod(build, 0o755); err != nil {
		return "", err
	}
	if err := c.initdb(ctx, filepath.Join(build, "data")); err != nil {
		return "", err
	}
	if err := os.Rename(build, final); err != nil {
		if _, serr := os.Stat(filepath.Join(data, "global", "pg_control")); serr == nil {
			return data, nil // another process won the race
		}
		return "", err
	}
	return data, nil
}

// templateKey hashes what shapes initdb's output: the binaries, the user
// that owns the files, the arguments and the superuser password.
func (c *Cluster) templateKey() (string, error) {
	fi, err := os.Stat(filepath.Join(c.r.bin, "postgres"))
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%d\x00%d\x00", c.r.bin, fi.Size(), fi.ModTime().UnixNano(), os.Geteuid())
	fmt.Fprintf(h, "%s\x00%s", strings.Join(c.initdbArgs(""), "\x00"), c.SuperPassword)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// copyDir copies the directory tree src to dst, which must not exist,
// keeping modes and handing every entry to the servers' user.
func copyDir(r *runner, src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(to, info.Mode().Perm()); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			if err := CopyFile(path, to, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("copy %s: not a regular file or directory", path)
		}
		return r.own(to)
	})
}

// CopyFile copies src to dst, which must not exist yet, with mode perm: a
// test copies the pgrouter binary where the postgres OS user may run it.
func CopyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// removeOldBuilds removes template builds that a killed process left; a
// build takes seconds, so one older than ten minutes is abandoned.
func removeOldBuilds() {
	builds, _ := filepath.Glob(filepath.Join(DefaultDir(), templatePrefix+"build-*"))
	for _, b := range builds {
		if fi, err := os.Stat(b); err == nil && time.Since(fi.ModTime()) > 10*time.Minute {
			os.RemoveAll(b)
		}
	}
}
