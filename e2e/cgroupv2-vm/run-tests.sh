#!/usr/bin/env bash
# Runs berth's cgroup v2 tests inside a throwaway VM whose only hierarchy is
# cgroup v2 (Debian's kernel under QEMU; see run-in-vm.sh): the runtime's
# cgroup tests, then a real berthd with a real registry for the e2e tests
# whose expectations differ on v2. Test binaries are built on the host; the
# workspace is shared into the VM over 9p.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

# The path of the test executable cargo builds for `$@`: the artifact of
# kind "test" (integration tests also make cargo build, and report, the
# crate's binaries).
test_bin() {
  cargo test --locked "$@" --no-run --message-format=json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["executable"])'  | tail -n 1
}

# One initramfs for both runs (it is rebuilt whenever its contents change):
# berthd pulls from a docker-registry on 127.0.0.1 inside the VM, and its
# HTTP client wants the CA bundle even for plain HTTP.
export CGV2VM_EXTRA_BINS=/usr/bin/docker-registry CGV2VM_EXTRA_FILES=/etc/ssl/certs/ca-certificates.crt

bin=$(test_bin -p berth-runtime --test cgroup_v2)
[ -n "$bin" ] || { echo "cgroupv2-vm: could not build the cgroup_v2 test" >&2; exit 1; }
bash e2e/cgroupv2-vm/run-in-vm.sh "$PWD" -- "$bin" --ignored --test-threads=1

cargo build --locked --quiet -p berth-agent -p berth-runtime --bins
cargo build --locked --quiet --manifest-path pause/Cargo.toml --target-dir target
resources=$(test_bin -p berth-e2e --test resources)
[ -n "$resources" ] || { echo "cgroupv2-vm: could not build the resources e2e test" >&2; exit 1; }
export BERTHD=$PWD/target/debug/berthd
CGV2VM_MEM=2G CGV2VM_ENV="BERTHD RUST_BACKTRACE" bash e2e/cgroupv2-vm/run-in-vm.sh "$PWD" -- "$resources" --test-threads=1
# User namespaces where they cannot be had: the VM's store is on its tmpfs
# root and Debian 12's kernel (6.1) id-maps no tmpfs (6.3 does), so berthd
# must say user_namespaces false and refuse such pods, naming why.
# cgroup.kill ends what a container without a PID namespace of its own leaves.
pods=$(test_bin -p berth-e2e --test pods)
[ -n "$pods" ] || { echo "cgroupv2-vm: could not build the pods e2e test" >&2; exit 1; }
# Containers joining the pod's PID namespace set up outside it with a clone
# of the pod's /proc (Debian 12's kernel has no procfs pidns=, 6.15): a
# sibling that may ptrace catches nothing privileged, TTYs still work.
CGV2VM_MEM=2G CGV2VM_ENV="BERTHD RUST_BACKTRACE" bash e2e/cgroupv2-vm/run-in-vm.sh "$PWD" -- "$pods" --test-threads=1 \
  a_container_sharing_a_pid_namespace_leaves_no_process_when_it_exits shared_pid_namespace_sees_sibling_processes
attacks=$(test_bin -p berth-e2e --test attacks)
[ -n "$attacks" ] || { echo "cgroupv2-vm: could not build the attacks e2e test" >&2; exit 1; }
# The VM has no gcc: the test probe is built here.
export BERTH_E2E_PROBE=$PWD/target/debug/berth-e2e-probe
gcc -static -O2 -o "$BERTH_E2E_PROBE" e2e/fixtures/probe.c
CGV2VM_MEM=2G CGV2VM_ENV="BERTHD RUST_BACKTRACE BERTH_E2E_PROBE" bash e2e/cgroupv2-vm/run-in-vm.sh "$PWD" -- "$attacks" --test-threads=1 \
  catches_no_process_born
userns=$(test_bin -p berth-e2e --test userns)
[ -n "$userns" ] || { echo "cgroupv2-vm: could not build the userns e2e test" >&2; exit 1; }
export BERTH_E2E_USERNS=0
CGV2VM_MEM=2G CGV2VM_ENV="BERTHD RUST_BACKTRACE BERTH_E2E_USERNS" bash e2e/cgroupv2-vm/run-in-vm.sh "$PWD" -- "$userns" --test-threads=1
# The systemd cgroup driver, with systemd as PID 1 (Debian's, booted by the
# VM runner): containers as scopes, limits as unit properties.
systemd=$(test_bin -p berth-e2e --test systemd)
[ -n "$systemd" ] || { echo "cgroupv2-vm: could not build the systemd e2e test" >&2; exit 1; }
export BERTH_E2E_SYSTEMD=1
CGV2VM_SYSTEMD=1 CGV2VM_MEM=2G CGV2VM_ENV="BERTHD RUST_BACKTRACE BERTH_E2E_SYSTEMD" bash e2e/cgroupv2-vm/run-in-vm.sh "$PWD" -- "$systemd" --test-threads=1
