package verify

import (
	"github.com/tally-dev/tally/config"
)

// FromConfig returns the Options that audit the deployment cfg describes:
// its store (Postgres, or the embedded store in its data directory) and its
// Redis, with the service's credentials and TLS, unless that is the
// in-process one of embedded mode, which keeps nothing once the service
// stops. Call release when done, to close the Redis client.
func FromConfig(cfg config.Config) (opts Options, release func(), err error) {
	opts = Options{
		DatabaseURL:    cfg.DatabaseURL,
		DataDir:        cfg.DataDir,
		RedisKeyPrefix: cfg.RedisKeyPrefix,
	}
	release = func() {}
	if cfg.EmbeddedRedis() {
		opts.RedisSkipped = "the service runs an in-process Redis (TALLY_REDIS_URL and TALLY_REDIS_SENTINELS unset), which keeps nothing once it stops: nothing to check"
	} else if opts.Redis, err = cfg.NewRedisClient(); err != nil {
		return Options{}, nil, err
	}
	if opts.Redis != nil {
		client := opts.Redis
		release = func() { _ = client.Close() }
	}
	return opts, release, nil
}
