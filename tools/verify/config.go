package verify

import (
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/config"
)

// FromConfig returns the Options that audit the deployment cfg describes:
// its store (Postgres, or the embedded store in its data directory) and its
// Redis, unless that is the in-process one of embedded mode, which keeps
// nothing once the service stops. Call release when done, to close the
// Redis client.
func FromConfig(cfg config.Config) (opts Options, release func(), err error) {
	opts = Options{
		DatabaseURL:    cfg.DatabaseURL,
		DataDir:        cfg.DataDir,
		RedisKeyPrefix: cfg.RedisKeyPrefix,
	}
	release = func() {}
	switch {
	case len(cfg.RedisSentinels) > 0:
		opts.Redis = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:    cfg.RedisMaster,
			SentinelAddrs: cfg.RedisSentinels,
		})
	case cfg.RedisURL != "":
		ro, err := redis.ParseURL(cfg.RedisURL)
		if err != nil {
			return Options{}, nil, fmt.Errorf("TALLY_REDIS_URL: %w", err)
		}
		opts.Redis = redis.NewClient(ro)
	default:
		opts.RedisSkipped = "the service runs an in-process Redis (TALLY_REDIS_URL and TALLY_REDIS_SENTINELS unset), which keeps nothing once it stops: nothing to check"
	}
	if opts.Redis != nil {
		client := opts.Redis
		release = func() { _ = client.Close() }
	}
	return opts, release, nil
}
