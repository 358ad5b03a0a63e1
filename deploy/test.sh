#!/usr/bin/env bash
# Installs what the tests need on Debian 12 (as root) and runs the whole
# workspace's tests, root e2e tests included. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/deps.sh --test
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --locked --workspace --all-targets
cargo test --locked --workspace --no-fail-fast
