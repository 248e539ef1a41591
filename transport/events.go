package transport

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tally-dev/tally/domain"
)

// The audit trail at the edge (docs/contract.md, "Audit trail"): who made
// an admin change goes down with it, and GET /admin/v1/users/{id}/events
// reads the trail back.

// origin is who makes the admin change of this request: the admin
// credential's name (requireAdmin) and the request id, which observe set
// as the response's X-Request-Id before any handler ran. Reading it back
// from the header costs the requests that never change anything nothing.
func origin(c *gin.Context) domain.Origin {
	return domain.Origin{Admin: c.GetString(ctxAdmin), RequestID: c.Writer.Header().Get(headerRequestID)}
}

// Admin list paging: the events' and the webhook deliveries'.
const (
	defaultEventLimit = 50
	maxEventLimit     = 500
)

// pageLimit parses ?limit= of the admin lists (events, webhook
// deliveries), which page alike.
func pageLimit(c *gin.Context, f *fieldErrors) int {
	raw, ok := c.GetQuery("limit")
	if !ok {
		return defaultEventLimit
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > maxEventLimit {
		f.add("limit", "must be an integer from 1 to 500")
		return defaultEventLimit
	}
	return n
}

// eventListParams parses ?limit= and ?cursor= of the event list.
func eventListParams(c *gin.Context, f *fieldErrors) (limit int, after *domain.EventCursor) {
	limit = pageLimit(c, f)
	if raw, ok := c.GetQuery("cursor"); ok {
		cur, err := decodeEventCursor(raw)
		if err != nil {
			f.add("cursor", "must be a next_cursor returned by this endpoint")
		} else {
			after = &cur
		}
	}
	return limit, after
}

// encodeEventCursor makes the opaque next_cursor, in the style of the
// session list's: base64url of "<occurred_at RFC3339Nano>|<id>" of the
// last event of a page.
func encodeEventCursor(e domain.UserEvent) string {
	return base64.RawURLEncoding.EncodeToString([]byte(e.OccurredAt.UTC().Format(time.RFC3339Nano) + "|" + strconv.FormatInt(e.ID, 10)))
}

func decodeEventCursor(raw string) (domain.EventCursor, error) {
	if raw == "" || len(raw) > maxCursorLen {
		return domain.EventCursor{}, errors.New("bad cursor length")
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		return domain.EventCursor{}, err
	}
	ts, rawID, ok := strings.Cut(string(b), "|")
	if !ok {
		return domain.EventCursor{}, errors.New("bad cursor")
	}
	id, err := strconv.ParseInt(rawID, 10, 64)
	if err != nil || id < 1 {
		return domain.EventCursor{}, errors.New("bad cursor id")
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return domain.EventCursor{}, err
	}
	return domain.EventCursor{OccurredAt: t.UTC(), ID: id}, nil
}

type userEventJSON struct {
	ID         int64           `json:"id"`
	UserID     string          `json:"user_id"`
	SessionID  *string         `json:"session_id"` // null for a user change
	Kind       string          `json:"kind"`
	Actor      string          `json:"actor"`
	RequestID  string          `json:"request_id"`
	OccurredAt string          `json:"occurred_at"`
	Before     json.RawMessage `json:"before"` // null when the change created the user
	After      json.RawMessage `json:"after"`
}

type userEventListJSON struct {
	Items      []userEventJSON `json:"items"`
	NextCursor *string         `json:"next_cursor"`
}

var jsonNull = json.RawMessage("null")

func toUserEvent(e domain.UserEvent) userEventJSON {
	out := userEventJSON{
		ID: e.ID, UserID: e.UserID, Kind: string(e.Kind), Actor: e.Actor, RequestID: e.RequestID,
		OccurredAt: timestamp(e.OccurredAt), Before: e.Before, After: e.After,
	}
	if e.SessionID != "" {
		out.SessionID = &e.SessionID
	}
	if out.Before == nil {
		out.Before = jsonNull
	}
	return out
}

func (s *server) listUserEvents(c *gin.Context) {
	var f fieldErrors
	id := userParam(c, &f)
	limit, after := eventListParams(c, &f)
	if err := f.err(); err != nil {
		s.fail(c, err)
		return
	}
	// One more than the page tells whether a next page exists.
	list, err := s.accounts.ListUserEvents(c.Request.Context(), id, limit+1, after)
	if err != nil {
		s.fail(c, err)
		return
	}
	var out userEventListJSON
	out.Items, out.NextCursor = pageOf(list, limit, toUserEvent, encodeEventCursor)
	s.writeJSON(c, http.StatusOK, out)
}
