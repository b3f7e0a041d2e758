package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

// installCommand copies the running binary into a directory. The image is
// distroless (no shell, no cp), and the agent must run beside PostgreSQL's
// own binaries, in the PostgreSQL image: an init container of the pgrouter
// image runs `pgrouter install-binary /pgrouter` into a shared emptyDir,
// and the PostgreSQL container starts /pgrouter/pgrouter agent
// (configs/kubernetes/postgres-agent.yaml). One image serves both roles.
func installCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "install-binary DIR",
		Short: "Copy this binary to DIR/pgrouter (for an init container)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			dst, err := installBinary(args[0])
			if err != nil {
				return err
			}
			fmt.Println("installed", dst)
			return nil
		},
	}
}

// installBinary copies the executable to dir/pgrouter through a temporary
// file and a rename, so a reader never sees half a binary.
func installBinary(dir string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	src, err := os.Open(self)
	if err != nil {
		return "", err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(dir, ".pgrouter-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "pgrouter")
	return dst, os.Rename(tmp.Name(), dst)
}
