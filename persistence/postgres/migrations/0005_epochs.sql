-- 0005: the ownership epochs of cluster mode (admit_bulk.go, admit.go,
-- docs/decisions/0022-partition-epoch-fence.md).
--
-- Users are spread over a fixed number of partitions (domain.PartitionOf);
-- in cluster mode each partition has one owner node at a time, and each
-- ownership claim has an epoch, a number that only rises. A node that
-- becomes a partition's owner stores its epoch here first (ClaimPartition);
-- every admission of a cluster node carries the epoch it decided under and
-- commits only while it is still the stored one. A node that lost a
-- partition without knowing it therefore cannot admit once the new owner
-- has claimed it. A single-node process stores nothing here and checks
-- nothing (epoch 0).
CREATE TABLE partition_epochs (
    partition integer PRIMARY KEY CHECK (partition >= 0),
    epoch     bigint  NOT NULL CHECK (epoch > 0)
);

-- The epoch each session was admitted under: 0 for single-node admissions,
-- which is what every session admitted before this migration was. tally
-- verify checks that, per user and period, the epochs of fenced sessions
-- never decrease in admission order (seq). A constant default adds the
-- column without rewriting the table.
ALTER TABLE sessions ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
