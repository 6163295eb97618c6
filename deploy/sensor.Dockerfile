# Picket sensor image: one static executable and nothing else.
#
# Built by scripts/build-images.sh, whose staged context holds the static
# binary from scripts/build-static.sh and an empty rootfs/ tree with /tmp.
# FROM scratch pulls nothing, so the build works without a registry.
#
# Run it as the deployment contract does:
#   docker run --privileged --net=host -v /:/rootfs:ro --env HOST_FS=/rootfs \
#     -v /var/run/docker/netns:/netns:ro --env NET_NS=/netns \
#     --env LC_INSTALLATION_KEY=<key> picket/sensor:latest
FROM scratch

COPY picket-sensor /picket-sensor
# /tmp with mode 1777, because the sensor and its libraries may create
# temporary files and scratch has no /tmp.
COPY rootfs/ /

# `-d -` reads the installation key from LC_INSTALLATION_KEY; the working
# directory is where the sensor keeps its local state.
WORKDIR /lc
ENV HOST_FS=/rootfs \
    NET_NS=/netns

LABEL org.opencontainers.image.title="picket-sensor" \
      org.opencontainers.image.description="Picket host sensor for Linux container hosts" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["/picket-sensor"]
CMD ["-d", "-"]
