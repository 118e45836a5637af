#!/usr/bin/env bash
# Set up, build and run the main job on the bundled data: ResNet-56's accuracy and latency
# profile on the CIFAR-10 test split (data and weights from ../shared/ or datasets/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --release -p gati-cli
exec target/release/gati eval --model resnet56 --split test "$@"
