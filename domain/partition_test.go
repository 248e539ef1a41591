package domain

import (
	"strconv"
	"testing"
)

// The mapping is part of the stored data (each admission records its
// partition's epoch), so it must never change: these values are pinned.
func TestPartitionOfIsStable(t *testing.T) {
	for id, want := range map[string]Partition{
		"alice":       7,
		"demo-user":   238,
		"load-0000-1": 198,
	} {
		if got := PartitionOf(id); got != want {
			t.Errorf("PartitionOf(%q) = %d", id, got)
		}
	}
}

// Users spread over every partition, roughly evenly: 256k ids give each
// partition about 1000; a bad hash (or a modulo of a short hash) would
// leave some far below.
func TestPartitionOfSpreads(t *testing.T) {
	var n [Partitions]int
	const ids = 256 * 1000
	for i := range ids {
		n[PartitionOf("user-"+strconv.Itoa(i))]++
	}
	for p, c := range n {
		if c < 800 || c > 1200 {
			t.Errorf("partition %d has %d of %d ids, want about 1000", p, c, ids)
		}
	}
}
