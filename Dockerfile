# Both images from one build:
#   docker build --target controller -t ferrolb/controller:0.1.0 .
#   docker build --target speaker    -t ferrolb/speaker:0.1.0 .
# The binaries are static (musl) and need nothing else: both images are
# distroless/static. The speaker runs as root with only the capabilities the
# DaemonSet grants (NET_RAW, NET_ADMIN, NET_BIND_SERVICE); its init container
# runs `ferrolb-speaker prepare-node` to set the ARP sysctls.

ARG RUST_VERSION=1.89
FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p ferrolb-controller -p ferrolb-speaker --bins \
 && cp target/x86_64-unknown-linux-musl/release/ferrolb-controller \
       target/x86_64-unknown-linux-musl/release/ferrolb-speaker /usr/local/bin/

FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /usr/local/bin/ferrolb-controller /ferrolb-controller
USER 65532:65532
EXPOSE 7472
ENTRYPOINT ["/ferrolb-controller"]
CMD ["run"]

FROM gcr.io/distroless/static-debian12 AS speaker
COPY --from=build /usr/local/bin/ferrolb-speaker /ferrolb-speaker
EXPOSE 7473 7946/udp 179
ENTRYPOINT ["/ferrolb-speaker"]
CMD ["kubernetes"]
