#!/usr/bin/env bash
# Set up (idempotent), build, and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The monitoring test runs the real Prometheus (Debian's package); install it where we may.
if ! command -v prometheus >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
    >/dev/null 2>&1 || echo "test: could not install prometheus" >&2
fi
export GATI_QUIET=1
cargo fmt --all -- --check
bash scripts/gen-thrift.sh --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
if command -v kubectl >/dev/null; then
  .venv/bin/python scripts/check-deploy.py --gati target/debug/gati
else
  echo "test: no kubectl: deploy/ manifests not checked" >&2
fi
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  promtool check rules deploy/prometheus/rules.yml >/dev/null
  promtool check config deploy/prometheus/prometheus.yml >/dev/null
  # --include-ignored: the one ignored test is the Prometheus one.
  cargo test --workspace -- --test-threads=2 --include-ignored
else
  echo "test: no prometheus package: the monitoring test (serving.rs, ignored) does not run" >&2
  cargo test --workspace -- --test-threads=2
fi
