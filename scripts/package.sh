#!/usr/bin/env bash
# A relocatable release: the gati binary (its rpath looks in $ORIGIN/../lib first) with exactly the
# shared libraries it loads from outside the system (libtorch, libc10, libgomp and what they pull
# in), the project's models, the IDL, the Python client, deploy files and docs. Unpacked anywhere,
# `bin/gati` runs with no virtualenv and no LD_LIBRARY_PATH.
#   scripts/package.sh                      build in release mode, write dist/gati-VERSION-ARCH.tar.zst
#                                           (.tar.gz where zstd is not installed)
#   scripts/package.sh --bin PATH --out DIR package an existing binary (tests) into DIR
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=""; OUT=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "package: unknown argument '$1' (--bin PATH, --out DIR)" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then
  cargo build --release -p gati-cli
  BIN=target/release/gati
fi
[ -x "$BIN" ] || { echo "package: no executable at $BIN" >&2; exit 1; }
readelf -d "$BIN" | grep -q 'ORIGIN/../lib' || { echo "package: $BIN has no \$ORIGIN/../lib rpath; run scripts/setup.sh and rebuild" >&2; exit 1; }
VERSION="$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)"
NAME="gati-$VERSION-$(uname -m)"
STAGE="$(mktemp -d)/$NAME"; trap 'rm -rf "$(dirname "$STAGE")"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib"
cp "$BIN" "$STAGE/bin/gati"
# Every library the dynamic linker resolves outside the system's own folders, as loaded (ldd
# follows libtorch's own rpath to the CUDA runtime it links).
ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | grep -Ev '^/(usr/)?lib(64)?/' | while read -r lib; do
  cp -L "$lib" "$STAGE/lib/"
done
[ -f "$STAGE/lib/libtorch_cpu.so" ] || { echo "package: libtorch_cpu.so not among $BIN's libraries" >&2; exit 1; }
cp -r models thrift deploy docs README.md "$STAGE/"
mkdir -p "$STAGE/clients" && cp -r clients/python "$STAGE/clients/"
mkdir -p "$STAGE/scripts" && cp scripts/make-certs.sh "$STAGE/scripts/"
find "$STAGE/clients" -name __pycache__ -prune -exec rm -rf {} +
# Marks the folder as a release: the binary finds models/ and docs beside it.
printf 'gati %s %s\n' "$VERSION" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" > "$STAGE/GATI_RELEASE"
mkdir -p "$OUT"
if command -v zstd >/dev/null; then
  TARBALL="$OUT/$NAME.tar.zst"
  tar -C "$(dirname "$STAGE")" -cf - "$NAME" | zstd -q -T0 -3 -f -o "$TARBALL"
else
  TARBALL="$OUT/$NAME.tar.gz"
  tar -C "$(dirname "$STAGE")" -czf "$TARBALL" "$NAME"
fi
echo "package: $TARBALL ($(du -h "$TARBALL" | cut -f1); $(ls "$STAGE/lib" | wc -l) libraries)" >&2
echo "$TARBALL"
