#!/usr/bin/env bash
# Removes superseded test and binary executables from a reused target directory. Each relink of a
# debug test binary leaves the previous one behind (~1.6 GB each with full debug info), so a target
# dir reused across CI runs would otherwise fill the disk. Keeps the newest two files of each name
# (a binary and its unit-test harness share one).
set -euo pipefail
target_dir="${1:-${CARGO_TARGET_DIR:-target}}"
for profile in debug release; do
  deps="$target_dir/$profile/deps"
  [ -d "$deps" ] || continue
  # Executables without an extension, newest first; drop all but the first two of each stem.
  find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -printf '%T@ %p\n' \
    | sort -rn \
    | awk '{ path = $2; n = split(path, parts, "/"); stem = parts[n]; sub(/-[0-9a-f]+$/, "", stem);
             if (seen[stem]++ >= 2) print path }' \
    | xargs -r rm -f
done
