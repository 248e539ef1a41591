package transport

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
)

// AdminCredential is one named admin bearer token. The name is who the
// audit trail says made a change (docs/contract.md, "Audit trail").
type AdminCredential struct {
	Name  string
	Token string
}

// AdminTokenName is the name of the credential given as Options.AdminToken
// (TALLY_ADMIN_TOKEN).
const AdminTokenName = "admin"

// admins recognizes the admin credentials. Tokens are kept as SHA-256
// digests and a presented token is compared with every one of them, in
// constant time and without stopping at a match, so that the time taken
// tells neither a token's bytes, its length, nor which credential matched.
type admins struct {
	names   []string
	digests [][sha256.Size]byte
}

func newAdmins(creds []AdminCredential) (*admins, error) {
	a := &admins{}
	seen := map[string]bool{}
	seenToken := map[[sha256.Size]byte]bool{}
	for _, c := range creds {
		switch {
		case c.Name == "":
			return nil, errors.New("transport: every admin credential needs a name")
		case c.Token == "":
			// An empty token would match an empty bearer credential.
			return nil, fmt.Errorf("transport: admin credential %q has an empty token", c.Name)
		case seen[c.Name]:
			return nil, fmt.Errorf("transport: two admin credentials are named %q", c.Name)
		}
		d := sha256.Sum256([]byte(c.Token))
		if seenToken[d] {
			// Two names for one token: the trail could not tell who acted.
			return nil, fmt.Errorf("transport: admin credential %q has the token of another one", c.Name)
		}
		seen[c.Name], seenToken[d] = true, true
		a.names = append(a.names, c.Name)
		a.digests = append(a.digests, d)
	}
	if len(a.names) == 0 {
		return nil, errors.New("transport: AdminToken or AdminTokens is required")
	}
	return a, nil
}

// lookup returns the name of the credential token is, or false.
func (a *admins) lookup(token string) (string, bool) {
	h := sha256.Sum256([]byte(token))
	match := -1
	for i := range a.digests {
		eq := subtle.ConstantTimeCompare(h[:], a.digests[i][:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return "", false
	}
	return a.names[match], true
}
