package domain

import (
	"errors"
	"testing"
	"time"
)

var nov = Period{Start: utc(2026, time.November, 1, 0, 0, 0), End: utc(2026, time.December, 1, 0, 0, 0)}

func mustPlan(t *testing.T, name string) Plan {
	t.Helper()
	p, ok := DefaultCatalog().Plan(name)
	if !ok {
		t.Fatalf("no plan %q", name)
	}
	return p
}

func TestAdmitSessionLimit(t *testing.T) {
	free := mustPlan(t, "free")
	if err := Admit(free, Usage{Sessions: 9}, nov); err != nil {
		t.Fatalf("9 of 10 used: %v", err)
	}
	err := Admit(free, Usage{Sessions: 10}, nov)
	var le *LimitExceededError
	if !errors.As(err, &le) {
		t.Fatalf("10 of 10 used: got %v, want a limit error", err)
	}
	if le.Code != CodeSessionLimit || le.Usage != 10 || le.Limit != 10 || le.Plan != "free" || le.Period != nov {
		t.Fatalf("limit error %+v", le)
	}
	if got := le.Message(); got != "Session limit exceeded: 10" {
		t.Fatalf("message %q", got)
	}
	if ErrorCode(err) != CodeSessionLimit {
		t.Fatalf("ErrorCode = %s", ErrorCode(err))
	}
}

func TestAdmitMinutesLimit(t *testing.T) {
	free := mustPlan(t, "free") // 120 minutes
	if err := Admit(free, Usage{Sessions: 1, Seconds: 120*60 - 1}, nov); err != nil {
		t.Fatalf("one second under: %v", err)
	}
	err := Admit(free, Usage{Sessions: 1, Seconds: 120*60 + 59}, nov)
	var le *LimitExceededError
	if !errors.As(err, &le) || le.Code != CodeTranscriptionLimit {
		t.Fatalf("at the limit: got %v", err)
	}
	if le.Usage != 120 || le.Limit != 120 || le.Message() != "Total minutes limit exceeded: 120" {
		t.Fatalf("limit error %+v %q", le, le.Message())
	}
}

func TestAdmitSessionLimitReportedFirst(t *testing.T) {
	err := Admit(mustPlan(t, "free"), Usage{Sessions: 10, Seconds: 1e6}, nov)
	if ErrorCode(err) != CodeSessionLimit {
		t.Fatalf("got %v, want the session limit first", err)
	}
}

func TestAdmitUnlimitedAndNone(t *testing.T) {
	ent := mustPlan(t, "enterprise")
	if err := Admit(ent, Usage{Sessions: 1 << 40, Seconds: 1 << 40}, nov); err != nil {
		t.Fatalf("enterprise: %v", err)
	}
	none := Plan{Name: "none", MaxSessions: 0, MaxTotalMinutes: Unlimited, MaxFileSizeMB: 0}
	if ErrorCode(Admit(none, Usage{}, nov)) != CodeSessionLimit {
		t.Fatal("max_sessions 0 must admit nothing")
	}
	noMinutes := Plan{Name: "nominutes", MaxSessions: Unlimited, MaxTotalMinutes: 0}
	if ErrorCode(Admit(noMinutes, Usage{}, nov)) != CodeTranscriptionLimit {
		t.Fatal("max_total_minutes 0 must admit nothing")
	}
	if r := Unlimited.Remaining(5); r != nil {
		t.Fatalf("unlimited remaining = %d, want nil", *r)
	}
	if r := Limit(10).Remaining(12); r == nil || *r != 0 {
		t.Fatalf("over-used remaining = %v, want 0", r)
	}
}

func TestCheckFileSize(t *testing.T) {
	free := mustPlan(t, "free") // 60 MB
	if err := CheckFileSize(free, 60, nov); err != nil {
		t.Fatalf("exactly the limit: %v", err)
	}
	err := CheckFileSize(free, 60.2, nov)
	var le *LimitExceededError
	if !errors.As(err, &le) || le.Code != CodeFileSizeLimit || le.Usage != 61 || le.Limit != 60 {
		t.Fatalf("60.2 MB: %v", err)
	}
	if err := CheckFileSize(mustPlan(t, "enterprise"), 500, nov); err != nil {
		t.Fatal(err)
	}
}

func TestCatalogValidation(t *testing.T) {
	if _, err := NewCatalog(Plan{Name: "pro", MaxSessions: -1}); err == nil {
		t.Fatal("a catalog without the free plan must be refused")
	}
	if _, err := NewCatalog(Plan{Name: "free", MaxSessions: -2}); err == nil {
		t.Fatal("a limit of -2 must be refused")
	}
	if _, err := NewCatalog(Plan{Name: "free"}, Plan{Name: "free"}); err == nil {
		t.Fatal("duplicate plans must be refused")
	}
	names := DefaultCatalog().Names()
	if len(names) != 4 || names[0] != "enterprise" || names[3] != "student" {
		t.Fatalf("names %v", names)
	}
}

func TestValidateNewSession(t *testing.T) {
	providers := []string{"google", "assemblyai"}
	ok := NewSession{Title: "Weekly sync", Language: "en-US", STTProvider: "google"}
	if err := ok.Validate(providers); err != nil {
		t.Fatal(err)
	}
	for _, lang := range []string{"auto", "en", "zh-Hans-CN", "de-CH-1996", "es-419"} {
		if err := (NewSession{Title: "t", Language: lang, STTProvider: "google"}).Validate(providers); err != nil {
			t.Errorf("language %q refused: %v", lang, err)
		}
	}
	bad := NewSession{Title: "", Language: "english!", STTProvider: "whisper"}
	err := bad.Validate(providers)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeValidation || len(e.Fields) != 3 {
		t.Fatalf("got %v, want 3 invalid fields", err)
	}
	long := make([]byte, 256)
	for i := range long {
		long[i] = 'a'
	}
	if err := (NewSession{Title: string(long), Language: "en", STTProvider: "google"}).Validate(providers); err == nil {
		t.Fatal("256-character title accepted")
	}
	if err := ValidateDuration(86401); err == nil {
		t.Fatal("duration over a day accepted")
	}
	if err := ValidateDuration(-1); err == nil {
		t.Fatal("negative duration accepted")
	}
	if err := ValidateFileSize(0); err == nil {
		t.Fatal("zero file size accepted")
	}
}

func TestValidUserID(t *testing.T) {
	for _, id := range []string{"a", "user@example.com", "org:42.u_1-x"} {
		if !ValidUserID(id) {
			t.Errorf("%q refused", id)
		}
	}
	long := make([]byte, 129)
	for i := range long {
		long[i] = 'x'
	}
	for _, id := range []string{"", "a b", "ü", "a/b", string(long)} {
		if ValidUserID(id) {
			t.Errorf("%q accepted", id)
		}
	}
}

func TestErrorCodeOfUnknownErrorIsInternal(t *testing.T) {
	if got := ErrorCode(errors.New("boom")); got != CodeInternal {
		t.Fatalf("got %s", got)
	}
	if got := ErrorMessage(errors.New("secret detail")); got != "internal error" {
		t.Fatalf("leaked %q", got)
	}
	wrapped := errors.Join(errors.New("ctx"), Unavailable("database", errors.New("dial")))
	if ErrorCode(wrapped) != CodeUnavailable {
		t.Fatalf("wrapped unavailable: %s", ErrorCode(wrapped))
	}
}

func TestSessionTransitions(t *testing.T) {
	secs := int64(60)
	cases := []struct {
		from     Status
		duration *int64
		to       Status
		seconds  int64
		noop     bool
		conflict bool
	}{
		{StatusCreated, nil, StatusUploading, 0, false, false},
		{StatusUploading, nil, StatusUploading, 0, true, false},
		{StatusCompleted, &secs, StatusUploading, 0, false, true},
		{StatusFailed, nil, StatusUploading, 0, false, true},
		{StatusCreated, nil, StatusCompleted, 60, false, false},
		{StatusUploading, nil, StatusCompleted, 60, false, false},
		{StatusCompleted, &secs, StatusCompleted, 60, true, false},
		{StatusCompleted, &secs, StatusCompleted, 61, false, true},
		{StatusFailed, nil, StatusCompleted, 60, false, true},
		{StatusCreated, nil, StatusFailed, 0, false, false},
		{StatusFailed, nil, StatusFailed, 0, true, false},
		{StatusCompleted, &secs, StatusFailed, 0, false, true},
		{StatusCreated, nil, StatusCreated, 0, false, true},
	}
	for _, c := range cases {
		s := Session{ID: "s1", Status: c.from, DurationSeconds: c.duration}
		noop, err := s.Transition(c.to, c.seconds)
		if noop != c.noop || (err != nil) != c.conflict || (err != nil && ErrorCode(err) != CodeConflict) {
			t.Errorf("%s → %s (%d s): noop=%v err=%v; want noop=%v conflict=%v", c.from, c.to, c.seconds, noop, err, c.noop, c.conflict)
		}
	}
}
