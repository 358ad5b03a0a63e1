#!/usr/bin/env bash
# Installs berthd on Debian 12 (as root): dependencies, a release build, the
# binaries into <prefix>/bin, the default config (if none exists) with an
# empty config.d for drop-ins, and the systemd unit where systemd is. Then
# `berthd check` says which kernel features are missing, if any.
#
# Everything installed is listed, with its checksum, in <etc>/.installed;
# `--uninstall` removes exactly those files (a config edited since is kept,
# and said so) and the directories it created if they are empty. Data of
# berth's own (images, pods: <root>, <state>) is not touched by either;
# `berthd cleanup --all` removes it, with berthd stopped.
#
#   deploy/install.sh [--uninstall] [--prefix DIR] [--etc DIR]
#                     [--systemd-dir DIR] [--binaries DIR]
#
# --binaries DIR takes berthd, berth-monitor, berth-monitor-loop and berth-pause
# from DIR instead of installing dependencies and building (for packaging and
# the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local etc=/etc/berth systemd_dir=/etc/systemd/system binaries="" uninstall=0
while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) uninstall=1 ;;
        --prefix) prefix="$2"; shift ;;
        --etc) etc="$2"; shift ;;
        --systemd-dir) systemd_dir="$2"; shift ;;
        --binaries) binaries="$2"; shift ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
manifest="$etc/.installed"

sum() { sha256sum "$1" | cut -d' ' -f1; }

if [ "$uninstall" = 1 ]; then
    if [ ! -f "$manifest" ]; then
        echo "install.sh: nothing to uninstall ($manifest does not exist)" >&2
        exit 1
    fi
    # Files first, then directories deepest first.
    while read -r kind path hash; do
        [ "$kind" = file ] || continue
        if [ ! -e "$path" ]; then
            continue
        elif [ "$(sum "$path")" = "$hash" ]; then
            rm -f "$path"
        else
            echo "kept $path: changed since it was installed"
        fi
    done < "$manifest"
    dirs="$(grep '^dir ' "$manifest.dirs" 2>/dev/null | cut -d' ' -f2- | sort -r || true)"
    rm -f "$manifest" "$manifest.dirs"
    while read -r d; do
        [ -n "$d" ] || continue
        rmdir "$d" 2>/dev/null || echo "kept $d: not empty"
    done <<< "$dirs"
    if [ "$systemd_dir" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    echo "berth uninstalled (its data in /var/lib/berth and /run/berth stays; 'berthd cleanup --all' before uninstalling removes it)"
    exit 0
fi

if [ -z "$binaries" ]; then
    bash deploy/deps.sh
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    cargo build --release --locked -p berth-agent -p berth-runtime --bins
    cargo build --release --locked --manifest-path pause/Cargo.toml --target-dir target
    binaries=target/release
fi

# mkdir -p, remembering each directory it creates.
declare -a new_dirs=()
make_dir() {
    local d="$1" missing=()
    while [ ! -d "$d" ]; do missing+=("$d"); d="$(dirname "$d")"; done
    for ((i = ${#missing[@]} - 1; i >= 0; i--)); do
        install -d -m "$2" "${missing[$i]}"
        new_dirs+=("${missing[$i]}")
    done
}
# Records a file as installed (replacing an older record of the same path).
record() {
    local tmp
    tmp="$(mktemp)"
    { [ -f "$manifest" ] && grep -v "^file $1 " "$manifest" || true; } > "$tmp"
    echo "file $1 $(sum "$1")" >> "$tmp"
    install -m 0600 "$tmp" "$manifest"
    rm -f "$tmp"
}

make_dir "$etc" 0755
make_dir "$etc/config.d" 0755
make_dir "$prefix/bin" 0755
install -m 0755 "$binaries/berthd" "$prefix/bin/berthd"
record "$prefix/bin/berthd"
install -m 0755 "$binaries/berth-monitor" "$prefix/bin/berth-monitor"
record "$prefix/bin/berth-monitor"
install -m 0755 "$binaries/berth-monitor-loop" "$prefix/bin/berth-monitor-loop"
record "$prefix/bin/berth-monitor-loop"
install -m 0755 "$binaries/berth-pause" "$prefix/bin/berth-pause"
record "$prefix/bin/berth-pause"
if [ ! -e "$etc/config.toml" ]; then
    "$prefix/bin/berthd" config default > "$etc/config.toml"
    chmod 0644 "$etc/config.toml"
    record "$etc/config.toml"
fi
if [ -d "$systemd_dir" ] || [ "$systemd_dir" != /etc/systemd/system ]; then
    make_dir "$systemd_dir" 0755
    sed "s#/usr/local/bin/berthd#$prefix/bin/berthd#g; s#/etc/berth/config.toml#$etc/config.toml#g" \
        deploy/berthd.service > "$systemd_dir/berthd.service"
    chmod 0644 "$systemd_dir/berthd.service"
    record "$systemd_dir/berthd.service"
    if [ "$systemd_dir" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
for d in "${new_dirs[@]}"; do echo "dir $d" >> "$manifest.dirs"; done
[ -f "$manifest.dirs" ] && chmod 0600 "$manifest.dirs"

echo "berthd installed in $prefix/bin; config $etc/config.toml (drop-ins: $etc/config.d/*.toml)"
if ! "$prefix/bin/berthd" --config "$etc/config.toml" check; then
    echo "warning: berthd check found missing prerequisites (above); berthd may fail to run pods until they are met"
fi
echo "run '$prefix/bin/berthd' (or 'systemctl enable --now berthd' where systemd runs)"
