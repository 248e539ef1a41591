//go:build !linux

package bench

import (
	"errors"
	"os"
	"os/exec"
)

// The benchmark reads /proc and needs Linux for its memory figures; on
// other systems it builds, and the memory phases report an error.

func setChildAttrs(*exec.Cmd) {}

func gcSignal() <-chan os.Signal { return nil }

func signalGC(*os.Process) error { return errors.New("forced GC of a child needs Linux") }
