package bench

import (
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// setChildAttrs makes the kernel kill a server child if the benchmark dies
// without stopping it (SIGKILL, a crash): a forgotten Tally would keep its
// database connections open and its port busy.
func setChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// gcSignal is the channel a server child receives GC requests on.
func gcSignal() <-chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	return ch
}

// signalGC asks a server child for a forced GC.
func signalGC(p *os.Process) error { return p.Signal(syscall.SIGUSR1) }
