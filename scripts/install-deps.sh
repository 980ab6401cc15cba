#!/usr/bin/env bash
# Installs what vireo's build, tests and benchmarks need on a Debian machine (idempotent),
# then checks that every tool is really there.
set -euo pipefail
# xz-utils..libelf-dev: the nested tier (Debian kernel packages, minimal guest kernel build).
# socat..iperf3: device tests and benchmarks (vsock and control-socket clients, disk images, network namespaces).
pkgs=(gcc g++ binutils qemu-utils qemu-system-x86 acpica-tools xz-utils make bc bison flex libelf-dev socat e2fsprogs iproute2 fio iperf3)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
apt_install() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    apt_install "${missing[@]}"
fi
# The interop tests compare with qemu-img/qemu-io: use the distribution's qemu-utils, the
# same release as its qemu-system-x86, so every machine tests against the same version (a
# newer qemu-utils installed from elsewhere is replaced, and may already have been displaced
# by qemu-system-x86).
want=$(apt-cache policy qemu-utils | awk '/Candidate:/ {print $2}')
have=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
if [ -n "$want" ] && [ "$want" != "(none)" ] && [ "$have" != "$want" ]; then
    apt_install --allow-downgrades "qemu-utils=$want"
fi
for tool in gcc g++ objcopy qemu-img qemu-io qemu-system-x86_64 iasl xz make bc bison flex socat mkfs.ext4 ip fio iperf3; do
    command -v "$tool" >/dev/null || { echo "install-deps: $tool is missing after installing ${pkgs[*]}" >&2; exit 1; }
done
