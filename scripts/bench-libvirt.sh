#!/usr/bin/env bash
# vireod + vireo vs libvirtd + virsh, side by side on this machine (docs/benchmarks.md, "vireod"):
#   * `list --all` with N defined domains (whole command: process start, connect, call, table);
#   * `define`, and define → start → destroy cycles with the test guest (three CLI commands
#     per cycle, as a user types them), per step and per cycle;
#   * start → the guest's first line on its serial console (informational: VMM + firmware).
# Both sides are timed by the same loop in this script, with vireo's release binaries, and the
# two tools alternate which one goes first. Prints a markdown table.
#
# Usage: scripts/bench-libvirt.sh [--runs N] [--domains N]   (as root; defaults: 20, 1000)
#
# Isolation: libvirtd runs as a *system* instance inside private mount and PID namespaces, where
# /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are
# bind mounts of a temporary directory (and /etc/passwd, /etc/group copies that add the
# `libvirt-qemu` user Debian's build expects); vireod runs with `--root TMPDIR`. Nothing of
# either is left running or on disk afterwards. Root is needed because QEMU must open
# /dev/kvm (root-only on these machines) and for the mount namespace; a session libvirtd as
# another user could not use KVM here.
# The libvirt packages are installed here (not by install-deps.sh): only this script needs them.
set -euo pipefail

RUNS=${VIREO_BENCH_RUNS:-20}
DOMAINS=1000
INNER=0
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --domains) DOMAINS=$2; shift 2 ;;
    --inner) INNER=1; shift ;;
    *) echo "bench-libvirt: unknown argument '$1' (usage: $0 [--runs N] [--domains N])" >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "bench-libvirt: --runs must be 1..9999, not '$RUNS'" >&2; exit 2; }
[[ "$DOMAINS" =~ ^[1-9][0-9]{0,4}$ ]] || { echo "bench-libvirt: --domains must be 1..99999, not '$DOMAINS'" >&2; exit 2; }

LV_DIRS=(/etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt)

if [ "$INNER" = 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "bench-libvirt: run as root (QEMU needs /dev/kvm, libvirtd a private mount namespace)" >&2; exit 1; }
    [ -c /dev/kvm ] || { echo "bench-libvirt: /dev/kvm is missing" >&2; exit 1; }
    cd "$(dirname "$0")/.."
    pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86)
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    cargo build -q --release -p vireo-cli -p vireo-vmm -p vireo-daemon -p vireo-test-guest
    export BENCH_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
    BENCH_GUEST=$("$BENCH_BIN/vireo-test-guest")
    export BENCH_GUEST BENCH_REV
    BENCH_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    # Mount points for the bind mounts; those created here are removed again.
    created=()
    for d in "${LV_DIRS[@]}"; do
        [ -d "$d" ] || { mkdir -p "$d"; created+=("$d"); }
    done
    rm_created() {
        for d in "${created[@]}"; do rmdir "$d" 2>/dev/null || echo "bench-libvirt: $d is not empty, left in place" >&2; done
    }
    trap rm_created EXIT
    # A private mount namespace for libvirt's directories, and a PID namespace whose init is
    # the inner script: when it ends, whatever is left in there is killed by the kernel. It
    # also reaps QEMU at once when it exits: libvirt daemonizes QEMU, and `destroy` polls
    # kill(pid, 0) every 200 ms until the process is gone, so a late reaper (this container's
    # PID 1) added ~1.2 s to every libvirt destroy.
    unshare --mount --propagation private --pid --fork --kill-child=SIGTERM --mount-proc -- \
        "$0" --inner --runs "$RUNS" --domains "$DOMAINS"
    exit 0
fi

# ---- inside the private mount and PID namespaces ----
W=$(mktemp -d /tmp/vireo-bench-libvirt.XXXXXX)
LIBVIRTD_PID=""
VIREOD_PID=""
V="virsh -c qemu:///system"
VIREO=("$BENCH_BIN/vireo" -c "vireo:///system?root=$W/vireo")

cleanup() {
    set +e
    if [ -n "$VIREOD_PID" ]; then
        # VMMs outlive vireod by design (restart safety): destroy running domains first.
        for n in $("${VIREO[@]}" list --name 2>/dev/null); do "${VIREO[@]}" destroy "$n" >/dev/null 2>&1; done
        kill "$VIREOD_PID" 2>/dev/null; wait "$VIREOD_PID" 2>/dev/null
    fi
    if [ -n "$LIBVIRTD_PID" ]; then
        # QEMU processes outlive libvirtd too.
        for n in $(timeout 30 $V list --name 2>/dev/null); do timeout 30 $V destroy "$n" >/dev/null 2>&1; done
        for f in /run/libvirt/qemu/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
        kill "$LIBVIRTD_PID" 2>/dev/null; wait "$LIBVIRTD_PID" 2>/dev/null
    fi
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# libvirt's private system instance.
mkdir -p "$W"/{etc,run,lib,cache,log,vireo,xml}
cp /etc/passwd /etc/group "$W/"
grep -q '^libvirt-qemu:' /etc/passwd || echo 'libvirt-qemu:x:64055:64055:libvirt bench:/nonexistent:/usr/sbin/nologin' >>"$W/passwd"
grep -q '^libvirt-qemu:' /etc/group || echo 'libvirt-qemu:x:64055:' >>"$W/group"
grep -q '^kvm:' /etc/group || echo 'kvm:x:64056:' >>"$W/group"
mount --bind "$W/passwd" /etc/passwd
mount --bind "$W/group" /etc/group
mount --bind "$W/etc" /etc/libvirt
mount --bind "$W/run" /run/libvirt
mount --bind "$W/lib" /var/lib/libvirt
mount --bind "$W/cache" /var/cache/libvirt
mount --bind "$W/log" /var/log/libvirt
cat >/etc/libvirt/libvirtd.conf <<'EOF'
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
# QEMU as root like vireo-vmm here, no cgroups/namespaces/labels (nothing outside this
# namespace is touched), serial and logs straight to files (no virtlogd to leave behind).
cat >/etc/libvirt/qemu.conf <<'EOF'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
libvirtd &
LIBVIRTD_PID=$!
VIREO_LOG=warn "$BENCH_BIN/vireod" --root "$W/vireo" </dev/null &
VIREOD_PID=$!
for _ in $(seq 300); do
    [ -S /run/libvirt/libvirt-sock ] && "${VIREO[@]}" list >/dev/null 2>&1 && break
    sleep 0.1
done
# The first connection probes QEMU's capabilities (seconds); not timed.
timeout 120 $V capabilities >"$W/caps.xml" || { echo "bench-libvirt: libvirtd did not answer" >&2; tail "$W/log/libvirtd.log" >&2; exit 1; }
"${VIREO[@]}" list >/dev/null

us() { local t=${EPOCHREALTIME//[.,]/}; echo $((10#$t)); }
LAST=0
# timed OUTFILE CMD...: runs CMD, output to OUTFILE, its wall time (µs) in LAST.
timed() {
    local out=$1 s e
    shift
    s=${EPOCHREALTIME//[.,]/}
    if ! "$@" >"$out" 2>"$W/err"; then
        echo "bench-libvirt: '$*' failed: $(cat "$W/err")" >&2
        exit 1
    fi
    e=${EPOCHREALTIME//[.,]/}
    LAST=$((10#$e - 10#$s))
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int(NR/2)+1]}'; }
ms() { awk -v u="$1" 'BEGIN {printf "%.1f ms", u/1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b/a}'; }

# Guest XML: the same test guest, 1 vCPU, 32 MiB, serial console, for both. libvirt's QEMU
# gets qboot as firmware (its shortest path to the PVH entry; SeaBIOS takes ~30 s of emulated
# CPL0 code on this host) and `-arch-capabilities` (this host refuses MSR 0x10a).
CMDLINE="console=ttyS0 vtg.quick=1 vtg.action=halt"
vireo_xml() { # NAME [UUID]
    cat <<EOF
<domain type='kvm'><name>$1</name>${2:+<uuid>$2</uuid>}<memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type><kernel>$BENCH_GUEST</kernel><cmdline>$CMDLINE</cmdline></os>
<features><acpi/><apic/></features></domain>
EOF
}
libvirt_xml() { # TYPE NAME [UUID]
    cat <<EOF
<domain type='$1'><name>$2</name>${3:+<uuid>$3</uuid>}<memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><loader readonly='yes' type='rom'>/usr/share/qemu/qboot.rom</loader>
<kernel>$BENCH_GUEST</kernel><cmdline>$CMDLINE</cmdline></os>
<features><acpi/><apic/></features>
$([ "$1" = kvm ] && echo "<cpu mode='host-passthrough'><feature policy='disable' name='arch-capabilities'/></cpu>")
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator><controller type='usb' model='none'/>
<serial type='file'><source path='$W/$2.serial.log'/><target port='0'/></serial>
<memballoon model='none'/></devices></domain>
EOF
}

# 1. define N domains, one command each, the two tools alternating.
echo "bench-libvirt: defining $DOMAINS domains on each side..." >&2
def_v=()
def_l=()
for ((i = 0; i < DOMAINS; i++)); do
    n=$(printf 'bench-%05d' "$i")
    vireo_xml "$n" >"$W/xml/v-$n.xml"
    libvirt_xml kvm "$n" >"$W/xml/l-$n.xml"
    timed /dev/null "${VIREO[@]}" define "$W/xml/v-$n.xml"
    def_v+=("$LAST")
    timed /dev/null $V define "$W/xml/l-$n.xml"
    def_l+=("$LAST")
done

# 2. list --all.
echo "bench-libvirt: list --all, $RUNS runs..." >&2
list_v=()
list_l=()
check_list() { # TOOL FILE
    local c
    c=$(grep -c 'shut off' "$2" || true)
    [ "$c" -eq "$DOMAINS" ] || { echo "bench-libvirt: $1 list --all showed $c shut off domains, expected $DOMAINS" >&2; exit 1; }
}
for ((r = 0; r < RUNS; r++)); do
    if ((r % 2)); then order="l v"; else order="v l"; fi
    for side in $order; do
        if [ "$side" = v ]; then
            timed "$W/list" "${VIREO[@]}" list --all
            list_v+=("$LAST")
            check_list vireo "$W/list"
        else
            timed "$W/list" $V list --all
            list_l+=("$LAST")
            check_list virsh "$W/list"
        fi
    done
done

# 3. Does QEMU+KVM run the guest here? Start once and wait for its first line; else TCG.
UUID=0b6cb2a4-5a0e-4c1e-9c1b-3d2f6a7e8b90
vireo_xml cycle "$UUID" >"$W/xml/v-cycle.xml"
wait_line() { # FILE TIMEOUT_S: waits for the guest's "vtg: boot" line
    local end=$(($(us) + $2 * 1000000))
    while [ "$(us)" -lt "$end" ]; do
        grep -q 'vtg: boot' "$1" 2>/dev/null && return 0
        sleep 0.005
    done
    return 1
}
first_line() { # SIDE: start → guest's first line (µs) in LAST, then destroy
    local s log
    if [ "$1" = v ]; then
        log="$W/vireo/var/log/vireo/cycle.console.log"
        rm -f "$log"
        s=$(us)
        timed /dev/null "${VIREO[@]}" start cycle
        wait_line "$log" 60 || { echo "bench-libvirt: the vireo guest printed nothing in 60 s" >&2; exit 1; }
        LAST=$(($(us) - s))
        "${VIREO[@]}" destroy cycle >/dev/null
    else
        log="$W/cycle.serial.log"
        rm -f "$log"
        s=$(us)
        if ! timeout 60 $V start cycle >/dev/null 2>"$W/err"; then
            echo "bench-libvirt: virsh start: $(cat "$W/err")" >&2
            LAST=""
            return 0
        fi
        if ! wait_line "$log" 60; then
            LAST=""
            timeout 60 $V destroy cycle >/dev/null
            return 0
        fi
        LAST=$(($(us) - s))
        timeout 60 $V destroy cycle >/dev/null
    fi
}
"${VIREO[@]}" define "$W/xml/v-cycle.xml" >/dev/null
DOMTYPE=""
for t in kvm qemu; do
    libvirt_xml "$t" cycle "$UUID" >"$W/xml/l-cycle.xml"
    $V define "$W/xml/l-cycle.xml" >/dev/null
    first_line l
    if [ -n "$LAST" ]; then DOMTYPE=$t; break; fi
    echo "bench-libvirt: libvirt domain type '$t' did not run the guest (no output in 60 s)" >&2
done
[ -n "$DOMTYPE" ] || { echo "bench-libvirt: QEMU ran the guest neither with KVM nor with TCG" >&2; exit 1; }
boot_v=()
boot_l=()
for ((r = 0; r < 3; r++)); do
    first_line v
    boot_v+=("$LAST")
    first_line l
    boot_l+=("$LAST")
done

# 4. define → start → destroy cycles (the domain is defined again each time: same UUID,
# so the definition is replaced, as in the cargo bench).
echo "bench-libvirt: define → start → destroy, $RUNS cycles (libvirt domain type '$DOMTYPE')..." >&2
declare -A step
for k in v_def v_start v_destroy v_cycle l_def l_start l_destroy l_cycle; do step[$k]=""; done
cycle() { # SIDE CMD...
    local side=$1 d s x
    shift
    timed /dev/null "$@" define "$W/xml/$side-cycle.xml"
    d=$LAST
    timed /dev/null "$@" start cycle
    s=$LAST
    timed /dev/null "$@" destroy cycle
    x=$LAST
    step[${side}_def]+="$d "
    step[${side}_start]+="$s "
    step[${side}_destroy]+="$x "
    step[${side}_cycle]+="$((d + s + x)) "
}
for ((r = 0; r < RUNS; r++)); do
    if ((r % 2)); then
        cycle l $V
        cycle v "${VIREO[@]}"
    else
        cycle v "${VIREO[@]}"
        cycle l $V
    fi
done
# shellcheck disable=SC2086
med() { median ${step[$1]}; }

# 5. The table.
lv_ver=$(dpkg-query -W -f='${Version}' libvirt-daemon)
qemu_ver=$(dpkg-query -W -f='${Version}' qemu-system-x86)
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
mode="KVM (\`<domain type='kvm'>\`)"
[ "$DOMTYPE" = qemu ] && mode="TCG (\`<domain type='qemu'>\`: QEMU+KVM did not run the guest here)"
row() { # LABEL VIREO_US LIBVIRT_US
    printf '| %s | %s | %s | **%s** |\n' "$1" "$(ms "$2")" "$(ms "$3")" "$(ratio "$2" "$3")"
}
cv=$(med v_cycle)
cl=$(med l_cycle)
echo
echo "vireo $BENCH_REV (release) vs libvirt $lv_ver + QEMU $qemu_ver; $(nproc) CPUs ($cpu), $mem,"
echo "Linux $(uname -r); libvirt guest: $mode; medians of $RUNS runs (define: of $DOMAINS)."
echo
echo "| operation | vireo | libvirt | libvirt ÷ vireo |"
echo "| --- | --- | --- | --- |"
row "\`list --all\`, $DOMAINS defined domains" "$(median "${list_v[@]}")" "$(median "${list_l[@]}")"
row "\`define\` (new domain, $DOMAINS×)" "$(median "${def_v[@]}")" "$(median "${def_l[@]}")"
row "\`define\` (replace the definition)" "$(med v_def)" "$(med l_def)"
row "\`start\` (test guest)" "$(med v_start)" "$(med l_start)"
row "\`destroy\`" "$(med v_destroy)" "$(med l_destroy)"
printf '| define + start + destroy | %s = %.1f/s | %s = %.1f/s | **%s** |\n' \
    "$(ms "$cv")" "$(awk -v u="$cv" 'BEGIN {print 1e6/u}')" \
    "$(ms "$cl")" "$(awk -v u="$cl" 'BEGIN {print 1e6/u}')" "$(ratio "$cv" "$cl")"
row "start → guest's first serial line (3 runs)" "$(median "${boot_v[@]}")" "$(median "${boot_l[@]}")"
