//! The legacy devices wired on buses the way the VMM places them, driven with the accesses
//! a Linux guest makes.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vireo_boot::layout::{self, ports};
use vireo_devices::legacy::{
    AcpiPmDevice, Cmos, GedDevice, I8042Device, PostCode, SerialDevice, ACPI_PM_PORTS_LEN,
    BOOT_COMPLETE_MARKER, CMOS_PORTS_LEN, SERIAL_PORTS_LEN,
};
use vireo_devices::{Bus, PowerEvents, PowerRequest};

struct Platform {
    pio: Bus,
    mmio: Bus,
    power: Arc<PowerEvents>,
    ged: Arc<Mutex<GedDevice>>,
    post: Arc<Mutex<PostCode>>,
}

fn platform() -> Platform {
    let power = Arc::new(PowerEvents::new().unwrap());
    let pio = Bus::new();
    let serial = Arc::new(Mutex::new(SerialDevice::new(Box::new(io::sink())).unwrap()));
    pio.insert(serial, ports::SERIAL_COM1.into(), SERIAL_PORTS_LEN)
        .unwrap();
    let i8042 = Arc::new(Mutex::new(I8042Device::new(power.clone())));
    pio.insert(i8042.clone(), ports::I8042_DATA.into(), 1)
        .unwrap();
    pio.insert(i8042, ports::I8042_COMMAND.into(), 1).unwrap();
    let cmos = Arc::new(Mutex::new(Cmos::new(1 << 30)));
    pio.insert(cmos, ports::CMOS.into(), CMOS_PORTS_LEN)
        .unwrap();
    let post = Arc::new(Mutex::new(PostCode::new(Instant::now())));
    pio.insert(post.clone(), ports::POST_CODE.into(), 1)
        .unwrap();
    let pm = Arc::new(Mutex::new(AcpiPmDevice::new(power.clone())));
    pio.insert(pm, ports::ACPI_SLEEP_CONTROL.into(), ACPI_PM_PORTS_LEN)
        .unwrap();
    let mmio = Bus::new();
    let ged = Arc::new(Mutex::new(GedDevice::new().unwrap()));
    mmio.insert(
        ged.clone(),
        layout::ACPI_GED_MMIO_START,
        layout::ACPI_GED_MMIO_SIZE,
    )
    .unwrap();
    Platform {
        pio,
        mmio,
        power,
        ged,
        post,
    }
}

fn inb(bus: &Bus, port: u16) -> u8 {
    let mut b = [0u8];
    assert!(bus.read(port.into(), &mut b), "nothing at {port:#x}");
    b[0]
}

fn outb(bus: &Bus, port: u16, v: u8) {
    assert!(bus.write(port.into(), &[v]), "nothing at {port:#x}");
}

#[test]
fn acpi_poweroff_through_the_sleep_control_register() {
    let p = platform();
    // acpi_hw_extended_sleep: clear WAK_STS, then SLP_TYP | SLP_EN.
    outb(&p.pio, ports::ACPI_SLEEP_STATUS, 0x80);
    outb(
        &p.pio,
        ports::ACPI_SLEEP_CONTROL,
        (ports::ACPI_S5_SLEEP_TYPE << 2) | (1 << 5),
    );
    assert_eq!(p.power.pending(), Some(PowerRequest::Poweroff));
}

#[test]
fn reboot_through_acpi_reset_register_and_i8042() {
    let p = platform();
    outb(&p.pio, ports::ACPI_RESET, ports::ACPI_RESET_VALUE);
    assert_eq!(p.power.pending(), Some(PowerRequest::Reset));
    p.power.clear();

    // Linux's kbd reboot: wait for the input buffer to drain, then pulse reset.
    assert_eq!(inb(&p.pio, ports::I8042_COMMAND) & 0x02, 0);
    outb(&p.pio, ports::I8042_COMMAND, 0xfe);
    assert_eq!(p.power.pending(), Some(PowerRequest::Reset));
}

#[test]
fn i8042_data_and_command_ports_share_one_device() {
    let p = platform();
    outb(&p.pio, ports::I8042_COMMAND, 0xaa);
    assert_eq!(inb(&p.pio, ports::I8042_COMMAND) & 1, 1, "output full");
    assert_eq!(inb(&p.pio, ports::I8042_DATA), 0x55);
    assert_eq!(inb(&p.pio, ports::I8042_COMMAND) & 1, 0);
    assert_eq!(p.power.pending(), None);
}

#[test]
fn power_button_event_reaches_the_ged_register() {
    let p = platform();
    p.ged.lock().unwrap().notify_power_button();
    assert_eq!(p.ged.lock().unwrap().irq_evt().read().unwrap(), 1);
    let mut b = [0u8];
    assert!(p.mmio.read(layout::ACPI_GED_MMIO_START, &mut b));
    assert_eq!(b[0], 1);
    assert!(p.mmio.read(layout::ACPI_GED_MMIO_START, &mut b));
    assert_eq!(b[0], 0);
}

#[test]
fn cmos_counts_boots_in_nvram_and_post_marker() {
    let p = platform();
    for boot in 1..=3u8 {
        outb(&p.pio, ports::CMOS, 0x80 | 0x50); // NMI-disable bit set, as guests do
        let n = inb(&p.pio, ports::CMOS + 1);
        assert_eq!(n, boot - 1);
        outb(&p.pio, ports::CMOS + 1, n + 1);
    }
    outb(&p.pio, ports::CMOS, 0x0d);
    assert_eq!(inb(&p.pio, ports::CMOS + 1), 0x80, "valid RAM and time");

    outb(&p.pio, ports::POST_CODE, BOOT_COMPLETE_MARKER);
    assert!(p.post.lock().unwrap().boot_marker().is_some());
    assert_eq!(inb(&p.pio, ports::POST_CODE), BOOT_COMPLETE_MARKER);
}

/// Hostile-guest smoke test: a long pseudo-random mix of reads and writes of every width
/// on every legacy port and the GED must never panic.
#[test]
fn random_accesses_never_panic() {
    let p = platform();
    let ports: Vec<u64> = (0x3f8..0x400)
        .chain([0x60, 0x64, 0x70, 0x71, 0x80, 0x600, 0x601, 0x602])
        .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..200_000 {
        let r = next();
        let len = [1usize, 1, 1, 2, 4][(r % 5) as usize];
        let mut buf = (r >> 8).to_le_bytes();
        let data = &mut buf[..len];
        if r & (1 << 40) != 0 {
            let addr = layout::ACPI_GED_MMIO_START + (r >> 41) % layout::ACPI_GED_MMIO_SIZE;
            if r & (1 << 39) != 0 {
                p.mmio.write(addr, data);
            } else {
                p.mmio.read(addr, data);
            }
        } else {
            let port = ports[((r >> 41) % ports.len() as u64) as usize];
            if r & (1 << 39) != 0 {
                p.pio.write(port, data);
            } else {
                p.pio.read(port, data);
            }
        }
    }
}
