#!/usr/bin/env bash
# Installs what the tests need on Debian 12 (as root) and runs the whole
# workspace's tests, root e2e tests included. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/deps.sh --test
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
# One clean build: incremental state would only double the target dir on disk.
export CARGO_INCREMENTAL=0
df -h . | sed 's/^/disk: /'
# House rules first: formatting and lints are part of the suite.
cargo fmt --all --check
cargo fmt --manifest-path pause/Cargo.toml --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo clippy --locked --manifest-path pause/Cargo.toml --target-dir target -- -D warnings
cargo clippy --locked --workspace --all-targets --features berth-agent/fault-injection -- -D warnings
# What may enter the dependency tree (deny.toml): licenses, bans, sources.
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny --version 0.20.2
cargo deny --locked check licenses bans sources
cargo build --locked --workspace --all-targets
cargo build --locked --manifest-path pause/Cargo.toml --target-dir target
cargo test --locked --workspace --no-fail-fast
# cgroup v2 for real, inside a throwaway VM (this machine's controllers are on v1).
bash e2e/cgroupv2-vm/run-tests.sh
