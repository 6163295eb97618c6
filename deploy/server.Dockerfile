# Picket server image: one static executable with its embedded store.
#
# Built by scripts/build-images.sh from a staged context that holds the
# static binary from scripts/build-static.sh and an empty rootfs/ tree with
# /tmp and /data. FROM scratch pulls nothing.
#
# State (SQLite store, TLS certificate and key) lives in /data; mount a
# volume there so that installation keys stay valid across restarts,
# because each key pins the certificate kept in that directory.
FROM scratch

COPY picket-server /picket-server
COPY rootfs/ /

WORKDIR /data

LABEL org.opencontainers.image.title="picket-server" \
      org.opencontainers.image.description="Picket platform: enrollment, ingest, storage and search" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["/picket-server"]
CMD ["serve", "--data", "/data"]
