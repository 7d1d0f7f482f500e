# Both images from one build, for the platform the build runs on (amd64,
# arm64, ...), or for another with buildx (--platform):
#   docker build --target controller -t REGISTRY/ferrolb/controller:0.1.0 .
#   docker build --target speaker    -t REGISTRY/ferrolb/speaker:0.1.0 .
# then push both and set REGISTRY in deploy/kustomization.yaml (images:),
# the one place that names them (docs/install.md).
#
# The test suite lays out these final stages' files as the Pods' root
# filesystems (tests/src/image.rs reads the COPY, USER, ENTRYPOINT and CMD
# lines below): keep the final stages to those instructions.
# The binaries are static (musl) and need nothing else: both images are
# distroless/static. The speaker runs as root with only the capabilities the
# DaemonSet grants (NET_RAW, NET_ADMIN, NET_BIND_SERVICE); its init container
# runs `ferrolb-speaker prepare-node` to set the ARP sysctls.

ARG RUST_VERSION=1.89
FROM rust:${RUST_VERSION}-bookworm AS build
# The musl target of the machine building (x86_64, aarch64, ...): static binaries.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools clang libbpf-dev \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
# The kernel data path's BPF program must be in the shipped speaker.
ENV FERROLB_REQUIRE_BPF=1
RUN target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" \
      -p ferrolb-controller -p ferrolb-speaker --bins \
 && cp "target/$target/release/ferrolb-controller" \
       "target/$target/release/ferrolb-speaker" /usr/local/bin/

FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /usr/local/bin/ferrolb-controller /ferrolb-controller
USER 65532:65532
EXPOSE 7472
ENTRYPOINT ["/ferrolb-controller"]
CMD ["run"]

FROM gcr.io/distroless/static-debian12 AS speaker
COPY --from=build /usr/local/bin/ferrolb-speaker /ferrolb-speaker
EXPOSE 7474 7947/udp 179
ENTRYPOINT ["/ferrolb-speaker"]
CMD ["kubernetes"]
