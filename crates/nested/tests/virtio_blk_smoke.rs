//! virtio-blk seen by Linux (Debian's stock kernel and its virtio_blk driver, nested): the
//! driver binds, sees the size, serial, read-only flag, queues and discard limits vireo
//! offers, reads what the host wrote and writes what the host then finds in the image.
//! A smoke test of the device with a real driver; the lead's tests cover file systems.

use std::time::Duration;

use vireo_nested::{available, nested_dir, Kernel, Scenario};

const SCRIPT: &str = "\
echo SIZE; cat /sys/block/vda/size
echo SERIAL; cat /sys/block/vda/serial; echo
echo RO; cat /sys/block/vda/ro /sys/block/vdb/ro | tr '\\n' ' '; echo
echo QUEUES; ls /sys/block/vda/mq | wc -l
echo DISCARD; cat /sys/block/vda/queue/discard_granularity /sys/block/vda/queue/discard_max_hw_bytes | tr '\\n' ' '; echo
echo SECTOR0; dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 16; echo
echo WRITE; printf 'written-by-linux' | dd of=/dev/vda bs=512 seek=8 conv=sync,fsync 2>/dev/null && echo ok
echo RO-WRITE; printf 'x' | dd of=/dev/vdb bs=512 seek=1 conv=sync,fsync 2>/dev/null && echo wrote || echo refused
sync
poweroff -f
";

#[test]
fn linux_virtio_blk_smoke() {
    let name = "linux_virtio_blk_smoke";
    if !available(name) {
        return;
    }
    let dir = nested_dir().join("virtio-blk-smoke");
    std::fs::create_dir_all(&dir).unwrap();
    let rw = dir.join("rw.raw");
    let mut data = vec![0u8; 8 << 20];
    data[..16].copy_from_slice(b"sector-zero-data");
    std::fs::write(&rw, &data).unwrap();
    let ro = dir.join("ro.raw");
    std::fs::write(&ro, vec![0x55u8; 1 << 20]).unwrap();
    let o = Scenario::new(name)
        .l2_kernel(Kernel::DebianStock)
        .l2_cmdline("console=ttyS0 panic=-1 quiet")
        .l1_file("/rw.raw", &rw)
        .l1_file("/ro.raw", &ro)
        .init_script(SCRIPT)
        .vireo_args(&[
            "--memory",
            "256M",
            "--cpus",
            "2",
            "--disk",
            "path=/rw.raw,format=raw,serial=nested-serial-1,queues=2",
            "--disk",
            "path=/ro.raw,format=raw,readonly=on",
        ])
        .l1_epilogue(
            "echo HOST-SECTOR8; dd if=/rw.raw bs=512 skip=8 count=1 2>/dev/null | head -c 16; echo",
        )
        .timeout(Duration::from_secs(900))
        .run()
        .unwrap();
    eprintln!("{name}: {:.1} s", o.elapsed.as_secs_f64());
    assert_eq!(o.vireo_status, Some(0), "{}", o.describe());
    assert_eq!(o.after("SIZE"), Some("16384"), "{}", o.describe());
    assert_eq!(
        o.after("SERIAL"),
        Some("nested-serial-1"),
        "{}",
        o.describe()
    );
    assert_eq!(o.after("RO"), Some("0 1"), "{}", o.describe());
    assert_eq!(o.after("QUEUES"), Some("2"), "{}", o.describe());
    assert_eq!(
        o.after("DISCARD"),
        Some("4096 1073741824"),
        "{}",
        o.describe()
    );
    assert_eq!(
        o.after("SECTOR0"),
        Some("sector-zero-data"),
        "{}",
        o.describe()
    );
    assert_eq!(o.after("WRITE"), Some("ok"), "{}", o.describe());
    assert_eq!(o.after("RO-WRITE"), Some("refused"), "{}", o.describe());
    let l1 = o.l1_lines();
    let i = l1.iter().position(|l| *l == "HOST-SECTOR8");
    assert_eq!(
        i.and_then(|i| l1.get(i + 1)).copied(),
        Some("written-by-linux"),
        "{}",
        o.describe()
    );
}
