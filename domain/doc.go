// Package domain holds Tally's rules: plans and their limits, billing-period
// arithmetic, the admission decision and the typed errors that carry a
// rejection's context. It imports only the standard library so that every
// rule can be read and tested without a database, a cache or a network.
package domain
