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
# 4443: gRPC over TLS 1.3 for sensors. 8080: the HTTP API, in plain HTTP,
# so publish it only on loopback or behind a TLS proxy.
EXPOSE 4443 8080

LABEL org.opencontainers.image.title="picket-server" \
      org.opencontainers.image.description="Picket platform: enrollment, ingest, storage and search" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["/picket-server"]
# Add --advertise-url https://HOST:4443 with the address sensors use; the
# installation keys this server creates carry it.
CMD ["serve", "--data", "/data", "--grpc-listen", "0.0.0.0:4443", "--http-listen", "0.0.0.0:8080"]
