#!/usr/bin/env bash
# Installs what vireo's build, tests and benchmarks need on a Debian machine (idempotent),
# then checks that every tool is really there.
set -euo pipefail
# xz-utils..libelf-dev: the nested tier (Debian kernel packages, minimal guest kernel build).
pkgs=(gcc g++ binutils qemu-utils qemu-system-x86 acpica-tools xz-utils make bc bison flex libelf-dev)
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
# Debian's qemu-system-x86 can displace a newer qemu-utils installed from elsewhere; the
# interop tests need qemu-img and qemu-io whatever their version.
if ! command -v qemu-img >/dev/null || ! command -v qemu-io >/dev/null; then
    apt_install qemu-utils
fi
<<<<<<< HEAD
for tool in gcc g++ objcopy qemu-img qemu-io qemu-system-x86_64 iasl; do
=======
for tool in gcc objcopy qemu-img qemu-io qemu-system-x86_64 iasl xz make bc bison flex; do
>>>>>>> nested
    command -v "$tool" >/dev/null || { echo "install-deps: $tool is missing after installing ${pkgs[*]}" >&2; exit 1; }
done
