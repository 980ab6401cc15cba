//! virtio-blk through a real guest driver: Debian's stock kernel finds the disks over PCI
//! (virtio_pci + virtio_blk from its initramfs), mounts an ext4 root from a qcow2 overlay
//! and `switch_root`s into it, as a distribution's initramfs does.
//!
//! One L1 boot, two L2 boots on the same images:
//! 1. the root's init writes and syncs a file and powers off; a read-only disk refuses
//!    writes; `fstrim` on a third disk reaches its qcow2 image as discards; the root disk
//!    has two request queues;
//! 2. after `qemu-img check` in L1, a second `vireo run` boots the same overlay and the
//!    root's init reads the file back.

use std::fs;
use std::path::Path;

use vireo_nested::{
    available, busybox_rootfs, ext4_image, nested_dir, qcow2_from_raw, Scenario, SWITCH_ROOT_TO_VDA,
};

/// `/sbin/init` of the ext4 root (busybox sh).
const ROOT_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "ROOT-FS $(awk '$2 == "/" {print $1, $3, substr($4, 1, 2)}' /proc/mounts)"
if [ -f /written.txt ]; then
  echo BOOT-2
  echo "READBACK $(cat /written.txt)"
  poweroff -f
fi
echo BOOT-1
echo "BASE $(cat /base.txt)"
echo "QUEUES $(ls /sys/block/vda/mq | wc -l)"
echo "DISCARD $(cat /sys/block/vdc/queue/discard_granularity /sys/block/vdc/queue/discard_max_hw_bytes | tr '\n' ' ')"
echo "written by the first boot" > /written.txt
sync
echo "SYNCED"

# The read-only disk: the driver marks it read-only; writes and read-write mounts fail,
# reads work.
echo "RO-FLAG $(cat /sys/block/vdb/ro)"
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct 2>/dev/null; then
  echo RO-WRITE-ACCEPTED
else
  echo RO-WRITE-REJECTED
fi
mkdir -p /mnt/ro
# busybox mount falls back to read-only when the device refuses read-write.
mount -t ext4 /dev/vdb /mnt/ro 2>/dev/null
if touch /mnt/ro/x 2>/dev/null; then
  echo RO-MOUNT-WRITABLE
else
  echo RO-MOUNT-REFUSED-WRITES
fi
echo "RO-DATA $(cat /mnt/ro/hello)"
umount /mnt/ro

# Discards: 16 MiB written and synced, deleted, trimmed.
mkdir -p /mnt/trim
mount -t ext4 -o nodiscard /dev/vdc /mnt/trim
dd if=/dev/urandom of=/mnt/trim/blob bs=1M count=16 2>/dev/null
sync
rm /mnt/trim/blob
sync
echo "FSTRIM $(fstrim -v /mnt/trim 2>&1)"
umount /mnt/trim
echo "SERIALS $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial)"
poweroff -f
"#;

/// The initramfs: report the root disk's serial, then mount it and hand over to its init.
fn initramfs() -> String {
    format!("echo \"SERIAL-VDA $(cat /sys/block/vda/serial)\"{SWITCH_ROOT_TO_VDA}")
}

fn root_dir(dir: &Path) -> std::path::PathBuf {
    let applets = [
        "sh", "mount", "umount", "cat", "echo", "sync", "poweroff", "dd", "head", "mkdir", "touch",
        "rm", "awk", "fstrim",
    ];
    let root = busybox_rootfs(dir, ROOT_INIT, &applets).unwrap();
    fs::write(root.join("base.txt"), "from the backing file\n").unwrap();
    root
}

/// Bytes of an image's guest-visible space that hold data, from `qemu-img map
/// --output=json` (printed between two markers on L1's console).
fn mapped_data_bytes(l1: &str, begin: &str, end: &str) -> Option<u64> {
    let start = l1.find(begin)? + begin.len();
    let json = &l1[start..start + l1[start..].find(end)?];
    let map: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    Some(
        map.as_array()?
            .iter()
            .filter(|e| e["data"] == true)
            .filter_map(|e| e["length"].as_u64())
            .sum(),
    )
}

#[test]
fn qcow2_root_ro_disk_and_discard_through_the_guest_driver() {
    let name = "qcow2_root_ro_disk_and_discard_through_the_guest_driver";
    if !available(name) {
        return;
    }
    let dir = nested_dir().join("images").join(name);
    fs::create_dir_all(&dir).unwrap();
    let root = root_dir(&dir);
    ext4_image(&root, &dir.join("base.raw"), 32).unwrap();
    qcow2_from_raw(&dir.join("base.raw"), &dir.join("base.qcow2")).unwrap();
    let ro_root = dir.join("ro-root");
    let _ = fs::remove_dir_all(&ro_root);
    fs::create_dir_all(&ro_root).unwrap();
    fs::write(ro_root.join("hello"), "read-only data\n").unwrap();
    ext4_image(&ro_root, &dir.join("ro.raw"), 8).unwrap();
    let empty = dir.join("empty");
    fs::create_dir_all(&empty).unwrap();
    ext4_image(&empty, &dir.join("trim.raw"), 64).unwrap();
    qcow2_from_raw(&dir.join("trim.raw"), &dir.join("trim.qcow2")).unwrap();

    let prelude = "mkdir -p /img\n\
         mount -t tmpfs tmpfs /img\n\
         cp /in/base.qcow2 /in/ro.raw /in/trim.qcow2 /img/\n\
         qemu-img create -q -f qcow2 -b /img/base.qcow2 -F qcow2 /img/overlay.qcow2\n\
         echo \"SHA-BEFORE $(sha256sum /img/base.qcow2 /img/ro.raw | awk '{print $1}' | tr '\\n' ' ')\"\n";
    let epilogue = "echo \"SHA-AFTER $(sha256sum /img/base.qcow2 /img/ro.raw | awk '{print $1}' | tr '\\n' ' ')\"\n\
         echo \"CHECK-OVERLAY $(qemu-img check /img/overlay.qcow2 2>&1 | tr '\\n' ' ')\"\n\
         echo \"CHECK-TRIM $(qemu-img check /img/trim.qcow2 2>&1 | tr '\\n' ' ')\"\n\
         echo MAP-TRIM-BEGIN; qemu-img map -f qcow2 --output=json /img/trim.qcow2; echo MAP-TRIM-END\n\
         run_vireo\n\
         echo \"VIREO-EXIT2 $?\"\n\
         echo \"CHECK-OVERLAY2 $(qemu-img check /img/overlay.qcow2 2>&1 | tr '\\n' ' ')\"\n";
    let o = Scenario::new(name)
        .init_script(&initramfs())
        .l1_tools(&["qemu-img"])
        .l1_file("/in/base.qcow2", &dir.join("base.qcow2"))
        .l1_file("/in/ro.raw", &dir.join("ro.raw"))
        .l1_file("/in/trim.qcow2", &dir.join("trim.qcow2"))
        .l1_prelude(prelude)
        .l1_epilogue(epilogue)
        .vireo_args(&[
            "--memory",
            "256",
            // Linux gives a disk at most one request queue per CPU.
            "--cpus",
            "2",
            "--disk",
            "path=/img/overlay.qcow2,format=qcow2,serial=vireo-root,queues=2",
            "--disk",
            "path=/img/ro.raw,format=raw,readonly=on,serial=vireo-ro",
            "--disk",
            "path=/img/trim.qcow2,format=qcow2",
        ])
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    let d = o.describe();
    let l1 = o.l1_lines();
    let l2 = o.l2_lines();
    let has = |lines: &[&str], l: &str| lines.contains(&l);
    assert_eq!(o.vireo_status, Some(0), "{d}");
    assert!(has(&l1, "VIREO-EXIT2 0"), "{d}");
    // Two boots, each from the qcow2 root.
    assert!(has(&l2, "SERIAL-VDA vireo-root"), "{d}");
    assert_eq!(o.count("ROOT-FS /dev/vda ext4 rw"), 2, "{d}");
    assert!(has(&l2, "BASE from the backing file"), "{d}");
    assert!(has(&l2, "SYNCED"), "{d}");
    // Two request queues (blk-mq hardware contexts); discard up to
    // the device's 1 GiB limit.
    assert!(has(&l2, "QUEUES 2"), "{d}");
    let discard = l2
        .iter()
        .find_map(|l| l.strip_prefix("DISCARD "))
        .unwrap_or("");
    assert!(discard.ends_with(" 1073741824"), "{discard}\n{d}");
    assert!(has(&l2, "READBACK written by the first boot"), "{d}");
    // Read-only disk.
    assert!(has(&l2, "RO-FLAG 1"), "{d}");
    assert!(has(&l2, "RO-WRITE-REJECTED"), "{d}");
    assert!(has(&l2, "RO-MOUNT-REFUSED-WRITES"), "{d}");
    assert!(has(&l2, "RO-DATA read-only data"), "{d}");
    assert!(has(&l2, "SERIALS vireo-root vireo-ro"), "{d}");
    // The backing file and the read-only image are untouched; the overlay is consistent.
    let sha = |p: &str| {
        l1.iter()
            .find_map(|l| l.strip_prefix(p))
            .map(str::to_string)
    };
    assert!(sha("SHA-BEFORE ").is_some(), "{d}");
    assert_eq!(sha("SHA-BEFORE "), sha("SHA-AFTER "), "{d}");
    for check in ["CHECK-OVERLAY ", "CHECK-OVERLAY2 ", "CHECK-TRIM "] {
        let line = sha(check).unwrap_or_default();
        assert!(line.contains("No errors were found"), "{check}{line}\n{d}");
    }
    // fstrim reached the image: the 16 MiB the guest wrote and deleted are no longer
    // allocated in the qcow2 (ext4's own metadata stays).
    let trimmed = l2.iter().find(|l| l.starts_with("FSTRIM ")).unwrap_or(&"");
    assert!(trimmed.contains("trimmed"), "{trimmed}\n{d}");
    let data = mapped_data_bytes(&o.l1_log, "MAP-TRIM-BEGIN", "MAP-TRIM-END")
        .unwrap_or_else(|| panic!("no qemu-img map output\n{d}"));
    assert!(
        data < 8 << 20,
        "{data} bytes still allocated after fstrim\n{d}"
    );
}
