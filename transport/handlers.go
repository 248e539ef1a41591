package transport

import (
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tally-dev/tally/domain"
)

// The handlers are thin: decode and validate, call Accounts with the
// request's context (the core bounds each call's time; a client going
// away cancels it), encode. Every error goes to fail.

var errNoSession = &domain.Error{Code: domain.CodeNotFound, Message: "session not found"}

// sessionParam returns the path's session id; an id that cannot exist is a
// 404, as an unknown one would be.
func sessionParam(c *gin.Context) (string, error) {
	id := c.Param("id")
	if !validSessionID(id) {
		return "", errNoSession
	}
	return id, nil
}

// userParam checks the admin path's user id.
func userParam(c *gin.Context, f *fieldErrors) string {
	id := c.Param("id")
	if !domain.ValidUserID(id) {
		f.add("id", "must be 1 to 128 characters of [A-Za-z0-9._@:-]")
	}
	return id
}

func (s *server) createSession(c *gin.Context) {
	var in domain.NewSession
	if err := decodeBody(c, &in); err != nil {
		s.fail(c, err)
		return
	}
	key := c.GetHeader("Idempotency-Key")
	var f fieldErrors
	if err := f.merge(in.Validate(s.providers)); err != nil {
		s.fail(c, err)
		return
	}
	validateIdempotencyKey(key, &f)
	if err := f.err(); err != nil {
		s.fail(c, err)
		return
	}
	if s.cluster != nil {
		in.ID = s.forwardSession(c) // the forwarding node's choice, to find it by
	}
	sess, err := s.accounts.CreateSession(c.Request.Context(), userID(c), in, key)
	s.metrics.admission(err)
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, http.StatusOK, toSession(sess))
}

func (s *server) getSession(c *gin.Context) {
	id, err := sessionParam(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	sess, err := s.accounts.GetSession(c.Request.Context(), userID(c), id)
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, http.StatusOK, toSession(sess))
}

func (s *server) listSessions(c *gin.Context) {
	var f fieldErrors
	limit, after := listParams(c, &f)
	if err := f.err(); err != nil {
		s.fail(c, err)
		return
	}
	// One more than the page tells whether a next page exists, so the last
	// page says so (next_cursor null) instead of leading to an empty one.
	list, err := s.accounts.ListSessions(c.Request.Context(), userID(c), limit+1, after)
	if err != nil {
		s.fail(c, err)
		return
	}
	var out sessionListJSON
	out.Items, out.NextCursor = pageOf(list, limit, toSession, encodeCursor)
	s.writeJSON(c, http.StatusOK, out)
}

func (s *server) createUploadURL(c *gin.Context) {
	id, err := sessionParam(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	var in uploadRequest
	if err := decodeBody(c, &in); err != nil {
		s.fail(c, err)
		return
	}
	var f fieldErrors
	in.validate(&f)
	if err := f.err(); err != nil {
		s.fail(c, err)
		return
	}
	if _, _, err := s.accounts.PrepareUpload(c.Request.Context(), userID(c), id, *in.FileSizeMB); err != nil {
		s.fail(c, err)
		return
	}
	// Signed after PrepareUpload so that the clock starts when the session
	// is ready to receive, and whole seconds because the URL carries them.
	expires := s.now().Add(UploadURLTTL).Truncate(time.Second)
	s.writeJSON(c, http.StatusOK, uploadURLJSON{
		UploadURL: signUploadURL(s.uploadKey, s.uploadBase, id, *in.Filename, *in.FileSizeMB, expires),
		ExpiresAt: timestamp(expires),
	})
}

func (s *server) usage(c *gin.Context) {
	r, err := s.accounts.Usage(c.Request.Context(), userID(c))
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, http.StatusOK, toUsage(r))
}

func (s *server) listPlans(c *gin.Context) {
	c.Data(http.StatusOK, "application/json; charset=utf-8", s.plansJSON)
}

func (s *server) putUser(c *gin.Context) {
	var in putUserRequest
	if err := decodeBody(c, &in); err != nil {
		s.fail(c, err)
		return
	}
	var f fieldErrors
	id := userParam(c, &f)
	anchor := in.validate(s.catalog, &f)
	if err := f.err(); err != nil {
		s.fail(c, err)
		return
	}
	u, r, err := s.accounts.PutUser(c.Request.Context(), origin(c), id, in.Plan, anchor)
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, http.StatusOK, toAdminUser(u, r))
}

func (s *server) getUser(c *gin.Context) {
	var f fieldErrors
	id := userParam(c, &f)
	if err := f.err(); err != nil {
		s.fail(c, err)
		return
	}
	u, r, err := s.accounts.GetUser(c.Request.Context(), id)
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, http.StatusOK, toAdminUser(u, r))
}

func (s *server) resetUsage(c *gin.Context) {
	if err := decodeEmptyBody(c); err != nil {
		s.fail(c, err)
		return
	}
	var f fieldErrors
	id := userParam(c, &f)
	if err := f.err(); err != nil {
		s.fail(c, err)
		return
	}
	r, err := s.accounts.ResetUsage(c.Request.Context(), origin(c), id)
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, http.StatusOK, toUsage(r))
}

func (s *server) completeSession(c *gin.Context) {
	id, err := sessionParam(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	var in completeRequest
	if err := decodeBody(c, &in); err != nil {
		s.fail(c, err)
		return
	}
	var f fieldErrors
	in.validate(&f)
	if err := f.err(); err != nil {
		s.fail(c, err)
		return
	}
	sess, err := s.accounts.CompleteSession(c.Request.Context(), origin(c), id, *in.DurationSeconds)
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, http.StatusOK, toSession(sess))
}

func (s *server) failSession(c *gin.Context) {
	id, err := sessionParam(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	if err := decodeEmptyBody(c); err != nil {
		s.fail(c, err)
		return
	}
	sess, err := s.accounts.FailSession(c.Request.Context(), origin(c), id)
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, http.StatusOK, toSession(sess))
}
