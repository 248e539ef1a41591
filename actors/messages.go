package actors

import (
	"time"

	"github.com/tally-dev/tally/domain"
)

// userMessage is anything routed to one user's actor; due is when its
// caller stops waiting for the answer.
type userMessage interface {
	userID() string
	due() time.Time
}

// Requests. Each carries the caller's deadline so that the actor bounds its
// store calls by the time the HTTP request has left.
type (
	createSession struct {
		user           string
		in             domain.NewSession
		idempotencyKey string
		deadline       time.Time
	}
	getUsage struct {
		user     string
		deadline time.Time
	}
	prepareUpload struct {
		user, session string
		sizeMB        float64
		deadline      time.Time
	}
	putUser struct {
		user     string
		plan     *string
		anchor   *time.Time
		deadline time.Time
	}
	getUser struct {
		user     string
		deadline time.Time
	}
	resetUsage struct {
		user     string
		deadline time.Time
	}
	completeSession struct {
		user, session string
		seconds       int64
		deadline      time.Time
	}
	failSession struct {
		user, session string
		deadline      time.Time
	}
)

func (m *createSession) due() time.Time   { return m.deadline }
func (m *createSession) userID() string   { return m.user }
func (m *getUsage) due() time.Time        { return m.deadline }
func (m *getUsage) userID() string        { return m.user }
func (m *prepareUpload) due() time.Time   { return m.deadline }
func (m *prepareUpload) userID() string   { return m.user }
func (m *putUser) due() time.Time         { return m.deadline }
func (m *putUser) userID() string         { return m.user }
func (m *getUser) due() time.Time         { return m.deadline }
func (m *getUser) userID() string         { return m.user }
func (m *resetUsage) due() time.Time      { return m.deadline }
func (m *resetUsage) userID() string      { return m.user }
func (m *completeSession) due() time.Time { return m.deadline }
func (m *completeSession) userID() string { return m.user }
func (m *failSession) due() time.Time     { return m.deadline }
func (m *failSession) userID() string     { return m.user }

// reply is the one answer type of a user actor; err is a domain error or nil.
type reply struct {
	session domain.Session
	user    domain.User
	report  domain.Report
	plan    domain.Plan
	err     error
}

// sweep asks a shard to passivate its idle user actors.
type sweep struct{ now time.Time }
