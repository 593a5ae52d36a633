# syntax=docker/dockerfile:1
# globaldns and dnsctl on distroless: glibc and libgcc only, no shell, runs as non-root.
#
#   docker build -t globaldns:0.1.0 .
#
# The builder is Debian 12 like the runtime image, so the binaries find the same glibc.

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds; the binaries are
# copied out because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin globaldns --bin dnsctl \
    && install -D -m 0755 target/release/globaldns /out/globaldns \
    && install -D -m 0755 target/release/dnsctl /out/dnsctl

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/globaldns /out/dnsctl /usr/local/bin/
# The image's `nonroot` user, by number so that Kubernetes can check runAsNonRoot.
USER 65532:65532
# DNS on an unprivileged port (the Kubernetes Service maps 53 to it); metrics and health on 9090.
EXPOSE 5353/udp 5353/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/globaldns"]
# No cluster and no ServiceEntry files by default; the Deployment passes its own arguments.
CMD ["--listen", "0.0.0.0:5353", "--zones", "/etc/globaldns/zones"]
