#!/usr/bin/env bash
# Installs berthd on Debian 12 (as root): dependencies, a release build, the
# binaries into /usr/local/bin and, if none exists, the default config.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked -p berth-agent -p berth-runtime --bins
install -m 0755 target/release/berthd /usr/local/bin/berthd
install -m 0755 target/release/berth-monitor /usr/local/bin/berth-monitor
if [ ! -e /etc/berth/config.toml ]; then
    install -d -m 0755 /etc/berth
    /usr/local/bin/berthd config default > /etc/berth/config.toml
fi
if [ -d /etc/systemd/system ]; then
    install -m 0644 deploy/berthd.service /etc/systemd/system/berthd.service
fi
echo "berthd installed: run 'berthd' (or 'systemctl enable --now berthd' where systemd runs)"
