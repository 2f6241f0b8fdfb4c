# syntax=docker/dockerfile:1
# downsync's container image: the binary on distroless, plus the built-in rule plugins.
#
#   docker build -t downsync:dev .
#
# The build context is the workspace root (see .dockerignore). The built-in plugins land in
# /usr/share/downsync/plugins as <name>.wasm; examples/deploy mounts its plugins from a
# ConfigMap at /plugins instead, so these are there to copy out:
#
#   docker create --name ds downsync:dev && docker cp ds:/usr/share/downsync/plugins . && docker rm ds

# Rust >= 1.90 (the workspace's rust-version); the current stable.
FROM rust:1-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# The cache mounts keep the registry and compiled dependencies between builds; the artifacts are
# copied out of target/ because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    cargo build --release --locked -p downsync; \
    cargo build --locked --target wasm32-wasip2 --profile plugin \
        -p downsync-plugin-service \
        -p downsync-plugin-persistent-volume \
        -p downsync-plugin-immutable-config \
        -p downsync-plugin-service-account; \
    mkdir -p /out/plugins; \
    cp target/release/downsync /out/downsync; \
    for p in service persistent_volume immutable_config service_account; do \
        cp "target/wasm32-wasip2/plugin/downsync_plugin_${p}.wasm" "/out/plugins/$(echo "$p" | tr _ -).wasm"; \
    done

# glibc and libgcc (the binary links them dynamically); TLS is rustls, so no OpenSSL.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/downsync /usr/local/bin/downsync
COPY --from=build /out/plugins/ /usr/share/downsync/plugins/
# The numeric id of `nonroot`, so Kubernetes' runAsNonRoot can check it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/downsync"]
CMD ["run", "--config", "/etc/downsync/config.yaml"]
