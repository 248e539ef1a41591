package domain

import (
	"fmt"
	"math"
	"sort"
)

// Unlimited is the limit value that never rejects. Zero means "none allowed".
const Unlimited Limit = -1

// Limit is one plan limit: -1 unlimited, 0 none allowed, n > 0 at most n.
type Limit int64

// IsUnlimited reports whether the limit never rejects.
func (l Limit) IsUnlimited() bool { return l < 0 }

// Ceiling is the usage at which the limit stops admitting: one more is
// admitted while used < Ceiling(). It is the limit itself, or
// math.MaxInt64 when unlimited, which no usage reaches. This is the one
// place the rule is written (docs/contract.md, "Plans and limits"): Allows
// is defined by it, and the stores do not repeat it in SQL, they compare
// the usage they hold with the ceilings computed here.
func (l Limit) Ceiling() int64 {
	if l.IsUnlimited() {
		return math.MaxInt64
	}
	return int64(l)
}

// Allows reports whether one more may be admitted when used have been:
// admitted while used < Ceiling(). For sessions that is used+1 within the
// limit; for seconds, usage still below the limit (a session's length is
// not known when it is admitted).
func (l Limit) Allows(used int64) bool { return used < l.Ceiling() }

// Remaining is what is left under the limit, or nil when unlimited.
func (l Limit) Remaining(used int64) *int64 {
	if l.IsUnlimited() {
		return nil
	}
	r := int64(l) - used
	if r < 0 {
		r = 0
	}
	return &r
}

// Plan is a named set of limits. Limits apply per billing period, except
// MaxFileSizeMB, which applies per upload.
type Plan struct {
	Name            string `json:"name"`
	MaxSessions     Limit  `json:"max_sessions"`
	MaxTotalMinutes Limit  `json:"max_total_minutes"`
	MaxFileSizeMB   Limit  `json:"max_file_size_mb"`
}

// MaxSeconds is the minutes limit in seconds, the unit usage is kept in.
func (p Plan) MaxSeconds() Limit {
	if p.MaxTotalMinutes.IsUnlimited() {
		return Unlimited
	}
	return p.MaxTotalMinutes * 60
}

// Validate checks that every limit is -1 or non-negative.
func (p Plan) Validate() error {
	if p.Name == "" {
		return fmt.Errorf("plan name is empty")
	}
	for name, l := range map[string]Limit{
		"max_sessions": p.MaxSessions, "max_total_minutes": p.MaxTotalMinutes, "max_file_size_mb": p.MaxFileSizeMB,
	} {
		if l < -1 {
			return fmt.Errorf("plan %q: %s is %d; use -1 for unlimited or a number >= 0", p.Name, name, l)
		}
	}
	return nil
}

// DefaultPlan is the plan a user seen for the first time is provisioned on.
const DefaultPlan = "free"

// Catalog is the set of plans the service sells. It is immutable once built.
type Catalog struct {
	plans map[string]Plan
	names []string
}

// NewCatalog validates the plans and builds a catalog. The catalog must hold
// the DefaultPlan, since new users are provisioned on it.
func NewCatalog(plans ...Plan) (*Catalog, error) {
	c := &Catalog{plans: make(map[string]Plan, len(plans))}
	for _, p := range plans {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		if _, dup := c.plans[p.Name]; dup {
			return nil, fmt.Errorf("plan %q is defined twice", p.Name)
		}
		c.plans[p.Name] = p
		c.names = append(c.names, p.Name)
	}
	if _, ok := c.plans[DefaultPlan]; !ok {
		return nil, fmt.Errorf("the catalog must define the %q plan new users start on", DefaultPlan)
	}
	sort.Strings(c.names)
	return c, nil
}

// DefaultCatalog is the built-in catalog (docs/contract.md, "Plans and limits").
func DefaultCatalog() *Catalog {
	c, err := NewCatalog(
		Plan{Name: "free", MaxSessions: 10, MaxTotalMinutes: 120, MaxFileSizeMB: 60},
		Plan{Name: "student", MaxSessions: 100, MaxTotalMinutes: 500, MaxFileSizeMB: 100},
		Plan{Name: "pro", MaxSessions: Unlimited, MaxTotalMinutes: 1200, MaxFileSizeMB: 200},
		Plan{Name: "enterprise", MaxSessions: Unlimited, MaxTotalMinutes: Unlimited, MaxFileSizeMB: 500},
	)
	if err != nil {
		panic(err) // the literal above is valid; a failure here is a programming error
	}
	return c
}

// Plan looks a plan up by name.
func (c *Catalog) Plan(name string) (Plan, bool) {
	p, ok := c.plans[name]
	return p, ok
}

// Plans lists the catalog's plans sorted by name.
func (c *Catalog) Plans() []Plan {
	out := make([]Plan, 0, len(c.names))
	for _, n := range c.names {
		out = append(out, c.plans[n])
	}
	return out
}

// Names lists the plan names sorted.
func (c *Catalog) Names() []string { return append([]string(nil), c.names...) }
