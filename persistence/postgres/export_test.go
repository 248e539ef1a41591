package postgres

// SetPruneBatch makes PruneIdempotencyKeys delete at most n keys per
// statement, so that a test can see it loop.
func (s *Store) SetPruneBatch(n int) { s.pruneBatch = n }
