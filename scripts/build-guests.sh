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
# Python guests (examples/python): components built by componentize-py for the `map-block` world,
# with the SDK in crates/veil-guest/python. componentize-py lives in a venv beside the build.
componentize_version=0.25.1
venv="$target_dir/py-tools"
if [ ! -x "$venv/bin/componentize-py" ] || \
   ! "$venv/bin/pip" show componentize-py 2>/dev/null | grep -q "^Version: $componentize_version$"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$componentize_version"
fi
for app in examples/python/*/; do
  name="$(basename "$app")"
  "$venv/bin/componentize-py" -d wit -w map-block componentize app \
    -p "$app" -p crates/veil-guest/python -o "target/guests/${name}_py.wasm" >/dev/null
done
ls -l target/guests/*.wasm
