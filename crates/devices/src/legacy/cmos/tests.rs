use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const BASE: u64 = vireo_boot::layout::ports::CMOS as u64;

/// A CMOS on a settable clock (nanoseconds since the epoch).
fn fake(at_ns: u64) -> (Cmos, Arc<AtomicU64>) {
    let t = Arc::new(AtomicU64::new(at_ns));
    let t2 = t.clone();
    let c = Cmos::with_clock(
        512 << 20,
        Box::new(move || Duration::from_nanos(t2.load(Ordering::SeqCst))),
    );
    (c, t)
}

fn get(c: &mut Cmos, reg: u8) -> u8 {
    c.write(BASE, 0, &[reg]);
    let mut b = [0u8];
    c.read(BASE, 1, &mut b);
    b[0]
}

fn set(c: &mut Cmos, reg: u8, v: u8) {
    c.write(BASE, 0, &[reg]);
    c.write(BASE, 1, &[v]);
}

const S: u64 = 1_000_000_000;
/// 2024-02-29 23:59:58 UTC, a Thursday.
const LEAP_EVE: u64 = 1_709_251_198;

#[test]
fn calendar_conversions() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    for d in -800_000..800_000 {
        let (y, m, dd) = civil_from_days(d);
        assert_eq!(days_from_civil(y, m, dd), d);
    }
    let t = RtcTime::from_unix(LEAP_EVE as i64);
    assert_eq!(
        t,
        RtcTime {
            year: 2024,
            month: 2,
            day: 29,
            hour: 23,
            minute: 59,
            second: 58
        }
    );
    assert_eq!(t.day_of_week(), 5, "Thursday");
    assert_eq!(t.to_unix(), Some(LEAP_EVE as i64));
}

#[test]
fn default_is_bcd_24h_and_time_follows_the_clock() {
    let (mut c, t) = fake(LEAP_EVE * S);
    assert_eq!(get(&mut c, REG_B), B_24H);
    assert_eq!(get(&mut c, REG_D), D_VRT);
    assert_eq!(get(&mut c, REG_A), A_DEFAULT);
    let regs = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32];
    let read_all = |c: &mut Cmos| regs.map(|r| get(c, r));
    assert_eq!(
        read_all(&mut c),
        [0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20]
    );
    t.store((LEAP_EVE + 2) * S, Ordering::SeqCst);
    assert_eq!(
        read_all(&mut c),
        [0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x24, 0x20],
        "into Friday 1 March"
    );
}

#[test]
fn binary_and_12_hour_modes() {
    let (mut c, _) = fake(LEAP_EVE * S);
    set(&mut c, REG_B, B_BINARY | B_24H);
    assert_eq!(get(&mut c, REG_HOURS), 23);
    assert_eq!(get(&mut c, REG_SECONDS), 58);
    assert_eq!(get(&mut c, REG_CENTURY), 20);
    set(&mut c, REG_B, B_BINARY);
    assert_eq!(get(&mut c, REG_HOURS), 11 | HOUR_PM);
    set(&mut c, REG_B, 0);
    assert_eq!(get(&mut c, REG_HOURS), 0x11 | HOUR_PM);
    // 12 AM is midnight: set it in 12-hour BCD mode.
    set(&mut c, REG_HOURS, 0x12);
    set(&mut c, REG_B, B_24H);
    assert_eq!(get(&mut c, REG_HOURS), 0x00);
    set(&mut c, REG_B, 0);
    set(&mut c, REG_HOURS, 0x12 | HOUR_PM);
    set(&mut c, REG_B, B_24H);
    assert_eq!(get(&mut c, REG_HOURS), 0x12, "12 PM is noon");
}

#[test]
fn guest_sets_the_clock_with_set_bit_like_linux() {
    let (mut c, t) = fake(LEAP_EVE * S);
    // 2031-04-30 08:07:06 written field by field with updates halted; the day is written
    // before the month, so "30 February" must not be normalised on the way.
    set(&mut c, REG_B, B_SET | B_24H);
    for (reg, v) in [
        (REG_SECONDS, 0x06),
        (REG_MINUTES, 0x07),
        (REG_HOURS, 0x08),
        (REG_DAY_OF_MONTH, 0x30),
        (REG_MONTH, 0x04),
        (REG_YEAR, 0x31),
        (REG_CENTURY, 0x20),
    ] {
        set(&mut c, reg, v);
    }
    assert_eq!(
        get(&mut c, REG_DAY_OF_MONTH),
        0x30,
        "staged value reads back"
    );
    assert_eq!(get(&mut c, REG_A) & A_UIP, 0, "no update while SET");
    t.fetch_add(5 * S, Ordering::SeqCst);
    assert_eq!(get(&mut c, REG_SECONDS), 0x06, "halted while SET");
    set(&mut c, REG_B, B_24H);
    let want = RtcTime {
        year: 2031,
        month: 4,
        day: 30,
        hour: 8,
        minute: 7,
        second: 6,
    };
    assert_eq!(c.current_time(), want);
    t.fetch_add(3 * S, Ordering::SeqCst);
    assert_eq!(get(&mut c, REG_SECONDS), 0x09, "runs again");
    assert_eq!(
        get(&mut c, REG_DAY_OF_WEEK),
        0x04,
        "a Wednesday (Sunday is 1)"
    );

    // Writes outside SET apply at once; invalid ones are ignored.
    set(&mut c, REG_MINUTES, 0x45);
    assert_eq!(get(&mut c, REG_MINUTES), 0x45);
    let before = c.state().time_offset_secs;
    set(&mut c, REG_MONTH, 0x13);
    set(&mut c, REG_HOURS, 0xff);
    set(&mut c, REG_DAY_OF_MONTH, 0x00);
    assert_eq!(c.state().time_offset_secs, before);
}

#[test]
fn uip_is_only_set_just_before_a_second_ends() {
    let (mut c, t) = fake(LEAP_EVE * S + 500_000_000);
    assert_eq!(get(&mut c, REG_A) & A_UIP, 0);
    t.store(LEAP_EVE * S + 999_900_000, Ordering::SeqCst);
    assert_eq!(get(&mut c, REG_A), A_DEFAULT | A_UIP);
    t.store((LEAP_EVE + 1) * S, Ordering::SeqCst);
    assert_eq!(get(&mut c, REG_A) & A_UIP, 0, "cleared after the update");
    set(&mut c, REG_A, 0xff);
    assert_eq!(get(&mut c, REG_A) & 0x7f, 0x7f);
}

#[test]
fn status_c_clears_on_read() {
    let (mut c, t) = fake(LEAP_EVE * S);
    assert_eq!(get(&mut c, REG_C), 0);
    t.fetch_add(S, Ordering::SeqCst);
    assert_eq!(get(&mut c, REG_C), C_UF);
    assert_eq!(get(&mut c, REG_C), 0, "read clears");
    set(&mut c, REG_C, 0xff);
    set(&mut c, REG_D, 0x00);
    assert_eq!(get(&mut c, REG_C), 0);
    assert_eq!(get(&mut c, REG_D), D_VRT);
}

#[test]
fn nvram_persists_and_index_is_bounded() {
    let (mut c, _) = fake(LEAP_EVE * S);
    // Bit 7 (NMI disable) is ignored: 0x80|0x40 selects 0x40.
    set(&mut c, 0x80 | 0x40, 0xab);
    assert_eq!(get(&mut c, 0x40), 0xab);
    for r in 0x0e..0x80u8 {
        if r != REG_CENTURY {
            set(&mut c, r, r ^ 0x5a);
        }
    }
    for r in 0x0e..0x80u8 {
        if r != REG_CENTURY {
            assert_eq!(get(&mut c, r), r ^ 0x5a, "register {r:#x}");
        }
    }
    // Alarm registers are plain storage.
    set(&mut c, 0x01, 0x42);
    assert_eq!(get(&mut c, 0x01), 0x42);
    // The index port reads as floating; other odd accesses do not panic.
    let mut b = [0u8; 2];
    c.read(BASE, 0, &mut b);
    assert_eq!(b, [0xff, 0x42]);
    c.write(BASE, 5, &[1]);
    c.write(BASE, u64::MAX, &[1, 2]);
    c.read(BASE, u64::MAX, &mut b);
    // A 16-bit write sets index and data together.
    c.write(BASE, 0, &[0x50, 0x77]);
    assert_eq!(get(&mut c, 0x50), 0x77);
}

#[test]
fn memory_size_bytes() {
    let c = Cmos::with_clock(4 << 30, Box::new(|| Duration::ZERO));
    let n = &c.state().nvram;
    let w = |r: usize| u16::from_le_bytes([n[r], n[r + 1]]);
    assert_eq!(w(0x15), 640);
    assert_eq!(w(0x17), 0xffff);
    assert_eq!(w(0x30), 0xffff);
    // 3 GiB below the hole: (3 GiB - 16 MiB) / 64 KiB.
    assert_eq!(u64::from(w(0x34)), ((3u64 << 30) - (16 << 20)) / (64 << 10));
    let high = u32::from_le_bytes([n[0x5b], n[0x5c], n[0x5d], 0]);
    assert_eq!(high, (1 << 30) / (64 << 10));
    let small = Cmos::with_clock(32 << 20, Box::new(|| Duration::ZERO)).state();
    assert_eq!(
        u16::from_le_bytes([small.nvram[0x17], small.nvram[0x18]]),
        31 * 1024
    );
    assert_eq!(
        u16::from_le_bytes([small.nvram[0x34], small.nvram[0x35]]),
        256
    );
}

#[test]
fn state_round_trips_and_bad_states_are_tamed() {
    let (mut c, t) = fake(LEAP_EVE * S);
    set(&mut c, 0x60, 0x99);
    set(&mut c, REG_YEAR, 0x30);
    set(&mut c, REG_B, B_SET | B_24H);
    set(&mut c, REG_SECONDS, 0x11);
    c.write(BASE, 0, &[0x61]);
    let json = serde_json::to_string(&c.state()).unwrap();
    let (mut d, t2) = fake(0);
    t2.store(t.load(Ordering::SeqCst), Ordering::SeqCst);
    d.restore(serde_json::from_str(&json).unwrap());
    assert_eq!(d.state(), c.state());
    assert_eq!(get(&mut d, 0x60), 0x99);
    set(&mut d, REG_B, B_24H);
    assert_eq!(get(&mut d, REG_YEAR), 0x30);
    assert_eq!(get(&mut d, REG_SECONDS), 0x11);

    d.restore(CmosState {
        index: 0xff,
        nvram: vec![0xff; 3],
        time_offset_secs: i64::MIN,
        staged: Some(RtcTime {
            year: u16::MAX,
            month: 200,
            day: 0,
            hour: 99,
            minute: 255,
            second: 255,
        }),
        last_c_read_second: 0,
    });
    for r in 0..0x80u8 {
        get(&mut d, r);
        if r != REG_B {
            set(&mut d, r, 0x99);
        }
    }
    let offset = d.state().time_offset_secs;
    set(&mut d, REG_B, 0); // commit of the bogus staged time is refused
    assert_eq!(d.state().time_offset_secs, offset);
    d.restore(CmosState {
        time_offset_secs: i64::MAX,
        staged: None,
        ..d.state()
    });
    for r in 0..0x80u8 {
        get(&mut d, r);
        set(&mut d, r, 0x99);
    }
}

/// Reads the RTC's date and time in the default BCD mode.
fn bcd_now(c: &mut Cmos) -> String {
    let b = |v: u8| (v >> 4) * 10 + (v & 0xf);
    format!(
        "{:02}{:02}-{:02}-{:02} {:02}:{:02}",
        b(get(c, REG_CENTURY)),
        b(get(c, REG_YEAR)),
        b(get(c, REG_MONTH)),
        b(get(c, REG_DAY_OF_MONTH)),
        b(get(c, REG_HOURS)),
        b(get(c, REG_MINUTES)),
    )
}

fn host_date() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .expect("running date(1)");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Peer check against the host's `date -u`, retried if a minute boundary falls in between.
#[test]
fn bcd_time_matches_the_host_date() {
    let mut c = Cmos::new(256 << 20);
    for _ in 0..3 {
        let before = host_date();
        let rtc = bcd_now(&mut c);
        let after = host_date();
        if before == after {
            assert_eq!(rtc, before);
            return;
        }
    }
    panic!("host clock kept crossing minute boundaries");
}
