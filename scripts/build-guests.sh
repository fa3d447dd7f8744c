#!/usr/bin/env bash
# Builds the example guest modules in examples/ and copies them to target/guests/ for use with
# `veil job submit` (the `veil` binary also embeds them for its demo).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
(cd examples && CARGO_ENCODED_RUSTFLAGS="-Clink-arg=-zstack-size=16384" \
  cargo build --release --offline --target wasm32-unknown-unknown --target-dir "$target_dir/guest-target")
mkdir -p target/guests
for g in income_by_education people_by_age_region column_probe trivial leaky median_income; do
  cp "$target_dir/guest-target/wasm32-unknown-unknown/release/$g.wasm" target/guests/
done
# C guests (examples/c): core modules built with clang's wasm32 target and wasm-ld, no libc.
# scripts/test.sh installs clang and lld; elsewhere, install them (Debian: clang lld).
if ! command -v clang >/dev/null 2>&1 || ! command -v wasm-ld >/dev/null 2>&1; then
  echo "build-guests: clang and wasm-ld are needed for the C guests (Debian packages clang, lld)" >&2
  exit 1
fi
for src in examples/c/*.c; do
  name="$(basename "$src" .c)"
  clang --target=wasm32-unknown-unknown -O2 -nostdlib -Wall -Werror \
    -Wl,--no-entry -Wl,-z,stack-size=16384 -o "target/guests/${name}_c.wasm" "$src"
done
ls -l target/guests/*.wasm
