package transport

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tally-dev/tally/domain"
)

// The webhook deliveries of usage alerts at the edge (docs/alerts.md): an
// admin lists them, reads one, and puts a dead-lettered one back to
// pending. These routes are not a user's: in cluster mode the node that
// receives one serves it from the outbox every node shares, and never
// forwards it (routes registers them without a routing middleware).

// Deliveries is what the admin API needs of the webhook outbox. The app
// passes an adapter over the store (persistence.Outbox); transport does
// not import persistence. Implementations must be safe for concurrent use.
type Deliveries interface {
	// ListDeliveries returns up to limit deliveries of the status (any
	// when empty), newest first, with ids below before (0: from the
	// newest).
	ListDeliveries(ctx context.Context, status domain.DeliveryStatus, limit int, before int64) ([]domain.Delivery, error)
	// GetDelivery returns one delivery, or domain.ErrNotFound.
	GetDelivery(ctx context.Context, id int64) (domain.Delivery, error)
	// RetryDelivery puts a failed delivery back to pending, due now, and
	// returns it; domain.ErrNotFound when there is none, a *domain.Error
	// with CodeConflict when it is not failed.
	RetryDelivery(ctx context.Context, id int64) (domain.Delivery, error)
}

var (
	// errWebhooksOff answers every delivery route when Options.Deliveries
	// is nil: there is no outbox to read, and a 404 says the resource is
	// not there rather than that the request was wrong.
	errWebhooksOff = &domain.Error{Code: domain.CodeNotFound, Message: "webhooks are not configured (TALLY_WEBHOOK_URL)"}
	errNoDelivery  = &domain.Error{Code: domain.CodeNotFound, Message: "delivery not found"}
)

// webhookIDPrefix starts a delivery's id as the API shows it: the
// webhook-id header its receiver saw (domain.Alert.WebhookID), so that an
// operator can paste either one.
const webhookIDPrefix = "msg_tally_"

// deliveryParam returns the store id of the path's {id}: msg_tally_<n> or
// the bare <n>, n a positive decimal without sign or leading zeros. Any
// other id cannot exist and is a 404, as an unknown one is.
func deliveryParam(c *gin.Context) (int64, error) {
	raw := strings.TrimPrefix(c.Param("id"), webhookIDPrefix)
	if raw == "" || len(raw) > 19 || raw[0] == '0' {
		return 0, errNoDelivery
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] < '0' || raw[i] > '9' {
			return 0, errNoDelivery
		}
	}
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil {
		return 0, errNoDelivery // over int64
	}
	return id, nil
}

// deliveryListParams parses ?status=, ?limit= and ?cursor= of the list.
func deliveryListParams(c *gin.Context, f *fieldErrors) (status domain.DeliveryStatus, limit int, before int64) {
	if raw, ok := c.GetQuery("status"); ok {
		status = domain.DeliveryStatus(raw)
		if !status.Valid() {
			f.add("status", "must be one of pending, delivered, failed")
		}
	}
	limit = pageLimit(c, f)
	if raw, ok := c.GetQuery("cursor"); ok {
		id, err := decodeDeliveryCursor(raw)
		if err != nil {
			f.add("cursor", "must be a next_cursor returned by this endpoint")
		} else {
			before = id
		}
	}
	return status, limit, before
}

// The delivery list's next_cursor is base64url of "d|<id>" of the last
// delivery of a page: ids are unique and only rise, so the id alone
// places a page, and the prefix keeps an events cursor from passing for
// one.
const deliveryCursorPrefix = "d|"

func encodeDeliveryCursor(id int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(deliveryCursorPrefix + strconv.FormatInt(id, 10)))
}

func decodeDeliveryCursor(raw string) (int64, error) {
	if raw == "" || len(raw) > maxCursorLen {
		return 0, errors.New("bad cursor length")
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		return 0, err
	}
	rawID, ok := strings.CutPrefix(string(b), deliveryCursorPrefix)
	if !ok {
		return 0, errors.New("bad cursor")
	}
	id, err := strconv.ParseInt(rawID, 10, 64)
	if err != nil || id < 1 {
		return 0, errors.New("bad cursor id")
	}
	return id, nil
}

// deliveryJSON is a delivery as the admin API shows it. Claim, the
// dispatcher's lease token, is internal and left out.
type deliveryJSON struct {
	ID       string `json:"id"`   // the webhook-id
	Type     string `json:"type"` // the alert kind
	Status   string `json:"status"`
	Attempts int    `json:"attempts"`
	// NextAttemptAt is shown for a pending delivery only: the others are
	// not attempted again.
	NextAttemptAt *string `json:"next_attempt_at,omitempty"`
	// LastAttemptAt is null until the first attempt.
	LastAttemptAt *string       `json:"last_attempt_at"`
	LastStatus    int           `json:"last_status,omitempty"` // 0: no HTTP answer, or no attempt
	LastError     string        `json:"last_error,omitempty"`
	DeliveredAt   *string       `json:"delivered_at,omitempty"`
	Data          alertDataJSON `json:"data"`
}

// alertDataJSON is the alert a delivery carries.
type alertDataJSON struct {
	UserID string `json:"user_id"`
	Plan   string `json:"plan"`
	Metric string `json:"metric"`
	// ThresholdPercent is usage.threshold_crossed's only.
	ThresholdPercent *int `json:"threshold_percent,omitempty"`
	// Used is in the unit clients see: sessions, or whole minutes; the
	// seconds behind whole minutes are in UsedSeconds (minutes only).
	Used        int64  `json:"used"`
	Limit       int64  `json:"limit"`
	UsedSeconds *int64 `json:"used_seconds,omitempty"`
	PeriodStart string `json:"period_start"`
	PeriodEnd   string `json:"period_end"`
	OccurredAt  string `json:"occurred_at"`
	SessionID   string `json:"session_id,omitempty"`
	RestartedBy string `json:"restarted_by,omitempty"`
}

type deliveryListJSON struct {
	Items      []deliveryJSON `json:"items"`
	NextCursor *string        `json:"next_cursor"`
}

// optTimestamp is t formatted, or nil (null, or left out) when t is zero.
func optTimestamp(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := timestamp(t)
	return &s
}

func toDelivery(d domain.Delivery) deliveryJSON {
	a := d.Alert
	out := deliveryJSON{
		ID: a.WebhookID(), Type: string(a.Kind), Status: string(d.Status), Attempts: d.Attempts,
		LastAttemptAt: optTimestamp(d.LastAttemptAt),
		LastStatus:    d.LastStatus,
		LastError:     d.LastError,
		DeliveredAt:   optTimestamp(d.DeliveredAt),
		Data: alertDataJSON{
			UserID: a.UserID, Plan: a.Plan, Metric: string(a.Metric),
			Used: a.UsedReported(), Limit: int64(a.Limit),
			PeriodStart: timestamp(a.PeriodStart), PeriodEnd: timestamp(a.PeriodEnd), OccurredAt: timestamp(a.OccurredAt),
			SessionID: a.SessionID, RestartedBy: string(a.Restart),
		},
	}
	if d.Status == domain.DeliveryPending {
		out.NextAttemptAt = optTimestamp(d.NextAttemptAt)
	}
	if a.Kind == domain.AlertThresholdCrossed {
		p := a.Percent
		out.Data.ThresholdPercent = &p
	}
	if a.Metric == domain.MetricMinutes {
		s := a.Used
		out.Data.UsedSeconds = &s
	}
	return out
}

func (s *server) listDeliveries(c *gin.Context) {
	if s.deliveries == nil {
		s.fail(c, errWebhooksOff)
		return
	}
	var f fieldErrors
	status, limit, before := deliveryListParams(c, &f)
	if err := f.err(); err != nil {
		s.fail(c, err)
		return
	}
	// One more than the page tells whether a next page exists.
	list, err := s.deliveries.ListDeliveries(c.Request.Context(), status, limit+1, before)
	if err != nil {
		s.fail(c, err)
		return
	}
	var out deliveryListJSON
	out.Items, out.NextCursor = pageOf(list, limit, toDelivery, func(d domain.Delivery) string { return encodeDeliveryCursor(d.ID) })
	s.writeJSON(c, http.StatusOK, out)
}

// deliveryID is the delivery a request names, or false when it was
// answered already: webhooks are off, or the id is not one.
func (s *server) deliveryID(c *gin.Context) (int64, bool) {
	if s.deliveries == nil {
		s.fail(c, errWebhooksOff)
		return 0, false
	}
	id, err := deliveryParam(c)
	if err != nil {
		s.fail(c, err)
		return 0, false
	}
	return id, true
}

func (s *server) getDelivery(c *gin.Context) {
	id, ok := s.deliveryID(c)
	if !ok {
		return
	}
	d, err := s.deliveries.GetDelivery(c.Request.Context(), id)
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, http.StatusOK, toDelivery(d))
}

// retryDelivery puts a failed delivery back to pending. The outbox keeps
// no audit trail of its own, so the retry is logged with who asked and
// the request id, as an audit event would carry them.
func (s *server) retryDelivery(c *gin.Context) {
	id, ok := s.deliveryID(c)
	if !ok {
		return
	}
	if err := decodeEmptyBody(c); err != nil {
		s.fail(c, err)
		return
	}
	d, err := s.deliveries.RetryDelivery(c.Request.Context(), id)
	if err != nil {
		s.fail(c, err)
		return
	}
	by := origin(c)
	s.log.LogAttrs(c.Request.Context(), slog.LevelInfo, "webhook delivery retried",
		slog.String("admin", by.Admin), slog.String("request_id", by.RequestID),
		slog.String("webhook_id", d.WebhookID()), slog.String("user_id", d.UserID),
		slog.String("type", string(d.Kind)), slog.Int("attempts", d.Attempts))
	s.writeJSON(c, http.StatusOK, toDelivery(d))
}
