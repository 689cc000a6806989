# The stowage image: one static binary (operator, in-Job runner and CLI) and a CA bundle
# on an empty base. No compiler runs in the build: the binary is built first.
#
# Build context: a directory holding
#   stowage                 the static binary (cargo build --release --bin stowage puts it
#                           at target/x86_64-unknown-linux-gnu/release/stowage)
#   ca-certificates.crt     PEM roots for https:// targets (Debian's ca-certificates)
# deploy/image.sh prepares that directory and runs `buildah bud`; with Docker:
#   deploy/image.sh --context-only /tmp/ctx && docker build -t stowage /tmp/ctx
#
# The binary is statically linked (.cargo/config.toml: crt-static) and carries the tz
# database, so `scratch` is enough. The same image is the runner of backup Jobs; for tool
# plugins (pg_dump, ...) an init container copies /usr/local/bin/stowage into the tool's image.
FROM scratch

LABEL org.opencontainers.image.title="stowage" \
      org.opencontainers.image.description="Kubernetes backup operator with typed, schema-validated plugins" \
      org.opencontainers.image.source="https://github.com/stowage-dev/stowage" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --chmod=0644 ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chmod=0755 stowage /usr/local/bin/stowage

# Non-root, the uid/gid the chart's securityContext sets ("nonroot" of distroless).
USER 65532:65532

ENTRYPOINT ["/usr/local/bin/stowage"]
CMD ["controller"]
