#!/usr/bin/env bash
# Installs what berth needs on Debian 12 (as root): the packages berthd uses at
# run time and to build, plus, with --test, what the test suite needs and, with
# --bench, containerd and runc for the side-by-side benchmark. Installs a Rust
# toolchain with rustup only when no cargo is on PATH.
set -euo pipefail

want_test=0
want_bench=0
for a in "$@"; do
    case "$a" in
        --test) want_test=1 ;;
        --bench) want_test=1; want_bench=1 ;;
    esac
done

export DEBIAN_FRONTEND=noninteractive
pkgs=(ca-certificates curl gcc libc6-dev make pkg-config protobuf-compiler libseccomp-dev
      nftables iproute2 kmod)
if [ "$want_test" = 1 ]; then
    # docker-registry: the OCI registry on 127.0.0.1; busybox-static: the
    # images the fixtures build; golang + spdystream + gorilla/websocket:
    # the independent SPDY and WebSocket client of the streaming tests (the
    # libraries under client-go); python3-prometheus-client: the metrics
    # test parses with the Prometheus project's parser; openssl: TLS;
    # qemu/kernel bits: the cgroup v2 VM runner.
    pkgs+=(docker-registry busybox-static golang-go golang-github-docker-spdystream-dev golang-github-gorilla-websocket-dev python3-prometheus-client openssl containernetworking-plugins iptables
           qemu-system-x86 cpio xz-utils e2fsprogs util-linux)
fi
apt-get update
apt-get install -y --no-install-recommends "${pkgs[@]}"
if [ "$want_bench" = 1 ]; then
    # containerd + runc + catatonit (its pause image) for
    # `cargo bench -p berth-e2e --bench compare`, which runs its own
    # containerd; the packaged service is not started (policy-rc.d).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y --no-install-recommends containerd runc catatonit
fi

if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
# The toolchain rust-toolchain.toml pins, with rustfmt and clippy.
if command -v rustup >/dev/null 2>&1; then
    (cd "$(dirname "$0")/.." && { rustup toolchain install 2>/dev/null || rustup show active-toolchain >/dev/null; })
fi
cargo --version
