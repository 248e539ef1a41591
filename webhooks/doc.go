// Package webhooks delivers usage alerts from the store's outbox
// (persistence.Outbox) to the operator's receiver as signed webhooks, per
// the Standard Webhooks specification (https://www.standardwebhooks.com):
// each alert is one POST of a JSON body built from its stored row alone,
// signed with HMAC-SHA256 under a whsec_ secret, with a webhook-id that is
// the same on every attempt so that the receiver can deduplicate.
//
// Delivery is at least once. The Dispatcher claims due deliveries from the
// outbox under a lease, sends them concurrently and settles each attempt:
// delivered on a 2xx answer; retried with exponential backoff (or the
// receiver's Retry-After) on a network error, a timeout, a 5xx, 408, 429
// or a redirect (never followed); dead-lettered (status failed) at once on
// any other 4xx, or once the next attempt would fall after the retry
// horizon. The store hands out
// only each user's oldest pending alert, so a user's alerts arrive in the
// order they occurred, and a slow receiver answer for one user holds only
// that user's deliveries. Nothing in the request path waits for a webhook:
// admissions only write the outbox row, and may call Notify, which never
// blocks.
package webhooks
