#!/usr/bin/env bash
# Set up (idempotent), build, and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export GATI_QUIET=1
cargo fmt --all -- --check
bash scripts/gen-thrift.sh --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
