package proc

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestReadPID(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body string
		want       int
		ok         bool
	}{
		{"postmaster.pid", "4242\n/data\n", 4242, true},
		{"spaces", " 17 \n", 17, true},
		{"empty", "", 0, false},
		{"zero", "0\n", 0, false},
		{"words", "postgres\n", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, tc.name)
			if err := os.WriteFile(f, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ReadPID(f)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("ReadPID = %d, %v; want %d, ok=%v", got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestAliveChildrenWaitGone(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if !Alive(pid) {
		t.Fatal("running child not alive")
	}
	if !slices.Contains(Children(os.Getpid()), pid) {
		t.Fatalf("Children(self) = %v, want %d in it", Children(os.Getpid()), pid)
	}
	_ = cmd.Process.Kill()
	// Until reaped it is a zombie, which has exited.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitGone(ctx, []int{pid}); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if Alive(pid) {
		t.Fatal("reaped child alive")
	}
}

func TestMissingPrograms(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "run"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := MissingPrograms(dir, []string{"run", "data", "absent"})
	if !slices.Equal(got, []string{"data", "absent"}) {
		t.Fatalf("MissingPrograms = %v", got)
	}
}

func TestRuns(t *testing.T) {
	if !Runs(os.Getpid(), filepath.Base(os.Args[0])) {
		t.Fatal("Runs(self, own name) = false")
	}
	if Runs(os.Getpid(), "postgres") {
		t.Fatal("Runs(self, postgres) = true")
	}
}
