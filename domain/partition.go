package domain

import "hash/fnv"

// Partitions is the fixed number of partitions users are spread over in
// cluster mode. Each partition has one owner node at a time; ownership,
// the admission fence in the store and request routing all work per
// partition, never per user, so membership changes move a bounded number
// of things. It is fixed for the life of a deployment: changing it would
// move every user at once (the stored epochs are per partition).
const Partitions = 256

// Partition is a partition number, 0 ≤ p < Partitions.
type Partition int

// PartitionOf maps a user id to its partition: FNV-1a (64 bit) of the id,
// modulo Partitions. Every node, the store's fence and `tally verify` must
// agree on it, so it is written once, here.
func PartitionOf(userID string) Partition {
	h := fnv.New64a()
	_, _ = h.Write([]byte(userID)) // a hash.Hash never returns an error
	return Partition(h.Sum64() % Partitions)
}
