package domain

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"time"
	"unicode/utf8"
)

// Status is a session's lifecycle state.
type Status string

// The session states. created → uploading → completed | failed; created may
// also go straight to completed or failed.
const (
	StatusCreated   Status = "created"
	StatusUploading Status = "uploading"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
)

// Final reports whether no further transition is possible.
func (s Status) Final() bool { return s == StatusCompleted || s == StatusFailed }

// Session is one transcription session.
type Session struct {
	ID              string
	UserID          string
	Title           string
	Language        string
	STTProvider     string
	Status          Status
	DurationSeconds *int64 // nil until completed
	// PeriodStart is the start of the billing period the session was
	// admitted in; its minutes are added to that period when it completes.
	PeriodStart time.Time
	// Epoch is the ownership epoch of the user's partition under which the
	// session was admitted: the fencing token the store checked
	// (persistence.AdmitRequest.Epoch), 0 for a single-node admission.
	// tally verify checks that a user's epochs never decrease within a
	// period. It is an internal audit field, not part of the public JSON.
	Epoch     int64
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Cursor is a position in a user's session list, which is ordered newest
// first by (CreatedAt, ID).
type Cursor struct {
	CreatedAt time.Time
	ID        string
}

// NewSession is what a client asks to create.
type NewSession struct {
	Title       string `json:"title"`
	Language    string `json:"language"`
	STTProvider string `json:"stt_provider"`
	// ID, when set, is the new session's id, chosen by the cluster node
	// that forwarded the create to the user's owner, so that it can look
	// the session up if the owner's answer is lost (transport/cluster.go).
	// It is never read from a client's body, and not part of Fingerprint:
	// a retry through another node is the same request.
	ID string `json:"-"`
}

// Fingerprint identifies the request's content for Idempotency-Key checks:
// the same key with another fingerprint is a conflict. It hashes the decoded
// fields, so whitespace or field order in the JSON does not matter.
func (n NewSession) Fingerprint() string {
	h := sha256.New()
	for _, f := range []string{n.Title, n.Language, n.STTProvider} {
		// Length-prefixed, so that ("ab","c") and ("a","bc") differ.
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// MaxIdempotencyKeyLen bounds an Idempotency-Key header.
const MaxIdempotencyKeyLen = 255

// MaxDurationSeconds bounds a completion: one session is at most a day.
const MaxDurationSeconds = 86400

// bcp47 accepts language tags of the shape language[-script][-region][-variant…]
// (en, en-US, zh-Hans-CN, de-CH-1996) and the special value "auto".
var bcp47 = regexp.MustCompile(`^(auto|[A-Za-z]{2,3}(-[A-Za-z]{4})?(-([A-Za-z]{2}|[0-9]{3}))?(-([A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)$`)

// Validate checks the request against the contract, CheckText on every
// string included; providers are the configured speech-to-text providers.
// It returns a CodeValidation *Error listing every invalid field, or nil.
func (n NewSession) Validate(providers []string) error {
	var fields []FieldError
	// CheckText first, so that a title with a NUL is told about the NUL
	// rather than about its length, and no store ever sees one.
	if checkTextField(&fields, "title", n.Title) {
		if l := utf8.RuneCountInString(n.Title); l < 1 || l > 255 {
			fields = append(fields, FieldError{"title", "must be 1 to 255 characters"})
		}
	}
	if checkTextField(&fields, "language", n.Language) && !bcp47.MatchString(n.Language) {
		fields = append(fields, FieldError{"language", "must be a BCP 47 language tag such as en-US, or auto"})
	}
	if checkTextField(&fields, "stt_provider", n.STTProvider) && !slices.Contains(providers, n.STTProvider) {
		fields = append(fields, FieldError{"stt_provider", "must be one of the configured providers"})
	}
	return validation(fields)
}

// ValidateDuration checks a completion's duration.
func ValidateDuration(seconds int64) error {
	if seconds < 0 || seconds > MaxDurationSeconds {
		return validation([]FieldError{{"duration_seconds", "must be between 0 and 86400"}})
	}
	return nil
}

// ValidateFileSize checks an upload's announced size.
func ValidateFileSize(sizeMB float64) error {
	if !(sizeMB > 0) || sizeMB > 1e9 {
		return validation([]FieldError{{"file_size_mb", "must be a number greater than 0"}})
	}
	return nil
}

func validation(fields []FieldError) error {
	if len(fields) == 0 {
		return nil
	}
	return &Error{Code: CodeValidation, Message: "invalid request", Fields: fields}
}

// Transition decides whether the session may move to status `to`
// (completing with `seconds`). It returns noop when the session is already
// there — a repeated upload-url, a repeated completion with the same
// duration, failing a failed session — so that retries are harmless, and a
// CodeConflict *Error when the move is not allowed. Both stores apply it.
func (s Session) Transition(to Status, seconds int64) (noop bool, err error) {
	switch to {
	case StatusUploading:
		switch s.Status {
		case StatusUploading:
			return true, nil
		case StatusCompleted, StatusFailed:
			return false, Errorf(CodeConflict, "session %s is %s; it no longer accepts an upload", s.ID, s.Status)
		}
	case StatusCompleted:
		switch s.Status {
		case StatusCompleted:
			if s.DurationSeconds != nil && *s.DurationSeconds == seconds {
				return true, nil
			}
			return false, Errorf(CodeConflict, "session %s is already completed with another duration", s.ID)
		case StatusFailed:
			return false, Errorf(CodeConflict, "session %s has failed; it cannot be completed", s.ID)
		}
	case StatusFailed:
		switch s.Status {
		case StatusFailed:
			return true, nil
		case StatusCompleted:
			return false, Errorf(CodeConflict, "session %s is completed; it cannot be failed", s.ID)
		}
	default:
		return false, Errorf(CodeConflict, "session %s cannot move to %q", s.ID, to)
	}
	return false, nil
}
