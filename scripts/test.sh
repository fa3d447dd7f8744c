#!/usr/bin/env bash
# Builds the example guest modules and runs Veil's whole test suite.
# Installs what rustup does not provide by itself; safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# A C compiler builds the bundled SQLite; python3 edits a store in one tamper test; clang and
# wasm-ld build the C example guests.
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v wasm-ld >/dev/null 2>&1 || missing+=(lld)
# python3 -m venv holds componentize-py, which builds the Python example guests.
python3 -m venv --help >/dev/null 2>&1 && python3 -c "import ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
# Headless Chromium and its driver run the web console's browser tests (tests/console).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# rust-toolchain.toml pins the toolchain and lists the wasm target; make sure the target is there
# even when the toolchain was installed before the file listed it.
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true

scripts/build-guests.sh

# schemathesis checks the HTTP API against its OpenAPI document (tests/integration/api_schema.rs);
# it lives in a venv beside the build.
schemathesis_version=4.32.5
target_dir="${CARGO_TARGET_DIR:-target}"
api_tools="$target_dir/api-tools"
if ! "$api_tools/bin/schemathesis" --version 2>/dev/null | grep -q "version $schemathesis_version$"; then
  python3 -m venv "$api_tools"
  "$api_tools/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
export VEIL_SCHEMATHESIS="$api_tools/bin/schemathesis"

# The Python client's tests and the console's browser tests (tests/integration/clients.rs) run
# pytest from a venv holding clients/python/requirements-test.txt; reinstalled when that changes.
client_tools="$target_dir/client-tools"
requirements=clients/python/requirements-test.txt
if ! cmp -s "$requirements" "$client_tools/requirements-test.txt"; then
  python3 -m venv "$client_tools"
  "$client_tools/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$client_tools/requirements-test.txt"
fi
export VEIL_CLIENT_TOOLS="$client_tools"

# The integration tests drive the real `veil` binary.
cargo build -p veil-cli
cargo test --workspace
