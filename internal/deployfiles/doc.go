// Package deployfiles holds the tests of the repository's deployment files
// (docker-compose.yml, Dockerfile). No Docker engine runs where Tally is
// developed, so the compose file is loaded with compose-go — the library
// Docker Compose itself uses to parse, interpolate and apply profiles — and
// each Tally service's environment is run through config.Load, so that a
// renamed variable or a fixed password cannot slip into the files unseen.
package deployfiles
