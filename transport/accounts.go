package transport

import "context"

// Checker reports whether one dependency is reachable, for /readyz.
type Checker interface {
	Name() string
	Check(ctx context.Context) error
}

// OptionalChecker is a Checker whose failure degrades readiness instead of
// failing it: the service still answers correctly without it (Redis, a
// cache).
type OptionalChecker interface {
	Checker
	Optional() bool
}

func optional(c Checker) bool {
	o, ok := c.(OptionalChecker)
	return ok && o.Optional()
}
