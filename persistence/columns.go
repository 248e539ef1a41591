package persistence

// The columns both stores select, in the order their scans read them. The
// two schemas have the same columns in these tables (each store's
// migrations/0001_init.sql, 0002_idempotency_keys.sql and 0005_epochs.sql),
// only their types differ, so the lists are written once.
const (
	UserColumns    = `id, plan, billing_anchor, version, created_at, updated_at`
	SessionColumns = `id, user_id, title, language, stt_provider, status,
	duration_seconds, period_start, epoch, created_at, updated_at`
	KeyColumns = `user_id, key, request_hash, outcome, session_id, plan_name,
	max_sessions, max_seconds, usage_sessions, usage_seconds, period_start, period_end, created_at`
)

// EventColumns are the columns of an audit event (user_events, each
// store's migrations/0004_user_events.sql), in the order the stores' scans
// read them: NULLs of a user change's session and a session change's
// version are read as "" and 0, as domain.UserEvent has them.
const EventColumns = `id, user_id, COALESCE(session_id, ''), kind, actor, request_id, occurred_at,
	COALESCE(user_version, 0), before, after`
