-- 0006: usage alerts and their webhook deliveries, the transactional outbox
-- (docs/alerts.md, docs/decisions/0024-alerts-outbox.md).
--
-- An alert row is inserted in the transaction of its cause: the admission
-- (admit.go, admit_bulk.go) or the completion (persistence/sessions.go)
-- that moved a user's usage across a threshold, or the first refused create
-- of a period (RecordLimitReached). It commits with its cause or not at
-- all. The dispatcher (package webhooks) delivers it and records how the
-- delivery went in the same row.
CREATE TABLE alerts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL
                    CHECK (kind IN ('usage.threshold_crossed', 'usage.limit_reached')),
    user_id         text        NOT NULL,
    plan            text        NOT NULL,
    metric          text        NOT NULL CHECK (metric IN ('sessions', 'minutes')),
    -- The threshold crossed; 0 for usage.limit_reached.
    percent         integer     NOT NULL CHECK (percent BETWEEN 0 AND 100),
    -- Usage after the cause: sessions, or seconds for minutes.
    used            bigint      NOT NULL,
    -- The plan's limit as clients see it (sessions, or minutes).
    limit_value     bigint      NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    occurred_at     timestamptz NOT NULL,
    -- The session whose admission or completion crossed the threshold.
    session_id      text,

    -- Delivery. pending → delivered, or failed (dead letter) once the
    -- retry horizon has passed; an admin may put a failed one back.
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- The running claim (ClaimDeliveries): its token and end. A claim
    -- whose end has passed is abandoned and may be taken over.
    claim           bigint      NOT NULL DEFAULT 0,
    claimed_until   timestamptz,
    last_attempt_at timestamptz,
    last_status     integer     NOT NULL DEFAULT 0,
    last_error      text        NOT NULL DEFAULT '',
    delivered_at    timestamptz,

    -- Exactly one alert per user, period, kind, metric, threshold and
    -- limit: however many nodes, retries or restarts try to write it. A
    -- plan change (another limit) or a reset (another period) counts
    -- afresh.
    UNIQUE (user_id, period_start, kind, metric, percent, limit_value)
)
-- Room on each page for the claim's new row version, which changes no
-- indexed column: it stays on the page (a HOT update) and writes no index
-- entry. Packed pages would make each claim write four.
WITH (fillfactor = 70);

-- Every index here is written by the admissions that cross a threshold,
-- so there are as few as the readers need. The claim walks the pending
-- alerts in id order and stops at its limit (the first index), asking
-- per candidate whether its user has an older pending alert (the second):
-- a claim costs the alerts it skips and takes, not the whole backlog,
-- whatever the table's statistics say (without the first index the
-- planner, on a table filled faster than autovacuum analyzes it, sorted
-- every pending alert on each claim). Partial: a delivered alert leaves
-- them.
CREATE INDEX alerts_pending_idx ON alerts (id) WHERE status = 'pending';
CREATE INDEX alerts_pending_user_idx ON alerts (user_id, id) WHERE status = 'pending';
-- The admin listing of dead letters; partial: a new alert never enters it.
-- (The other listings walk the primary key backwards; tally verify finds
-- a session's alert by the unique key, which names it completely.)
CREATE INDEX alerts_failed_idx ON alerts (id) WHERE status = 'failed';

-- The thresholds alerts were counted with, from when (RecordAlertSettings,
-- at each start whose settings differ from the last row). An empty array
-- is alerts off. tally verify expects an alert for a crossing only when
-- alerts were on at its time.
CREATE TABLE alert_settings (
    since    timestamptz PRIMARY KEY,
    percents integer[]   NOT NULL
);
