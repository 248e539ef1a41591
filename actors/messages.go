package actors

import (
	"time"

	"github.com/tally-dev/tally/domain"
)

// userMessage is anything routed to one user's actor.
type userMessage interface {
	userID() string
	due() time.Time
	answer(*reply)
	reply() <-chan *reply
}

// call is what every request carries: when its caller stops waiting, and
// where to answer. The answer goes to a buffered channel the caller selects
// on, so answering never blocks the actor — even after the caller gave up —
// and costs no future registration in the actor system: a request may be
// answered long after the message that carried it (an admission, after its
// commit).
type call struct {
	deadline time.Time
	replyTo  chan *reply
}

func newCall(deadline time.Time) call { return call{deadline: deadline, replyTo: make(chan *reply, 1)} }

func (c *call) due() time.Time { return c.deadline }

func (c *call) reply() <-chan *reply { return c.replyTo }

func (c *call) answer(r *reply) {
	select {
	case c.replyTo <- r:
	default: // answered already: the first answer stands
	}
}

// Requests, one per operation of the Accounts interface that goes through
// the user's actor.
type (
	createSession struct {
		call
		user           string
		in             domain.NewSession
		idempotencyKey string
	}
	getUsage struct {
		call
		user string
	}
	prepareUpload struct {
		call
		user, session string
		sizeMB        float64
	}
	putUser struct {
		call
		user   string
		plan   *string
		anchor *time.Time
		by     domain.Origin
	}
	getUser struct {
		call
		user string
	}
	resetUsage struct {
		call
		user string
		by   domain.Origin
	}
	completeSession struct {
		call
		user, session string
		seconds       int64
		by            domain.Origin
	}
	failSession struct {
		call
		user, session string
		by            domain.Origin
	}
)

func (m *createSession) userID() string   { return m.user }
func (m *getUsage) userID() string        { return m.user }
func (m *prepareUpload) userID() string   { return m.user }
func (m *putUser) userID() string         { return m.user }
func (m *getUser) userID() string         { return m.user }
func (m *resetUsage) userID() string      { return m.user }
func (m *completeSession) userID() string { return m.user }
func (m *failSession) userID() string     { return m.user }

// reply is the one answer type of a user actor; err is a domain error or nil.
// What only the account and upload answers carry sits behind a pointer,
// so that a create's reply — the most frequent by far — stays small.
type reply struct {
	session domain.Session
	err     error
	*account
}

// account is the part of a reply about the user and its plan.
type account struct {
	user   domain.User
	report domain.Report
	plan   domain.Plan
}

// accountOf returns r's account part, empty when it has none.
func (r *reply) accountOf() *account {
	if r.account == nil {
		return &account{}
	}
	return r.account
}

// sweep is a shard's tick: passivate a few of the idle user actors it has
// found, after looking for them first when scan is set.
type sweep struct {
	now  time.Time
	scan bool
}
