# One image for `pgrouter proxy` and `pgrouter agent`.
# Build: docker build -t pgrouter .
# The statement classifier links PostgreSQL's parser through cgo, so the
# binary is built with cgo and linked statically (netgo/osusergo keep glibc's
# NSS out of it); the final image holds nothing but the binary.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -trimpath -tags netgo,osusergo \
      -ldflags "-s -w -X main.version=${VERSION} -linkmode external -extldflags -static" \
      -o /out/pgrouter ./cmd/pgrouter

# The agent needs PostgreSQL's binaries beside it; run it in the
# PostgreSQL image of your operator, or derive from postgres:15 and copy
# /out/pgrouter in. The proxy needs nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pgrouter /usr/local/bin/pgrouter
USER 65532:65532
EXPOSE 6432 6433 6434 8432
ENTRYPOINT ["/usr/local/bin/pgrouter"]
CMD ["proxy", "--help"]
