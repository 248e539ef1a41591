package domain

import (
	"errors"
	"fmt"
	"hash/fnv"
)

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

// ErrNotOwner is the cause of a request this node refused because it does
// not own the user's partition now: the partition is moving (released or
// lost by this node), belongs to another node, or the store fenced off the
// admission because a newer owner claimed the partition. Nothing was
// written for such a request, so it may be sent again, to the owner or
// later, without being counted twice. Tell it with errors.Is.
var ErrNotOwner = errors.New("this node does not own the user's partition")

// NotOwner answers a request for a user of partition p that this node does
// not own now: a CodeUnavailable *Error (503 with Retry-After) whose cause
// is ErrNotOwner, so that an edge that knows the owner can forward the
// request instead.
func NotOwner(p Partition) *Error {
	return &Error{Code: CodeUnavailable, Message: "the user's accounts are moving between nodes; retry later",
		Err: fmt.Errorf("partition %d: %w", p, ErrNotOwner)}
}
