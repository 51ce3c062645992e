# syntax=docker/dockerfile:1
# One image per service from the same file:
#   docker build --build-arg SERVICE=orders   -t invoicing/orders .
#   docker build --build-arg SERVICE=invoices -t invoicing/invoices .
# The binary is static (no libc), so the runtime image is distroless
# static: no shell, no package manager, user nonroot (65532). The
# HEALTHCHECK runs the binary's own healthcheck command (GET /health/live
# on its PORT), since there is no curl.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG SERVICE
ARG TARGETOS=linux
ARG TARGETARCH=amd64
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    test -n "${SERVICE}" && \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags='-s -w' -o /out/service ./functions/${SERVICE}/cmd/${SERVICE}

FROM gcr.io/distroless/static-debian12:nonroot
ARG SERVICE
LABEL org.opencontainers.image.title="invoicing-${SERVICE}"
COPY --from=build /out/service /service
USER nonroot:nonroot
# The runtime drains in-flight requests and messages on SIGTERM, within
# SHUTDOWN_TIMEOUT (20 s by default): give it longer before SIGKILL.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["/service", "healthcheck"]
ENTRYPOINT ["/service"]
CMD ["serve"]
