package actors

import "github.com/asynkron/protoactor-go/actor"

// pooledDispatcher runs actor mailboxes on a pool of long-lived goroutines.
// protoactor's default dispatcher starts a new goroutine for every mailbox
// run; at tens of thousands of short messages a second, each new goroutine
// grows its stack again (runtime.copystack was a visible share of the
// over-limit path's CPU: docs/performance.md). Pooled goroutines keep their grown stacks. When
// every pooled goroutine is busy — a user actor blocked on a store read —
// the run gets a goroutine of its own, so a slow store never stalls other
// users' actors behind it.
type pooledDispatcher struct {
	work       chan func()
	quit       chan struct{}
	throughput int
}

var _ actor.Dispatcher = (*pooledDispatcher)(nil)

func newPooledDispatcher(workers, throughput int) *pooledDispatcher {
	d := &pooledDispatcher{work: make(chan func()), quit: make(chan struct{}), throughput: throughput}
	for i := 0; i < workers; i++ {
		go func() {
			for {
				select {
				case fn := <-d.work:
					fn()
				case <-d.quit:
					return
				}
			}
		}()
	}
	return d
}

// Schedule hands fn to an idle pooled goroutine, or to a new one.
func (d *pooledDispatcher) Schedule(fn func()) {
	select {
	case d.work <- fn:
	default:
		go fn()
	}
}

// Throughput is how many messages one mailbox run processes before it
// yields its goroutine to other mailboxes.
func (d *pooledDispatcher) Throughput() int { return d.throughput }

// stop ends the idle pooled goroutines. Schedule stays safe afterwards (a
// late message gets a goroutine of its own).
func (d *pooledDispatcher) stop() { close(d.quit) }
