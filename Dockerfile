# syntax=docker/dockerfile:1
# One image for `pgrouter proxy` and `pgrouter agent`.
# Build: docker build -t pgrouter .
# The statement classifier links PostgreSQL's parser through cgo, so the
# binary is built with cgo and linked statically (netgo/osusergo keep glibc's
# NSS out of it); the final image holds nothing but the binary, CA
# certificates and tzdata (distroless/static), and runs as a non-root user.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=1 go build -trimpath -tags netgo,osusergo \
      -ldflags "-s -w -X main.version=${VERSION} -linkmode external -extldflags -static" \
      -o /out/pgrouter ./cmd/pgrouter && \
    /out/pgrouter version

# The proxy needs nothing else. The agent runs PostgreSQL's own binaries,
# so it runs in the PostgreSQL image: an init container of this image
# copies the binary into a shared volume with `pgrouter install-binary DIR`
# (there is no shell here), and the PostgreSQL container starts it
# (configs/kubernetes/postgres-agent.yaml).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pgrouter /usr/local/bin/pgrouter
USER 65532:65532
# 6432-6434: proxy listeners (single endpoint, rw, ro); 8432: proxy admin;
# 8008: agent API.
EXPOSE 6432 6433 6434 8432 8008
ENTRYPOINT ["/usr/local/bin/pgrouter"]
CMD ["proxy", "--help"]
