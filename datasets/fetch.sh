#!/usr/bin/env bash
# Download datasets from their official origins into datasets/ (needs internet access; tests never
# call this). Usage: datasets/fetch.sh cifar10|cifar100|cars|lfw ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
get() { curl -fL --retry 3 -o "$2" "$1"; }
for what in "${@:-cifar10}"; do
  case "$what" in
    cifar10)
      get https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz cifar-10-binary.tar.gz
      tar xzf cifar-10-binary.tar.gz && rm cifar-10-binary.tar.gz ;;   # -> cifar-10-batches-bin/
    cifar100)
      get https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz cifar-100-binary.tar.gz
      tar xzf cifar-100-binary.tar.gz && rm cifar-100-binary.tar.gz ;; # -> cifar-100-binary/
    cars)
      echo "Stanford Cars: the original site is gone; see datasets/README.md for the mirror to use." >&2; exit 2 ;;
    lfw)
      mkdir -p lfw
      get http://vis-www.cs.umass.edu/lfw/lfw.tgz lfw/lfw.tgz
      tar xzf lfw/lfw.tgz -C lfw && rm lfw/lfw.tgz ;;
    *) echo "unknown dataset '$what' (cifar10, cifar100, cars, lfw)" >&2; exit 2 ;;
  esac
done
