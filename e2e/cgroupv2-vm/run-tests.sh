#!/usr/bin/env bash
# Runs berth's cgroup v2 tests inside a throwaway VM whose only hierarchy is
# cgroup v2 (Debian's kernel under QEMU; see run-in-vm.sh). The test binary
# is built on the host; the workspace is shared into the VM over 9p.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
bin=$(cargo test --locked -p berth-runtime --test cgroup_v2 --no-run --message-format=json 2>/dev/null \
      | sed -n 's/.*"executable":"\([^"]*cgroup_v2[^"]*\)".*/\1/p' | tail -n 1)
[ -n "$bin" ] || { echo "cgroupv2-vm: could not build the cgroup_v2 test" >&2; exit 1; }
exec bash e2e/cgroupv2-vm/run-in-vm.sh "$PWD" -- "$bin" --ignored --test-threads=1
