# syntax=docker/dockerfile:1
# Tally's image: a static binary on distroless, running as nonroot.
# Build with `make docker` (needs a Docker engine); docker-compose.yml runs it
# beside Postgres and Redis.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, on their own layer, so that editing code does not download
# them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO off: the embedded SQL store is pure Go, and a static binary needs no
# libc in the runtime image. -trimpath keeps build paths out of the binary.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/tally ./cmd/tally

# distroless/static has CA certificates, tzdata and a nonroot user, and no
# shell: the compose healthcheck runs `/tally healthcheck` instead of curl.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tally /tally
# The embedded store's default ./data must be writable by nonroot.
WORKDIR /home/nonroot
# Inside a container the service must listen beyond loopback to be reached.
ENV TALLY_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
USER nonroot
ENTRYPOINT ["/tally"]
CMD ["serve"]
