package postgres

// SetPruneBatch makes PruneIdempotencyKeys delete at most n keys per
// statement, so that a test can see it loop.
func (s *Store) SetPruneBatch(n int) { s.pruneBatch = n }

// SecondPasses is how many key-less batches needed admitBulk's second
// transaction.
func (s *Store) SecondPasses() int64 { return s.secondPasses.Load() }

// PartitionLockClass is the first key of the partitions' advisory locks,
// for tests that hold one as an admission or a claim would.
const PartitionLockClass = partitionLockClass
