package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestInstallBinary(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command(binPath, "install-binary", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("install-binary: %v\n%s", err, out)
	}
	dst := filepath.Join(dir, "pgrouter")
	fi, err := os.Stat(dst)
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary: %v, mode %v", err, fi.Mode())
	}
	if v, err := exec.Command(dst, "version").Output(); err != nil || !strings.HasPrefix(string(v), "pgrouter ") {
		t.Fatalf("installed binary does not run: %v %q", err, v)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("left behind: %v", entries)
	}
}
