package verify

import (
	"context"
	"database/sql"
	"fmt"
)

// The epoch check (docs/decisions/0022-partition-epoch-fence.md). In cluster
// mode every admission carries its partition's ownership epoch and commits
// only while that epoch is the one stored for the partition, which only
// rises; the session records it. Within a user's period, sessions are
// numbered in the order they were admitted (seq), so their epochs never
// decrease along seq: a session under an epoch lower than an earlier
// session's was admitted by a node that had lost the user's partition to
// a newer owner — what the fence exists to prevent.
//
// Sessions under epoch 0 were admitted by a single-node process, which has
// no fence. They are neither checked nor compared: a deployment may run as
// one node before, after or between cluster runs in one period, and an
// epoch-0 session says nothing about the order of the fenced ones around
// it. (A single-node process running beside a cluster on the same database
// is a misconfiguration that no epoch can catch.)

// epochOrderSQL lists every fenced session admitted under a lower epoch
// than the highest before it (in seq order) in its user's period. The
// window is over the fenced sessions only, so a single-node store pays
// for nothing but the scan.
const epochOrderSQL = `
SELECT user_id, %s, seq, id, epoch, earlier
FROM (
    SELECT user_id, period_start, seq, id, epoch,
           max(epoch) OVER (PARTITION BY user_id, period_start ORDER BY seq, id
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier
    FROM sessions
    WHERE epoch > 0
) AS s
WHERE epoch < earlier
ORDER BY 1, 2, seq, id`

// scanEpochOrder reports, once per user and period, the sessions whose
// epoch is lower than an earlier session's.
func (s *source) scanEpochOrder(ctx context.Context, tx *sql.Tx, a *audit) error {
	rows, err := tx.QueryContext(ctx, fmt.Sprintf(epochOrderSQL, s.micros("period_start")))
	if err != nil {
		return err
	}
	defer rows.Close()
	var (
		cur   *period // the (user, period) being collected; only its key is used
		n     int64
		first struct {
			seq, epoch, earlier int64
			id                  string
		}
	)
	flush := func() {
		if cur == nil {
			return
		}
		a.add(Violation{Check: EpochOrder, UserID: cur.userID, PeriodStart: cur.start(),
			Detail: fmt.Sprintf("%d session(s) admitted under a lower epoch than an earlier session of the period (a node admitted after a newer owner claimed the partition): seq %d under epoch %d after epoch %d (session %s)",
				n, first.seq, first.epoch, first.earlier, first.id),
			Numbers: map[string]int64{"sessions": n, "seq": first.seq, "epoch": first.epoch, "earlier_epoch": first.earlier}})
	}
	for rows.Next() {
		var (
			p                   period
			seq, epoch, earlier int64
			id                  string
		)
		if err := rows.Scan(&p.userID, &p.startMicros, &seq, &id, &epoch, &earlier); err != nil {
			return err
		}
		if cur != nil && cur.userID == p.userID && cur.startMicros == p.startMicros {
			n++
			continue
		}
		flush()
		cur, n = &p, 1
		first.seq, first.epoch, first.earlier, first.id = seq, epoch, earlier, id
	}
	if err := rows.Err(); err != nil {
		return err
	}
	flush()
	return nil
}
