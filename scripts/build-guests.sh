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
ls -l target/guests/*.wasm
