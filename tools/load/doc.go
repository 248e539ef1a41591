// Package load fires concurrent session creates at a running Tally, measures
// what came back, and then checks over the API that the service kept its
// invariants under that load. `tally load` is its command line; Run is the
// same engine for Go tests and benchmarks.
//
// # What it measures
//
// Every request's outcome is one of: admitted (200), rejected (403, a plan
// limit), another status, or a transport error (timeout, refused or reset
// connection). Latencies go into HDR histograms (microsecond resolution,
// three significant digits), one for admitted and one for rejected
// requests, because the two take very different paths through the service
// (a durable write against a refusal) and a single histogram would hide one
// behind the other. A series of the same figures over time (one
// interval per second unless Config.Interval says otherwise) feeds the
// "latency over time" chart of the HTML report. Every answer's latency is
// also kept by HTTP status, from the scheduled and from the actual send, so
// that how fast a server refuses (503) is a figure of its own.
//
// Two ways to generate load:
//
//   - Closed loop (the default): Concurrency workers, each sending its next
//     request when the previous one has answered. It finds the maximum
//     throughput, but its latencies are optimistic: when the server stalls,
//     the workers stall with it and stop sending, so the requests a real
//     client would have sent during the stall are never measured
//     ("coordinated omission").
//   - Open loop (Rate > 0): requests are scheduled at fixed intervals,
//     1/Rate apart, whatever the server does, and each latency is measured
//     from the request's scheduled send time, not from when it was actually
//     sent. A stall therefore shows up in the latency of every request that
//     should have been sent during it, as a real user population would see
//     it. Concurrency caps the requests in flight; a request sent more than
//     LateAfter after its scheduled time (every worker was busy, or the
//     client itself was short of CPU) is counted as late: it is still sent,
//     and its wait is part of its latency. Slots still waiting when the
//     time is up are counted as unsent. The pacer sleeps the last stretch
//     before a slot with nanosleep, because Go's timers can fire up to a
//     millisecond late on an idle process, which would add client-made
//     latency to every request; the send-lag figures show how punctual the
//     pacer was.
//
// The client shares the machine's cores with the server in the targets it
// is built for, so it is kept cheap per request. The creates go out through
// a minimal HTTP/1.1 client (rawhttp.go): each worker owns one keep-alive
// connection, a request is one write of bytes rendered once per user
// (token, headers, the pre-marshalled JSON body), and the answer is read
// into the worker's buffer on the worker's goroutine; the session id of an
// admitted create is cut out of the body without a JSON decoder. This
// halved the client's CPU per request compared with net/http's Transport
// (Config.StdClient keeps that path, for comparison). Recording is a short
// lock on one of a few shards (workers are spread over them), and the
// progress bar only reads what the per-second collector computed.
//
// # Verification
//
// After the load (unless NoVerify), for every user: GET /api/v1/usage must
// show sessions.used ≤ sessions.limit (unless unlimited, -1), and
// sessions.used must equal the usage before the run plus the creates this
// run saw admitted — it may exceed that only by the requests whose outcome
// the client could not know (transport errors, 500, 502, 504). Fewer means
// an acknowledged session was lost; more means sessions were admitted that
// nobody was told about. Then GET /api/v1/sessions/{id} of every admitted
// session must answer 200 (read-your-writes). A 500 anywhere during the run
// is a violation too: a 500 is never a right answer (invariant I4, docs/contract.md).
//
// # JSON output
//
// Result marshals to JSON with these stable field names (durations in
// seconds, latencies in milliseconds as decimals with microsecond
// precision):
//
//	url, path             target
//	mode                  "closed" or "open"
//	users, hot, plan, user_prefix, concurrency
//	rate                  target requests/s (open loop), 0 in closed loop
//	started_at            when the load started (RFC 3339, UTC)
//	warmup_s, duration_s  warm-up (not measured) and measured wall time
//	requests              requests completed in the measured phase
//	admitted, rejected    200s and 403s
//	errors                everything else (other statuses + transport errors)
//	requests_per_s, admitted_per_s, rejected_per_s, errors_per_s
//	statuses              {"200": n, "403": n, ...} every HTTP status seen
//	errors_by_status      {"500": n, "504": n, ...} statuses other than 200/403
//	transport_errors      {"timeout": n, "connection_refused": n, "connection_reset": n,
//	                      "no_local_ports": n, "other": n}
//	transport_error_samples  one error message per transport error class
//	late                  open loop: requests sent more than late_after_ms after their slot
//	unsent                open loop: slots still waiting for a worker when the time was up
//	late_after_ms
//	send_lag              open loop: latency object of (actual − scheduled) send time
//	latency_admitted, latency_rejected
//	                      {"count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"}
//	latency_by_status     {"200": latency, "503": latency, ...} every HTTP status's answers
//	latency_by_status_from_send  the same from each request's actual send (open loop:
//	                      without the wait for a free worker)
//	retry_after_by_status {"503": n, ...} answers that carried a Retry-After header
//	measure_start         when the measured phase began (RFC 3339, ns)
//	interval_s            length of the series' intervals (default 1)
//	series                per interval: {"t_s", "length_s", "admitted", "rejected",
//	                      "errors", "late", "admitted_p50_ms", "admitted_p99_ms",
//	                      "rejected_p50_ms", "rejected_p99_ms"} (t_s = end of the
//	                      interval since the measured phase started; counts, not rates)
//	verification          {"users", "sessions", "passed"}; null when skipped
//	violations            every invariant violation found, as sentences
//	server_errors_500     number of 500 answers (each run with one fails)
//	interrupted           the run was cut short by its context
//	passed                no violations, no 500s, and the run was not interrupted
package load
