# gpu-cloud: one image for every component (controller, agent, webhook, migrate) and the
# kubectl plugin. Build: docker build -t gpu-cloud .
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin gpu-cloud --bin kubectl-gpu

# distroless/cc: glibc and libgcc only, no shell, runs as uid 65532 (nonroot). NVML
# (libnvidia-ml) is injected at run time by the NVIDIA container toolkit on GPU nodes.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/gpu-cloud /usr/local/bin/gpu-cloud
COPY --from=build /src/target/release/kubectl-gpu /usr/local/bin/kubectl-gpu
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gpu-cloud"]
