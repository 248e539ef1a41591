package postgres

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// The partition epoch fence of cluster mode
// (docs/decisions/0022-partition-epoch-fence.md).
//
// A node that becomes a partition's owner stores the epoch of its claim in
// partition_epochs (ClaimPartition); each of its admissions carries that
// epoch (AdmitRequest.Epoch) and commits only if it is still the stored
// one. What makes this exact is a lock per partition that both sides take
// in the same transaction as their write:
//
//   - an admission batch takes a shared advisory transaction lock on each
//     partition of its users, in its first statement, before it reads the
//     stored epochs in a later statement (lockPartitionsSQL, then
//     partitionEpochsSQL and the epoch checks in the admission statements);
//   - a claim takes the same lock exclusively, then raises the epoch, and
//     commits (ClaimPartition).
//
// The two hold the lock from before they read or write an epoch until
// their commit, so they cannot overlap: a claim waits for the batches in
// flight, and a batch that asks for the lock while a claim holds or waits
// for it waits for the claim's commit. Every statement of a READ COMMITTED
// transaction takes a new snapshot, so the batch's statements after the
// lock see every claim that committed before it, and none can commit
// before the batch does: the epoch a batch checks is the stored epoch at
// its commit. A check made by a subquery (which EvalPlanQual does not
// re-read when the UPDATE waits for a usage row) is therefore still
// current, because nothing can change the row it read.
//
// Why advisory locks rather than FOR SHARE on the partition rows: row share
// locks do not queue behind a waiting updater, so two batches whose share
// locks overlap can keep a claim waiting for as long as they keep
// overlapping (the decision record has the figures), and each one writes
// the row's lock to its page. The lock manager's queue is fair (a shared
// request waits behind a queued exclusive one) and its locks write nothing.
//
// Epoch-0 batches (single-node mode) run none of this: no lock, no read, no
// check, the same statements as before.

// partitionLockClass is the first key of the partitions' advisory locks
// ("tall" in ASCII); the second is the partition. Migrate's lock uses the
// one-bigint form, whose keys never collide with the two-int form.
const partitionLockClass = 0x74616c6c

// lockPartitionsSQL takes the shared lock of each partition given, in the
// order given (sorted: the lock order of every batch; unnest returns the
// elements in order and the aggregate consumes them so).
var lockPartitionsSQL = fmt.Sprintf(`
SELECT count(pg_advisory_xact_lock_shared(%d, p)) FROM unnest($1::int[]) AS p`, partitionLockClass)

// partitionEpochsSQL reads the stored epochs of the given partitions; it
// runs after lockPartitionsSQL, in a statement of its own so that its
// snapshot is taken once the locks are held.
const partitionEpochsSQL = `
SELECT partition, epoch FROM partition_epochs WHERE partition = ANY($1::int[])`

// claimLockSQL takes a partition's lock exclusively for ClaimPartition.
var claimLockSQL = fmt.Sprintf(`SELECT pg_advisory_xact_lock(%d, $1::int)`, partitionLockClass)

// claimSQL raises the stored epoch, never lowers it; claimedSQL then reads
// what is stored (a statement of its own: it sees the row claimSQL wrote).
const (
	claimSQL = `
INSERT INTO partition_epochs AS pe (partition, epoch) VALUES ($1, $2)
ON CONFLICT (partition) DO UPDATE SET epoch = excluded.epoch WHERE pe.epoch < excluded.epoch`
	claimedSQL = `SELECT epoch FROM partition_epochs WHERE partition = $1`
)

// ClaimPartition raises p's stored epoch to epoch, or reports that a newer
// owner stored a higher one (persistence.ErrNewerEpoch). Its three
// statements run in one pipeline, one implicit transaction (one round
// trip once the lock is granted): the exclusive lock of p, which waits for
// the admission batches of p in flight and holds off the next ones until
// the new epoch is committed; the raise; the read of what is stored.
func (s *Store) ClaimPartition(ctx context.Context, p domain.Partition, epoch int64) error {
	if p < 0 || p >= domain.Partitions || epoch <= 0 {
		return fmt.Errorf("postgres: claim partition %d at epoch %d: the partition must be in [0, %d) and the epoch positive", p, epoch, domain.Partitions)
	}
	batch := &pgx.Batch{}
	batch.Queue(claimLockSQL, int32(p))
	batch.Queue(claimSQL, int32(p), epoch)
	batch.Queue(claimedSQL, int32(p))
	br := s.pool.SendBatch(ctx, batch)
	_, err := br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	var stored int64
	if err == nil {
		err = br.QueryRow().Scan(&stored)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return translate(fmt.Sprintf("claim partition %d", p), err)
	}
	if stored != epoch {
		return fmt.Errorf("postgres: claim partition %d at epoch %d: stored epoch is %d: %w", p, epoch, stored, persistence.ErrNewerEpoch)
	}
	return nil
}

// batchEpochs reports whether a batch is fenced (its requests carry an
// epoch), and refuses one that mixes fenced and unfenced requests (one
// process is either a cluster node or a single node) or carries a
// negative epoch.
func batchEpochs(reqs []persistence.AdmitRequest) (fenced bool, err error) {
	fenced = reqs[0].Epoch != 0
	for _, r := range reqs {
		switch {
		case r.Epoch < 0:
			return false, fmt.Errorf("postgres: admit for user %s: negative epoch %d", r.Session.UserID, r.Epoch)
		case (r.Epoch != 0) != fenced:
			return false, fmt.Errorf("postgres: admit: a batch mixes epochs (%d for user %s, %d for user %s): each is all single-node (0) or all fenced (> 0)",
				reqs[0].Epoch, reqs[0].Session.UserID, r.Epoch, r.Session.UserID)
		}
	}
	return fenced, nil
}

// batchPartitions returns the partitions of the users given, sorted and
// without repeats: the order in which a batch locks them.
func batchPartitions(users func(yield func(string) bool)) []int32 {
	var seen [domain.Partitions]bool
	var parts []int32
	for u := range users {
		p := domain.PartitionOf(u)
		if !seen[p] {
			seen[p] = true
			parts = append(parts, int32(p))
		}
	}
	slices.Sort(parts)
	return parts
}

// scanEpochs reads partitionEpochsSQL's rows: partition → stored epoch (a
// partition never claimed is missing, i.e. 0, which no fenced request
// carries).
func scanEpochs(br pgx.BatchResults) (map[int32]int64, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	stored := make(map[int32]int64)
	var (
		p int32
		e int64
	)
	_, err = pgx.ForEachRow(rows, []any{&p, &e}, func() error {
		stored[p] = e
		return nil
	})
	return stored, err
}
