# syntax=docker/dockerfile:1
# gati in a container: the build stage sets up libtorch (the PyPI wheel), builds and packages the
# release (scripts/package.sh); the runtime stage holds only the unpacked release.
#   docker build -t gati .
#   docker run --rm gati --help
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv zstd \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN bash scripts/setup.sh \
 && bash scripts/package.sh --out /dist \
 && mkdir -p /opt/gati \
 && tar -xf /dist/gati-*.tar.* -C /opt/gati --strip-components=1

FROM debian:bookworm-slim
# libstdc++ and libgomp's system dependencies only; libtorch comes with the release.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/gati /opt/gati
ENV PATH=/opt/gati/bin:$PATH GATI_HOME=/tmp/gati
USER 65532:65532
# Public Thrift, selector, base worker, cache worker; metrics 9100-9102 (see deploy/k8s/base/cluster.json).
EXPOSE 7000 7001 7010 7020 9100 9101 9102
ENTRYPOINT ["gati"]
CMD ["--help"]
