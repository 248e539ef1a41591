package cluster

import (
	"hash/fnv"
	"slices"

	"github.com/tally-dev/tally/domain"
)

// desiredOwners is, for every partition, the member with the highest
// rendezvous (highest random weight) score for it: score(id, p) is a hash of
// both, the same on every node. A member that joins takes exactly the
// partitions it now scores highest on (about 1/N of them, each from one of
// the others), and one that leaves gives each of its partitions to the
// member scoring second on it; every other partition stays where it is.
// Consistent hashing with a ring would do the same with virtual nodes and
// more state; for 256 partitions and a handful of nodes this is 256×N
// hashes per membership change.
func desiredOwners(ids []string) (out [domain.Partitions]string) {
	if len(ids) == 0 {
		return out
	}
	base := make([]uint64, len(ids))
	for i, id := range ids {
		h := fnv.New64a()
		_, _ = h.Write([]byte(id)) // a hash.Hash never returns an error
		base[i] = h.Sum64()
	}
	for p := range domain.Partitions {
		pk := mix64(uint64(p) + 0x9e3779b97f4a7c15)
		best, bestScore := 0, uint64(0)
		for i := range ids {
			s := mix64(base[i] ^ pk)
			if i == 0 || s > bestScore || (s == bestScore && ids[i] < ids[best]) {
				best, bestScore = i, s
			}
		}
		out[p] = ids[best]
	}
	return out
}

// mix64 is the SplitMix64 finalizer: FNV-1a alone spreads ids that differ
// in one trailing character poorly in the high bits compared here.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// DesiredOwners is, for every partition, the member that every node
// running with the live member ids ids wants as its owner. A cluster has
// settled when each partition is claimed by its desired owner; the drills
// (drills/cluster_test.go) read the claims from etcd and compare.
func DesiredOwners(ids []string) [domain.Partitions]string {
	return desiredOwners(slices.Sorted(slices.Values(ids)))
}
