/*
 * vireo test guest: the CPL3 part. All checks run here, in ring 3 with
 * IOPL=3 (port I/O allowed). Only halt / IF changes / triple fault go
 * through `int $0x80` to the tiny CPL0 stubs in entry.S.
 *
 * Written from the PVH boot ABI (hvm_start_info), the ACPI specification
 * and the Intel SDM.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned long size_t;

#define NORETURN __attribute__((noreturn))

/* ------------------------------------------------------------------ */
/* Symbols from entry.S / linker.ld                                    */
/* ------------------------------------------------------------------ */
extern u8 vtg_idt[];
extern u64 vtg_pd_win[];
extern u64 pdpt[];
extern u32 pgmode_1g;
extern u8 vtg_ap_tramp_start[], vtg_ap_tramp_end[];
extern u8 __bss_start[], __bss_end[];
extern void vtg_exc0(void), vtg_exc1(void), vtg_exc2(void), vtg_exc3(void),
    vtg_exc4(void), vtg_exc5(void), vtg_exc6(void), vtg_exc7(void),
    vtg_exc8(void), vtg_exc9(void), vtg_exc10(void), vtg_exc11(void),
    vtg_exc12(void), vtg_exc13(void), vtg_exc14(void), vtg_exc15(void),
    vtg_exc16(void), vtg_exc17(void), vtg_exc18(void), vtg_exc19(void),
    vtg_exc20(void), vtg_exc21(void);
extern void vtg_irq0(void), vtg_irq_master(void), vtg_irq_slave(void),
    vtg_irq_ignore(void), vtg_syscall(void), vtg_irq_lapic(void), vtg_irq_com1(void);

volatile u64 vtg_ticks;
volatile u64 vtg_serial_irqs;
extern u32 vtg_linux64_entry; /* entry.S: 1 after the Linux 64-bit entry */

/* ------------------------------------------------------------------ */
/* Freestanding helpers (gcc may emit calls to these).                 */
/* ------------------------------------------------------------------ */
void *memset(void *d, int c, size_t n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p < *q ? -1 : 1;
    return 0;
}

static size_t slen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* ------------------------------------------------------------------ */
/* Port I/O, CPUID, TSC, int 0x80                                      */
/* ------------------------------------------------------------------ */
#define SYS_HALT_IRQ_ON 0
#define SYS_HALT_IRQ_OFF 1
#define SYS_TRIPLE_FAULT 2
#define SYS_IRQ_ON 3
#define SYS_IRQ_OFF 4
#define SYS_IRQ_WINDOW 12
#define SYS_WRMSR 13
#define SYS_POPCNT 14
#define SYS_SLEEP 15

/* Port I/O and CPUID go through the CPL0 gate (see vtg_syscall in entry.S). */
#define SYS_OUTB 5
#define SYS_OUTW 6
#define SYS_OUTL 7
#define SYS_INB 8
#define SYS_INW 9
#define SYS_INL 10
#define SYS_CPUID 11

static inline void sys_out(u32 fn, u16 port, u32 v)
{
    __asm__ volatile("ud2\n\t.byte 0x56, 0x47" ::"D"(fn), "d"((u32)port), "S"(v) : "rax", "rcx", "r11", "memory");
}
static inline u32 sys_in(u32 fn, u16 port)
{
    u32 v;
    __asm__ volatile("ud2\n\t.byte 0x56, 0x47" : "=a"(v) : "D"(fn), "d"((u32)port) : "rcx", "r11", "memory");
    return v;
}
static inline void outb(u16 port, u8 v) { sys_out(SYS_OUTB, port, v); }
static inline void outw(u16 port, u16 v) { sys_out(SYS_OUTW, port, v); }
static inline void outl(u16 port, u32 v) { sys_out(SYS_OUTL, port, v); }
static inline u8 inb(u16 port) { return (u8)sys_in(SYS_INB, port); }

static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("ud2\n\t.byte 0x56, 0x47"
                     : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d)
                     : "D"(SYS_CPUID), "S"(leaf), "c"(sub)
                     : "r11", "memory");
}

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }


static inline void sys(u32 fn) { __asm__ volatile("ud2\n\t.byte 0x56, 0x47" ::"D"(fn) : "rax", "rcx", "r11", "memory"); }

static NORETURN void halt_forever(void)
{
    /* mask the PICs so an idle guest is really idle */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    for (;;)
        sys(SYS_HALT_IRQ_ON);
}

static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }

/* ------------------------------------------------------------------ */
/* Serial console (COM1 16550)                                         */
/* ------------------------------------------------------------------ */
#define COM1 0x3f8

static void putc_(char c)
{
    u32 spins = 0;
    while (!(inb(COM1 + 5) & 0x20) && spins < 1000000)
        spins++;
    outb(COM1, (u8)c);
}

static void puts_(const char *s)
{
    while (*s) {
        if (*s == '\n')
            putc_('\r');
        putc_(*s++);
    }
}

static void put_u(u64 v)
{
    char buf[24];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        putc_(buf[--i]);
}

static void put_x(u64 v)
{
    static const char hex[] = "0123456789abcdef";
    char buf[16];
    int i = 0;
    putc_('0');
    putc_('x');
    do {
        buf[i++] = hex[v & 15];
        v >>= 4;
    } while (v);
    while (i)
        putc_(buf[--i]);
}

/* printf subset: %s %c %lu %lx (%lu/%lx the same: all 64-bit) %% */
__attribute__((format(printf, 1, 2))) static void pr(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            if (*fmt == '\n')
                putc_('\r');
            putc_(*fmt);
            continue;
        }
        fmt++;
        while (*fmt == 'l')
            fmt++;
        switch (*fmt) {
        case 's':
            puts_(__builtin_va_arg(ap, const char *));
            break;
        case 'c':
            putc_((char)__builtin_va_arg(ap, int));
            break;
        case 'u':
            put_u(__builtin_va_arg(ap, u64));
            break;
        case 'x':
            put_x(__builtin_va_arg(ap, u64));
            break;
        case '%':
            putc_('%');
            break;
        default:
            return;
        }
    }
    __builtin_va_end(ap);
}

/* ------------------------------------------------------------------ */
/* Check bookkeeping                                                   */
/* ------------------------------------------------------------------ */
static u32 checks_passed;
static char failed_list[256];
static u32 failed_len;
static int cur_failed;

static void fail(const char *name, const char *why)
{
    size_t n = slen(name);
    pr("vtg: FAIL %s: %s\n", name, why);
    /* add name once to the comma list */
    if (failed_len) {
        const char *p = failed_list;
        while (*p) {
            if (!memcmp(p, name, n) && (p[n] == ',' || p[n] == 0))
                return;
            while (*p && *p != ',')
                p++;
            if (*p)
                p++;
        }
    }
    if (failed_len + n + 2 < sizeof(failed_list)) {
        if (failed_len)
            failed_list[failed_len++] = ',';
        memcpy(failed_list + failed_len, name, n);
        failed_len += (u32)n;
        failed_list[failed_len] = 0;
    }
    cur_failed = 1;
}

static void check_begin(void) { cur_failed = 0; }
static void check_end(void)
{
    if (!cur_failed)
        checks_passed++;
}

/* ------------------------------------------------------------------ */
/* CMOS                                                                */
/* ------------------------------------------------------------------ */
static u8 cmos_read(u8 reg)
{
    outb(0x70, reg); /* plain index: not every VMM masks the NMI bit */
    return inb(0x71);
}

static void cmos_write(u8 reg, u8 v)
{
    outb(0x70, reg);
    outb(0x71, v);
}

/* ------------------------------------------------------------------ */
/* Command line                                                        */
/* ------------------------------------------------------------------ */
static const char *cmdline = "";

/* Find "key=" as a whole word; copy the value into out. */
static int cmdline_get(const char *key, char *out, size_t outsz)
{
    size_t kl = slen(key);
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!memcmp(p, key, kl) && p[kl] == '=') {
            size_t i = 0;
            p += kl + 1;
            while (*p && *p != ' ' && i + 1 < outsz)
                out[i++] = *p++;
            out[i] = 0;
            return 1;
        }
        while (*p && *p != ' ')
            p++;
    }
    return 0;
}

static int streq(const char *a, const char *b) { return slen(a) == slen(b) && !memcmp(a, b, slen(a)); }

/* ------------------------------------------------------------------ */
/* TSC calibration with PIT channel 2                                  */
/* ------------------------------------------------------------------ */
static u64 tsc_hz = 2000000000; /* until calibrated */

/*
 * TSC calibration against the local APIC timer, which KVM and QEMU both clock at 1 GHz
 * (divide-by-1), so no port I/O is needed. The LAPIC is at its reset address here (the
 * MADT has not been read yet).
 */
static void calibrate_tsc(void)
{
    const u64 apic = 0xfee00000;
    u64 t0, t1;
    u32 c0, c1, spins = 0;
    mmio_write32(apic + 0x3e0, 0xb);         /* divide by 1 */
    mmio_write32(apic + 0x320, 1u << 16);    /* masked, one-shot */
    mmio_write32(apic + 0x380, 0xffffffff);  /* initial count */
    t0 = rdtsc();
    c0 = mmio_read32(apic + 0x390);
    do {
        c1 = mmio_read32(apic + 0x390);
    } while (c0 - c1 < 10000000 && ++spins < 10000000); /* 10 ms at 1 GHz */
    t1 = rdtsc();
    mmio_write32(apic + 0x380, 0);
    if (c0 - c1 >= 10000000 && t1 > t0) {
        tsc_hz = (t1 - t0) * 1000000000ULL / (c0 - c1);
        return;
    }
    /* Fallbacks: hypervisor timing leaf 0x40000010 (kHz), CPUID 0x15,
     * CPUID 0x16 base frequency (MHz), else assume 2 GHz. */
    {
        u32 a, b, c, d, max;
        cpuid(0x40000000, 0, &a, &b, &c, &d);
        if (a >= 0x40000010 && a < 0x40000100) {
            cpuid(0x40000010, 0, &a, &b, &c, &d);
            if (a) {
                tsc_hz = (u64)a * 1000;
                pr("vtg: note tsc calibration via the LAPIC timer failed, cpuid 0x40000010 says %lu kHz\n", (u64)a);
                return;
            }
        }
        cpuid(0, 0, &max, &b, &c, &d);
        if (max >= 0x15) {
            cpuid(0x15, 0, &a, &b, &c, &d);
            if (a && b && c) {
                tsc_hz = (u64)c * b / a;
                pr("vtg: note tsc calibration via the LAPIC timer failed, cpuid 0x15 says %lu Hz\n", tsc_hz);
                return;
            }
        }
        if (max >= 0x16) {
            cpuid(0x16, 0, &a, &b, &c, &d);
            if (a) {
                tsc_hz = (u64)a * 1000000;
                pr("vtg: note tsc calibration via the LAPIC timer failed, cpuid 0x16 says %lu MHz\n", (u64)a);
                return;
            }
        }
    }
    tsc_hz = 2000000000;
    pr("vtg: note tsc calibration failed, assuming 2 GHz\n");
}

static u64 ms_to_tsc(u64 ms) { return tsc_hz / 1000 * ms; }

static void delay_us(u64 us)
{
    u64 end = rdtsc() + tsc_hz / 1000000 * us;
    while (rdtsc() < end)
        cpu_relax();
}

/* ------------------------------------------------------------------ */
/* hvm_start_info                                                      */
/* ------------------------------------------------------------------ */
struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;
    u32 memmap_entries;
    u32 reserved;
};

struct hvm_modlist_entry {
    u64 paddr;
    u64 size;
    u64 cmdline_paddr;
    u64 reserved;
};

struct e820 {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
};

static struct hvm_start_info *si;
static struct e820 *memmap;
static u32 memmap_n;

/* ------------------------------------------------------------------ */
/* Memory probing (RAM above 4 GiB goes through a window PD)           */
/* ------------------------------------------------------------------ */
#define WIN_BASE 0x4000000000UL /* PML4[0], PDPT[256] */
static u32 win_next;

/* Virtual address for physical `pa`; *ok = 0 if the window is full. */
static volatile u64 *phys_ptr(u64 pa, int *ok)
{
    u64 slot;
    *ok = 1;
    if (pa < 0x100000000UL)
        return (volatile u64 *)pa;
    if (win_next >= 512) {
        *ok = 0;
        return 0;
    }
    if (!pdpt[256])
        pdpt[256] = (u64)vtg_pd_win | 7;
    /* Slots are never reused, so no TLB flush is needed (not-present
     * entries are never cached). */
    slot = win_next++;
    vtg_pd_win[slot] = (pa & ~0x1fffffUL) | 0x87;
    return (volatile u64 *)(WIN_BASE + slot * 0x200000 + (pa & 0x1fffff));
}

static int probe_page(u64 pa)
{
    int ok;
    volatile u64 *p = phys_ptr(pa, &ok);
    volatile u64 *q;
    u64 s0, s1;
    if (!ok)
        return 0;
    q = p + 511;
    s0 = *p;
    s1 = *q;
    *p = 0x5a5a0f0fa5a5f0f0UL ^ pa;
    *q = ~(0x5a5a0f0fa5a5f0f0UL ^ pa);
    ok = *p == (0x5a5a0f0fa5a5f0f0UL ^ pa) && *q == ~(0x5a5a0f0fa5a5f0f0UL ^ pa);
    *p = s0;
    *q = s1;
    return ok;
}

/* ------------------------------------------------------------------ */
/* ACPI                                                                */
/* ------------------------------------------------------------------ */
struct acpi_hdr {
    char sig[4];
    u32 length;
    u8 revision;
    u8 checksum;
    char oem[6];
    char oem_table[8];
    u32 oem_rev;
    u32 creator;
    u32 creator_rev;
} __attribute__((packed));

struct gas {
    u8 space;
    u8 width;
    u8 offset;
    u8 access;
    u64 addr;
} __attribute__((packed));

static u8 sum8(const void *p, u32 n)
{
    const u8 *b = p;
    u8 s = 0;
    while (n--)
        s = (u8)(s + *b++);
    return s;
}

static int acpi_ok;
static u8 *fadt;
static u32 fadt_len;
static u8 *dsdt;
static u32 madt_cpus;
static u64 lapic_base = 0xfee00000;
static u32 madt_ids[256];
static u32 madt_nids;
static int hw_reduced;
static u8 rtc_century_reg;

static u32 rd32(const u8 *p) { return p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }
static u64 rd64(const u8 *p) { return rd32(p) | (u64)rd32(p + 4) << 32; }

static u8 *find_rsdp_in(u64 start, u64 end)
{
    for (u64 a = start; a + 20 <= end; a += 16)
        if (!memcmp((void *)a, "RSD PTR ", 8) && sum8((void *)a, 20) == 0)
            return (u8 *)a;
    return 0;
}

static void check_table_sum(struct acpi_hdr *h, char *tables, u32 *tl)
{
    char name[5];
    memcpy(name, h->sig, 4);
    name[4] = 0;
    if (*tl && *tl < 200)
        tables[(*tl)++] = ',';
    if (*tl < 200) {
        memcpy(tables + *tl, name, 4);
        *tl += 4;
        tables[*tl] = 0;
    }
    if (h->length < sizeof(*h) || h->length > 0x1000000 || sum8(h, h->length) != 0) {
        char why[48] = "bad checksum in table ";
        memcpy(why + slen(why), name, 5);
        fail("acpi", why);
    }
}

static void parse_madt(u8 *m, u32 len)
{
    lapic_base = rd32(m + 36);
    for (u32 off = 44; off + 2 <= len;) {
        u8 type = m[off], l = m[off + 1];
        if (l < 2)
            break;
        if (type == 0 && l >= 8) { /* Processor Local APIC */
            u32 flags = rd32(m + off + 4);
            if (flags & 1) {
                if (madt_nids < 256)
                    madt_ids[madt_nids++] = m[off + 3];
                madt_cpus++;
            }
        } else if (type == 9 && l >= 16) { /* Processor Local x2APIC */
            u32 flags = rd32(m + off + 8);
            if (flags & 1) {
                if (madt_nids < 256)
                    madt_ids[madt_nids++] = rd32(m + off + 4);
                madt_cpus++;
            }
        } else if (type == 5 && l >= 12) { /* LAPIC address override */
            lapic_base = rd64(m + off + 4);
        }
        off += l;
    }
}

static int acpi_tried;
static int rsdp_scan; /* vtg.rsdp-scan=1: ignore rsdp_paddr, scan like rsdp_paddr=0 */

static void check_acpi(void)
{
    u8 *rsdp = 0;
    char tables[208];
    u32 tl = 0;
    u8 *root;
    int is_x;
    u32 n, esz;

    tables[0] = 0;
    acpi_tried = 1;
    if (!rsdp_scan && si->rsdp_paddr) {
        rsdp = (u8 *)si->rsdp_paddr;
        if (memcmp(rsdp, "RSD PTR ", 8)) {
            fail("acpi", "start_info rsdp_paddr does not point at an RSDP");
            return;
        }
    } else {
        u64 bda = 0x40e; /* BDA word: EBDA segment */
        u64 ebda;
        __asm__("" : "+r"(bda)); /* hide the constant low address from gcc's bounds warnings */
        ebda = (u64)(*(volatile u16 *)bda) << 4;
        if (ebda >= 0x80000 && ebda < 0xa0000)
            rsdp = find_rsdp_in(ebda, ebda + 1024);
        if (!rsdp)
            rsdp = find_rsdp_in(0xe0000, 0x100000);
        if (!rsdp) {
            fail("acpi", "no RSDP found (start_info rsdp_paddr=0, EBDA/BIOS scan)");
            return;
        }
    }
    if (sum8(rsdp, 20)) {
        fail("acpi", "RSDP checksum");
        return;
    }
    if (rsdp[15] >= 2 && (rd32(rsdp + 20) < 36 || sum8(rsdp, rd32(rsdp + 20)))) {
        fail("acpi", "RSDP extended checksum");
        return;
    }
    if (rsdp[15] >= 2 && rd64(rsdp + 24)) {
        root = (u8 *)rd64(rsdp + 24);
        is_x = 1;
        esz = 8;
        if (memcmp(root, "XSDT", 4)) {
            fail("acpi", "XSDT signature");
            return;
        }
    } else {
        root = (u8 *)(u64)rd32(rsdp + 16);
        is_x = 0;
        esz = 4;
        if (rsdp[15] >= 2)
            fail("acpi", "RSDP revision >= 2 without XSDT");
        if (memcmp(root, "RSDT", 4)) {
            fail("acpi", "RSDT signature");
            return;
        }
    }
    if (rd32(root + 4) < 36 || rd32(root + 4) > 0x10000) {
        fail("acpi", is_x ? "implausible XSDT length" : "implausible RSDT length");
        return;
    }
    if (sum8(root, rd32(root + 4))) {
        fail("acpi", is_x ? "bad checksum in table XSDT" : "bad checksum in table RSDT");
        return;
    }
    n = (rd32(root + 4) - 36) / esz;
    for (u32 i = 0; i < n; i++) {
        u64 a = is_x ? rd64(root + 36 + 8 * i) : rd32(root + 36 + 4 * i);
        struct acpi_hdr *h = (struct acpi_hdr *)a;
        if (!a || a >= 0x100000000UL) {
            fail("acpi", "table pointer out of range");
            continue;
        }
        check_table_sum(h, tables, &tl);
        if (h->length < sizeof(*h) || h->length > 0x1000000)
            continue;
        if (!memcmp(h->sig, "FACP", 4)) {
            fadt = (u8 *)h;
            fadt_len = h->length;
        } else if (!memcmp(h->sig, "APIC", 4)) {
            parse_madt((u8 *)h, h->length);
        }
    }
    if (!fadt) {
        fail("acpi", "no FADT");
    } else {
        u64 d = 0;
        if (fadt_len >= 148)
            d = rd64(fadt + 140);
        if (!d)
            d = rd32(fadt + 40);
        if (fadt_len >= 116)
            hw_reduced = (rd32(fadt + 112) >> 20) & 1;
        if (fadt_len >= 109)
            rtc_century_reg = fadt[108];
        if (!d || d >= 0x100000000UL || memcmp((void *)d, "DSDT", 4)) {
            fail("acpi", "no DSDT");
        } else {
            check_table_sum((struct acpi_hdr *)d, tables, &tl);
            if (rd32((u8 *)d + 4) >= 36 && rd32((u8 *)d + 4) <= 0x1000000)
                dsdt = (u8 *)d;
        }
    }
    if (!madt_cpus)
        fail("acpi", "no MADT or no enabled CPUs in it");
    acpi_ok = fadt && dsdt;
    pr("vtg: acpi rsdp=ok %s=ok tables=%s madt_cpus=%lu hw_reduced=%lu\n", is_x ? "xsdt" : "rsdt",
       tables, (u64)madt_cpus, (u64)hw_reduced);
}

/* _S5_ from the DSDT: Name(_S5_, Package(){SLP_TYPa, SLP_TYPb, ...}) */
static int s5_value(u8 **pp, u8 *end, u32 *out)
{
    u8 *p = *pp;
    if (p >= end)
        return 0;
    switch (*p) {
    case 0x00: *out = 0; p += 1; break; /* ZeroOp */
    case 0x01: *out = 1; p += 1; break; /* OneOp */
    case 0xff: *out = 0xff; p += 1; break; /* OnesOp */
    case 0x0a: *out = p[1]; p += 2; break; /* BytePrefix */
    case 0x0b: *out = p[1] | p[2] << 8; p += 3; break; /* WordPrefix */
    case 0x0c: *out = rd32(p + 1); p += 5; break; /* DWordPrefix */
    default:
        if (*p < 0x0a) { *out = *p; p += 1; break; } /* bare byte (tolerated) */
        return 0;
    }
    *pp = p;
    return 1;
}

static int find_s5(u32 *typa, u32 *typb)
{
    u32 len;
    if (!dsdt)
        return 0;
    len = rd32(dsdt + 4);
    for (u32 i = 36; i + 8 < len; i++) {
        u8 *p = dsdt + i, *end = dsdt + len;
        if (memcmp(p, "_S5_", 4))
            continue;
        p += 4;
        if (*p != 0x12) /* PackageOp */
            continue;
        p++;
        p += 1 + (*p >> 6); /* PkgLength */
        p++;                /* NumElements */
        if (!s5_value(&p, end, typa))
            continue;
        if (!s5_value(&p, end, typb))
            *typb = *typa;
        return 1;
    }
    return 0;
}

static void gas_write(const u8 *g, u32 v, int bytes)
{
    const struct gas *r = (const struct gas *)g;
    if (r->space == 1) { /* system I/O */
        if (bytes == 1)
            outb((u16)r->addr, (u8)v);
        else if (bytes == 2)
            outw((u16)r->addr, (u16)v);
        else
            outl((u16)r->addr, v);
    } else if (r->space == 0 && r->addr < 0x100000000UL) { /* memory */
        if (bytes == 1)
            *(volatile u8 *)r->addr = (u8)v;
        else if (bytes == 2)
            *(volatile u16 *)r->addr = (u16)v;
        else
            *(volatile u32 *)r->addr = v;
    }
}

/* ------------------------------------------------------------------ */
/* CPUID                                                               */
/* ------------------------------------------------------------------ */
static u32 bsp_apic_id;

static void check_cpuid(void)
{
    u32 a, b, c, d, max, maxx;
    char vendor[13], brand[49];
    const char *br = brand;
    u32 l1_logical, lb_logical = 0, lapic_id;
    u32 leaf1_ecx, leaf7_ebx = 0;
    int has_b = 0;

    cpuid(0, 0, &max, &b, &c, &d);
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    brand[0] = 0;
    cpuid(0x80000000, 0, &maxx, &b, &c, &d);
    if (maxx >= 0x80000004) {
        u32 *w = (u32 *)brand;
        for (u32 i = 0; i < 3; i++)
            cpuid(0x80000002 + i, 0, &w[4 * i], &w[4 * i + 1], &w[4 * i + 2], &w[4 * i + 3]);
        brand[48] = 0;
        while (*br == ' ')
            br++;
    }
    cpuid(1, 0, &a, &b, &c, &d);
    leaf1_ecx = c;
    bsp_apic_id = b >> 24;
    l1_logical = (d & (1u << 28)) ? (b >> 16) & 0xff : 1;
    if (max >= 0xb) {
        u32 x2id = 0;
        for (u32 sub = 0; sub < 8; sub++) {
            cpuid(0xb, sub, &a, &b, &c, &d);
            if (((c >> 8) & 0xff) == 0)
                break;
            has_b = 1;
            lb_logical = b & 0xffff;
            x2id = d;
        }
        if (has_b && (x2id & 0xff) != bsp_apic_id)
            fail("cpuid", "leaf 0xB x2APIC ID does not match leaf 1 APIC ID");
    }
    if (max >= 7)
        cpuid(7, 0, &a, &leaf7_ebx, &c, &d);
    pr("vtg: cpuid vendor=%s brand=\"%s\" apic_id=%lu max_leaf=%lx leaf1_logical=%lu leafB_logical=%lu "
       "leaf1_ecx=%lx leaf7_ebx=%lx\n",
       vendor, br, (u64)bsp_apic_id, (u64)max, (u64)l1_logical, (u64)lb_logical, (u64)leaf1_ecx,
       (u64)leaf7_ebx);
    if (lapic_base >= 0x100000000UL) {
        fail("cpuid", "LAPIC base above 4 GiB");
        return;
    }
    lapic_id = mmio_read32(lapic_base + 0x20) >> 24;
    if (lapic_id != bsp_apic_id)
        fail("cpuid", "leaf 1 EBX[31:24] differs from the LAPIC ID register");
    if (madt_cpus) {
        int found = 0;
        for (u32 i = 0; i < madt_nids; i++)
            if (madt_ids[i] == bsp_apic_id)
                found = 1;
        if (!found)
            fail("cpuid", "BSP APIC ID not listed in the MADT");
    }
    if (has_b && madt_cpus && lb_logical < madt_cpus)
        fail("cpuid", "leaf 0xB logical processor count < MADT CPUs");
}

/* ------------------------------------------------------------------ */
/* SMP bring-up: INIT / SIPI / SIPI to every other MADT CPU            */
/* ------------------------------------------------------------------ */
#define AP_TRAMP 0x3000
#define AP_BITMAP 0x3f00

static void icr_send(u32 dest, u32 lo)
{
    u32 spins = 0;
    mmio_write32(lapic_base + 0x310, dest << 24);
    mmio_write32(lapic_base + 0x300, lo);
    while ((mmio_read32(lapic_base + 0x300) & (1u << 12)) && spins < 100000)
        spins++;
}

static u32 bitmap_count(volatile u32 *bm)
{
    u32 n = 0;
    for (u32 i = 0; i < 8; i++)
        for (u32 v = bm[i]; v; v &= v - 1)
            n++;
    return n;
}

static void check_smp(void)
{
    volatile u32 *bm = (volatile u32 *)AP_BITMAP;
    u64 deadline;
    u32 up, sent = 0;

    memcpy((void *)AP_TRAMP, vtg_ap_tramp_start, (size_t)(vtg_ap_tramp_end - vtg_ap_tramp_start));
    for (u32 i = 0; i < 8; i++)
        bm[i] = 0;
    bm[bsp_apic_id / 32] |= 1u << (bsp_apic_id % 32);
    __asm__ volatile("mfence" ::: "memory");

    /* INIT to all, 10 ms, SIPI to all, 200 us, SIPI to all (still-missing only). */
    for (u32 i = 0; i < madt_nids; i++)
        if (madt_ids[i] != bsp_apic_id && madt_ids[i] < 255) {
            icr_send(madt_ids[i], 0x00004500);
            sent++;
        }
    if (sent) {
        delay_us(10000);
        for (u32 i = 0; i < madt_nids; i++)
            if (madt_ids[i] != bsp_apic_id && madt_ids[i] < 255)
                icr_send(madt_ids[i], 0x00004600 | (AP_TRAMP >> 12));
        delay_us(200);
        for (u32 i = 0; i < madt_nids; i++) {
            u32 id = madt_ids[i];
            if (id != bsp_apic_id && id < 255 && !(bm[id / 32] & (1u << (id % 32))))
                icr_send(id, 0x00004600 | (AP_TRAMP >> 12));
        }
    }
    deadline = rdtsc() + ms_to_tsc(2000);
    while ((up = bitmap_count(bm)) < madt_cpus && rdtsc() < deadline)
        cpu_relax();
    pr("vtg: smp cpus_up=%lu/%lu apic_ids=", (u64)up, (u64)madt_cpus);
    {
        int first = 1;
        for (u32 id = 0; id < 256; id++)
            if (bm[id / 32] & (1u << (id % 32))) {
                pr(first ? "%lu" : ",%lu", (u64)id);
                first = 0;
            }
    }
    pr("\n");
    if (up != madt_cpus)
        fail("smp", "not all MADT CPUs came up");
}

/* ------------------------------------------------------------------ */
/* Timer: PIT ch0 1 kHz via the 8259 on vector 0x20                    */
/* ------------------------------------------------------------------ */
/* Counts ticks for `ms` milliseconds (bounded by the TSC), taking interrupts in short CPL0
 * windows as a kernel's idle loop does: some hosts deliver external interrupts only while
 * the guest is in kernel mode. */
static u64 count_ticks(u32 ms, u64 want)
{
    u64 deadline = rdtsc() + ms_to_tsc(ms);
    vtg_ticks = 0;
    while (vtg_ticks < want && rdtsc() < deadline)
        sys(SYS_IRQ_WINDOW);
    return vtg_ticks;
}

/*
 * Timer interrupts from both sources a PC guest uses: the 8254 PIT through the 8259 in
 * virtual-wire mode (LINT0 = ExtINT, as the VMM promises) and the local APIC timer (what
 * Linux runs on).
 */
static void check_timer(void)
{
    u64 pit, lapic;
    /* 8259 init: edge, cascade, vectors 0x20/0x28, 8086 mode */
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, 0x20);
    outb(0xa1, 0x28);
    outb(0x21, 0x04);
    outb(0xa1, 0x02);
    outb(0x21, 0x01);
    outb(0xa1, 0x01);
    outb(0x21, 0xfe); /* only IRQ0 */
    outb(0xa1, 0xff);
    /* PIT ch0, lo/hi, mode 2, 1193182/1193 ~ 1000 Hz */
    outb(0x43, 0x34);
    outb(0x40, 1193 & 0xff);
    outb(0x40, 1193 >> 8);
    pit = count_ticks(1000, 10);
    outb(0x43, 0x30); /* channel 0 back to one-shot: silence */

    /* COM1's interrupt (IRQ 4): enable the THR-empty interrupt, send a byte, take the
     * interrupt through the 8259. */
    outb(0x21, 0xef); /* only IRQ4 */
    vtg_serial_irqs = 0;
    outb(COM1 + 1, 0x02);
    putc_('\r');
    {
        u64 deadline = rdtsc() + ms_to_tsc(1000);
        while (vtg_serial_irqs == 0 && rdtsc() < deadline)
            sys(SYS_IRQ_WINDOW);
    }
    outb(COM1 + 1, 0x00);
    (void)inb(COM1 + 2); /* IIR read acknowledges the UART */
    outb(0x21, 0xff);

    /* LAPIC timer: periodic, vector 0x30, divide by 1, ~1 ms at KVM's 1 GHz APIC clock. */
    mmio_write32(lapic_base + 0x3e0, 0xb);
    mmio_write32(lapic_base + 0x320, 0x30 | (1u << 17));
    mmio_write32(lapic_base + 0x380, 1000000);
    lapic = count_ticks(5000, 10);
    mmio_write32(lapic_base + 0x320, 1u << 16); /* masked */
    mmio_write32(lapic_base + 0x380, 0);

    pr("vtg: timer ticks=%lu pit_ticks=%lu serial_irqs=%lu\n", lapic, pit, (u64)vtg_serial_irqs);
    if (vtg_serial_irqs == 0)
        fail("timer", "no COM1 interrupt (IRQ 4) through the 8259");
    if (pit == 0)
        pr("vtg: note no PIT interrupt via the 8259 (lapic svr=%lx lint0=%lx)\n",
           (u64)mmio_read32(lapic_base + 0xf0), (u64)mmio_read32(lapic_base + 0x350));
    if (pit < 10)
        fail("timer", "fewer than 10 PIT interrupts through the 8259 (virtual wire) within 1 s");
    if (lapic == 0)
        fail("timer", "no local APIC timer interrupt within 5 s");
    else if (lapic < 10)
        fail("timer", "fewer than 10 local APIC timer interrupts within 5 s");
}

/* ------------------------------------------------------------------ */
/* RTC                                                                 */
/* ------------------------------------------------------------------ */
static void put2(u32 v)
{
    putc_((char)('0' + (v / 10) % 10));
    putc_((char)('0' + v % 10));
}

static u32 bcd(u8 v) { return (v & 15) + (v >> 4) * 10; }

/* ------------------------------------------------------------------ */
/* KVM clock (pvclock)                                                 */
/* ------------------------------------------------------------------ */
struct pvclock {
    u32 version;
    u32 pad0;
    u64 tsc_timestamp;
    u64 system_time;
    u32 tsc_to_system_mul;
    signed char tsc_shift;
    u8 flags;
    u8 pad[2];
};
static struct pvclock kvmclock_area __attribute__((aligned(64)));

static u64 kvmclock_now(void)
{
    volatile struct pvclock *p = &kvmclock_area;
    u32 v;
    u64 t;
    do {
        v = p->version;
        __asm__ volatile("" ::: "memory");
        u64 delta = rdtsc() - p->tsc_timestamp;
        if (p->tsc_shift < 0)
            delta >>= -p->tsc_shift;
        else
            delta <<= p->tsc_shift;
        t = p->system_time + (u64)(((unsigned __int128)delta * p->tsc_to_system_mul) >> 32);
        __asm__ volatile("" ::: "memory");
    } while ((v & 1) || v != p->version);
    return t;
}

/* The KVM clock: the hypervisor signature and feature bit, then kvmclock itself (MSR
 * 0x4b564d01) compared with the TSC over ~20 ms. Skipped under other hypervisors. */
static void check_kvmclock(void)
{
    u32 a, b, c, d;
    u64 k0, k1, t0, t1, kvm_ns, tsc_ns;
    char sig[13];
    cpuid(0x40000000, 0, &a, &b, &c, &d);
    memcpy(sig, &b, 4);
    memcpy(sig + 4, &c, 4);
    memcpy(sig + 8, &d, 4);
    sig[12] = 0;
    if (!streq(sig, "KVMKVMKVM")) {
        pr("vtg: kvmclock skipped (hypervisor \"%s\")\n", sig);
        return;
    }
    cpuid(0x40000001, 0, &a, &b, &c, &d);
    if (!(a & (1u << 3))) {
        fail("kvmclock", "KVM_FEATURE_CLOCKSOURCE2 not offered");
        return;
    }
    __asm__ volatile("ud2\n\t.byte 0x56, 0x47" ::"D"(SYS_WRMSR), "S"(0x4b564d01u),
                     "d"((u64)&kvmclock_area | 1)
                     : "rax", "rcx", "r11", "memory");
    if (kvmclock_area.tsc_to_system_mul == 0) {
        fail("kvmclock", "the hypervisor did not fill in the pvclock area");
        return;
    }
    k0 = kvmclock_now();
    t0 = rdtsc();
    delay_us(20000);
    k1 = kvmclock_now();
    t1 = rdtsc();
    kvm_ns = k1 - k0;
    tsc_ns = (t1 - t0) * 1000000000ULL / tsc_hz;
    pr("vtg: kvmclock ok elapsed_ns=%lu tsc_ns=%lu\n", kvm_ns, tsc_ns);
    if (k1 <= k0 || kvm_ns * 10 < tsc_ns * 8 || kvm_ns * 10 > tsc_ns * 12)
        fail("kvmclock", "kvmclock and the TSC disagree by more than 20%");
}

static void check_rtc(void)
{
    u8 r[7], r2[7], sb;
    u32 sec, min, hour, day, mon, year, cent = 20;
    u64 deadline = rdtsc() + ms_to_tsc(1500);
    static const u8 regs[7] = {0, 2, 4, 7, 8, 9, 0x32};
    int stable = 0;

    for (int tries = 0; tries < 10 && !stable; tries++) {
        while ((cmos_read(0x0a) & 0x80) && rdtsc() < deadline)
            cpu_relax();
        for (int i = 0; i < 7; i++)
            r[i] = cmos_read(regs[i] == 0x32 && rtc_century_reg ? rtc_century_reg : regs[i]);
        while ((cmos_read(0x0a) & 0x80) && rdtsc() < deadline)
            cpu_relax();
        for (int i = 0; i < 7; i++)
            r2[i] = cmos_read(regs[i] == 0x32 && rtc_century_reg ? rtc_century_reg : regs[i]);
        stable = !memcmp(r, r2, 7);
    }
    sb = cmos_read(0x0b);
    {
        u8 pm = r[2] & 0x80;
        u8 h = r[2] & 0x7f;
        if (sb & 0x04) {
            sec = r[0], min = r[1], hour = h, day = r[3], mon = r[4], year = r[5], cent = r[6];
        } else {
            sec = bcd(r[0]), min = bcd(r[1]), hour = bcd(h), day = bcd(r[3]), mon = bcd(r[4]),
            year = bcd(r[5]), cent = bcd(r[6]);
        }
        if (!(sb & 0x02)) { /* 12-hour mode */
            if (hour == 12)
                hour = 0;
            if (pm)
                hour += 12;
        }
    }
    if (cent < 19 || cent > 30)
        cent = 20;
    year += cent * 100;
    pr("vtg: rtc %lu-", (u64)year);
    put2(mon);
    putc_('-');
    put2(day);
    putc_(' ');
    put2(hour);
    putc_(':');
    put2(min);
    putc_(':');
    put2(sec);
    pr("\n");
    if (!stable)
        fail("rtc", "RTC never stable (UIP)");
    else if (sec > 59 || min > 59 || hour > 23 || day < 1 || day > 31 || mon < 1 || mon > 12)
        fail("rtc", "RTC value out of range");
}

/* ------------------------------------------------------------------ */
/* Actions                                                             */
/* ------------------------------------------------------------------ */
/* The virtio-pci driver (vtg.action=rng): a file of its own, built as part of this one. */
#include "virtio.c"
/* virtio-console, virtio-balloon and virtio-vsock drivers, on virtio.c's helpers. */
#include "virtio_misc.c"
/* virtio-net driver (vtg.action=virtio-net). */
#include "virtio_net.c"
/* virtio-blk driver (vtg.action=virtio-blk). */
#include "virtio_blk.c"

static char action[32] = "poweroff";
static u32 boot_count;

static void wait_ms(u64 ms)
{
    u64 end = rdtsc() + ms_to_tsc(ms);
    while (rdtsc() < end)
        cpu_relax();
}

static void do_poweroff(void)
{
    u32 ta = 0, tb = 0;
    if (!fadt) {
        pr("vtg: FAIL action: no FADT, cannot power off\n");
        return;
    }
    if (!find_s5(&ta, &tb)) {
        pr("vtg: FAIL action: no _S5_ package in the DSDT\n");
        return;
    }
    if (hw_reduced) {
        if (fadt_len >= 256 && rd64(fadt + 244 + 4))
            gas_write(fadt + 244, ((ta & 7) << 2) | (1u << 5), 1);
        else
            pr("vtg: FAIL action: hardware-reduced FADT without SLEEP_CONTROL_REG\n");
    } else {
        u32 va = ((ta & 7) << 10) | (1u << 13), vb = ((tb & 7) << 10) | (1u << 13);
        if (fadt_len >= 184 && rd64(fadt + 172 + 4))
            gas_write(fadt + 172, va, 2);
        else if (rd32(fadt + 64))
            outw((u16)rd32(fadt + 64), (u16)va);
        else
            pr("vtg: FAIL action: FADT without PM1a_CNT_BLK\n");
        if (fadt_len >= 196 && rd64(fadt + 184 + 4))
            gas_write(fadt + 184, vb, 2);
        else if (rd32(fadt + 68))
            outw((u16)rd32(fadt + 68), (u16)vb);
    }
    wait_ms(200);
}

static void do_reset_kbd(void)
{
    u32 spins = 0;
    while ((inb(0x64) & 0x02) && spins < 100000)
        spins++;
    outb(0x64, 0xfe);
    wait_ms(200);
}

static void do_reset(void)
{
    if (fadt && fadt_len >= 129 && (rd32(fadt + 112) & (1u << 10))) {
        gas_write(fadt + 116, fadt[128], 1);
        wait_ms(200);
    }
    do_reset_kbd();
}

static int in_action;

/* AML integer at *p (ZeroOp, OneOp, Byte/Word/DWord/QWordPrefix); 0 if it is none. */
static int aml_integer(const u8 *p, const u8 *end, u64 *out)
{
    if (p >= end)
        return 0;
    switch (*p) {
    case 0x00: *out = 0; return 1;
    case 0x01: *out = 1; return 1;
    case 0x0a: if (p + 2 > end) return 0; *out = p[1]; return 1;
    case 0x0b: if (p + 3 > end) return 0; *out = p[1] | (u64)p[2] << 8; return 1;
    case 0x0c: if (p + 5 > end) return 0; *out = rd32(p + 1); return 1;
    case 0x0e: if (p + 9 > end) return 0; *out = rd64(p + 1); return 1;
    }
    return 0;
}

/* vireo's ACPI GED event register: the DSDT's `OperationRegion (GDST, SystemMemory,
 * <address>, ...)` (bytes 5B 80 'GDST' 00 <integer>). 0 if there is none. */
static u64 find_ged_register(void)
{
    u32 len;
    if (!dsdt)
        return 0;
    len = rd32(dsdt + 4);
    for (u32 i = 36; i + 7 < len; i++) {
        u8 *p = dsdt + i;
        u64 addr;
        if (p[0] != 0x5b || p[1] != 0x80 || memcmp(p + 2, "GDST", 4) || p[6] != 0x00)
            continue;
        if (aml_integer(p + 7, dsdt + len, &addr))
            return addr;
    }
    return 0;
}

/* Waits for the ACPI power button: polls the GED register (reading it clears the pending
 * events, as the DSDT's _EVT does) once per ~10 ms LAPIC timer tick, sleeping in between.
 * Returns when bit 0 (power button) is seen. Each poll is an MMIO exit to the VMM, so the
 * VMM's exit counters show whether the guest is running. */
static void wait_power_button(void)
{
    u64 reg = find_ged_register();
    if (!reg || reg >= 0x100000000UL) {
        pr("vtg: FAIL action: no GED register (GDST) in the DSDT\n");
        halt_forever();
    }
    pr("vtg: waiting for the power button (GED at %lx)\n", reg);
    outb(0x21, 0xff); /* only the LAPIC timer wakes us */
    outb(0xa1, 0xff);
    mmio_write32(lapic_base + 0x3e0, 0xb);               /* divide by 1 */
    mmio_write32(lapic_base + 0x320, 0x30 | (1u << 17)); /* periodic, vector 0x30 */
    mmio_write32(lapic_base + 0x380, 10000000);          /* ~10 ms at 1 GHz */
    while (!(*(volatile u8 *)reg & 0x01))
        sys(SYS_SLEEP);
    mmio_write32(lapic_base + 0x320, 1u << 16);
    mmio_write32(lapic_base + 0x380, 0);
    pr("vtg: power button pressed\n");
}

/* Reads one line from COM1 (polling LSR data-ready; bounded to 30 s and 200 bytes) and
 * prints it back: tests console input from the VMM's host side. */
static void echo_line(void)
{
    char line[201];
    u32 n = 0;
    u64 deadline = rdtsc() + ms_to_tsc(30000);
    pr("vtg: echo ready\n");
    while (n < sizeof(line) - 1 && rdtsc() < deadline) {
        if (!(inb(COM1 + 5) & 0x01))
            continue;
        char c = (char)inb(COM1);
        if (c == '\n' || c == '\r')
            break;
        line[n++] = c;
    }
    line[n] = 0;
    pr("vtg: echo %s\n", line);
}

static NORETURN void run_action(void)
{
    const char *a = action;
    in_action = 1;
    if (streq(a, "reboot-once"))
        a = boot_count == 0 ? "reboot" : "poweroff";
    pr("vtg: action %s\n", action);
    if (streq(a, "echo")) {
        echo_line();
        a = "poweroff";
    } else if (streq(a, "wait-powerbutton")) {
        wait_power_button();
        a = "poweroff";
    } else if (streq(a, "rng")) {
        virtio_rng_action();
        a = "poweroff";
    } else if (streq(a, "virtio-console")) {
        virtio_console_action();
        a = "poweroff";
    } else if (streq(a, "virtio-balloon")) {
        virtio_balloon_action();
        a = "poweroff";
    } else if (streq(a, "virtio-vsock")) {
        virtio_vsock_action();
        a = "poweroff";
    } else if (streq(a, "virtio-net")) {
        virtio_net_action();
        a = "poweroff";
    } else if (streq(a, "virtio-blk")) {
        char v[4];
        virtio_blk_action();
        /* vtg.blk-reboot-once=1: the first boot resets the VM, the second powers off. */
        int again = cmdline_get("vtg.blk-reboot-once", v, sizeof(v)) && streq(v, "1");
        a = again && boot_count == 0 ? "reboot" : "poweroff";
    }
    if (streq(a, "poweroff")) {
        do_poweroff();
    } else if (streq(a, "reboot")) {
        do_reset();
    } else if (streq(a, "reset-kbd")) {
        do_reset_kbd();
    } else if (streq(a, "halt")) {
        halt_forever();
    } else if (streq(a, "triple-fault")) {
        sys(SYS_TRIPLE_FAULT);
    } else if (streq(a, "pvpanic")) {
        /* What Linux does on panic with panic=-1: report through pvpanic, then reset. */
        pr("vtg: pvpanic features %u\n", (u32)inb(0x505));
        outb(0x505, 1);
        do_reset();
    } else if (streq(a, "popcnt-cpl0")) {
        sys(SYS_POPCNT);
    } else {
        pr("vtg: FAIL action: unknown action %s\n", action);
        halt_forever();
    }
    pr("vtg: FAIL action: %s did not take effect\n", a);
    halt_forever();
}

static void print_result(void)
{
    if (failed_len)
        pr("vtg: result FAIL failed=%s\n", failed_list);
    else
        pr("vtg: result PASS checks=%lu\n", (u64)checks_passed);
}

/* Entered (at CPL3, own stack) when a CPL3 exception happened. */
NORETURN void vtg_exception(u64 vec, u64 err, u64 rip, u64 cr2)
{
    static int nested;
    if (nested++) {
        pr("vtg: FAIL exception: nested vector=%lu rip=%lx\n", vec, rip);
        for (;;)
            sys(SYS_HALT_IRQ_OFF);
    }
    pr("vtg: FAIL exception: vector=%lu error=%lx rip=%lx cr2=%lx\n", vec, err, rip, cr2);
    fail("exception", "unexpected CPU exception");
    if (in_action) {
        for (;;)
            sys(SYS_HALT_IRQ_OFF);
    }
    /* poweroff/reset need the FADT: discover ACPI if not done yet */
    if (!acpi_tried && si && si->magic == 0x336ec578)
        check_acpi();
    print_result();
    run_action();
}

/* ------------------------------------------------------------------ */
/* IDT (filled at CPL3: the IDT page is user-writable)                 */
/* ------------------------------------------------------------------ */
static void set_gate(u32 vec, void (*fn)(void), u8 attr)
{
    u8 *g = vtg_idt + vec * 16;
    u64 a = (u64)fn;
    g[0] = (u8)a;
    g[1] = (u8)(a >> 8);
    g[2] = 0x08; /* kernel CS */
    g[3] = 0;
    g[4] = 0;    /* IST */
    g[5] = attr; /* 0x8e: interrupt gate DPL0, 0xee: DPL3 */
    g[6] = (u8)(a >> 16);
    g[7] = (u8)(a >> 24);
    g[8] = (u8)(a >> 32);
    g[9] = (u8)(a >> 40);
    g[10] = (u8)(a >> 48);
    g[11] = (u8)(a >> 56);
    g[12] = g[13] = g[14] = g[15] = 0;
}

static void setup_idt(void)
{
    static void (*const exc[22])(void) = {
        vtg_exc0,  vtg_exc1,  vtg_exc2,  vtg_exc3,  vtg_exc4,  vtg_exc5,  vtg_exc6,  vtg_exc7,
        vtg_exc8,  vtg_exc9,  vtg_exc10, vtg_exc11, vtg_exc12, vtg_exc13, vtg_exc14, vtg_exc15,
        vtg_exc16, vtg_exc17, vtg_exc18, vtg_exc19, vtg_exc20, vtg_exc21,
    };
    for (u32 v = 0; v < 256; v++) {
        void (*fn)(void) = vtg_irq_ignore;
        if (v == 6)
            fn = vtg_syscall; /* #UD from `ud2` at CPL3 is the gate to CPL0 (entry.S) */
        else if (v < 22)
            fn = exc[v];
        else if (v == 0x20)
            fn = vtg_irq0;
        else if (v == 0x30)
            fn = vtg_irq_lapic;
        else if (v == 0x24)
            fn = vtg_irq_com1;
        else if (v > 0x20 && v < 0x28)
            fn = vtg_irq_master;
        else if (v >= 0x28 && v < 0x30)
            fn = vtg_irq_slave;
        set_gate(v, fn, 0x8e);
    }
}

/* ------------------------------------------------------------------ */
/* Main (CPL3)                                                         */
/* ------------------------------------------------------------------ */
/* The first boot module (the initrd) with an FNV-1a checksum, so a test can check that
 * the VMM delivered it intact and where the kernel was told it is. */
static void report_initrd(void)
{
    const struct hvm_modlist_entry *mod;
    const u8 *p;
    u64 h = 0xcbf29ce484222325ULL;
    if (si->nr_modules == 0 || si->modlist_paddr == 0)
        return;
    mod = (const struct hvm_modlist_entry *)si->modlist_paddr;
    if (mod->paddr + mod->size > 0xc0000000ULL) {
        fail("initrd", "module outside the mapped low 3 GiB");
        return;
    }
    p = (const u8 *)mod->paddr;
    for (u64 i = 0; i < mod->size; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    pr("vtg: initrd addr=%lx size=%lu fnv=%lx\n", mod->paddr, mod->size, h);
}

NORETURN void vtg_main(struct hvm_start_info *start_info)
{
    char quickv[8];
    int quick = 0;

    memset(__bss_start, 0, (size_t)(__bss_end - __bss_start));
    setup_idt();
    si = start_info;
    pr("\n");

    /* 1. boot counter */
    boot_count = cmos_read(0x48);
    cmos_write(0x48, (u8)(boot_count + 1));
    pr("vtg: boot %lu\n", (u64)boot_count);

    /* 2. start_info */
    check_begin();
    if (!si || si->magic != 0x336ec578) {
        pr("vtg: start_info magic=bad (%lx)\n", si ? (u64)si->magic : 0);
        fail("start_info", "bad hvm_start_info magic");
        /* no cmdline: default action (poweroff) with ACPI found by scanning */
        rsdp_scan = 1;
        check_acpi();
        print_result();
        run_action();
    }
    pr("vtg: start_info magic=ok version=%lu memmap_entries=%lu cmdline=%lx rsdp=%lx entry=%s\n",
       (u64)si->version, (u64)(si->version >= 1 ? si->memmap_entries : 0), si->cmdline_paddr,
       si->rsdp_paddr, vtg_linux64_entry ? "linux64" : "pvh");
    report_initrd();
    if (si->cmdline_paddr)
        cmdline = (const char *)si->cmdline_paddr;
    if (cmdline_get("vtg.action", action, sizeof(action)) == 0)
        memcpy(action, "poweroff", 9);
    if (cmdline_get("vtg.quick", quickv, sizeof(quickv)) && streq(quickv, "1"))
        quick = 1;
    check_end();

    if (cmdline_get("vtg.rsdp-scan", quickv, sizeof(quickv)) && streq(quickv, "1"))
        rsdp_scan = 1;

    /* vtg.fault=ud2|pf: raise an exception at CPL3 to test the reporting path */
    if (cmdline_get("vtg.fault", quickv, sizeof(quickv))) {
        if (streq(quickv, "ud2"))
            __asm__ volatile("ud2");
        else if (streq(quickv, "pf"))
            (void)*(volatile u64 *)0x8000000000UL; /* PML4[1]: not mapped */
    }

    if (!pgmode_1g)
        pr("vtg: note paging=2m (no 1 GiB pages in CPUID)\n");

    calibrate_tsc();

    /* 3. e820 */
    check_begin();
    if (si->version >= 1 && si->memmap_entries && si->memmap_paddr) {
        u64 total = 0;
        memmap = (struct e820 *)si->memmap_paddr;
        memmap_n = si->memmap_entries;
        if (memmap_n > 128) {
            pr("vtg: e820 memmap_entries=%lu, only the first 128 are used\n", (u64)memmap_n);
            fail("e820", "more than 128 memmap entries");
            memmap_n = 128;
        }
        for (u32 i = 0; i < memmap_n; i++) {
            pr("vtg: e820 %lx %lx %lu\n", memmap[i].addr, memmap[i].size, (u64)memmap[i].type);
            if (memmap[i].type == 1)
                total += memmap[i].size;
        }
        pr("vtg: ram_total=%lu\n", total);
        if (!total)
            fail("e820", "no usable RAM in the memory map");
    } else {
        fail("e820", "no memory map in hvm_start_info (version < 1 or 0 entries)");
    }
    check_end();

    if (!quick && memmap_n) {
        u32 regions = 0;
        check_begin();
        for (u32 i = 0; i < memmap_n; i++) {
            u64 s = (memmap[i].addr + 0xfff) & ~0xfffUL;
            u64 e = (memmap[i].addr + memmap[i].size) & ~0xfffUL;
            if (memmap[i].type != 1 || e <= s)
                continue;
            regions++;
            if (!probe_page(s) || !probe_page(e - 0x1000)) {
                pr("vtg: ram_probe region %lx+%lx failed\n", memmap[i].addr, memmap[i].size);
                fail("ram_probe", "RAM page not writable/readable");
            }
        }
        if (!cur_failed)
            pr("vtg: ram_probe ok regions=%lu\n", (u64)regions);
        check_end();
    }

    if (quick)
        pr("vtg: quick=1: skipping ram_probe, smp, timer\n");

    /* 4. cmdline */
    check_begin();
    pr("vtg: cmdline=%s\n", cmdline);
    check_end();

    /* 5. ACPI */
    check_begin();
    check_acpi();
    check_end();

    /* 6. CPUID */
    check_begin();
    check_cpuid();
    check_end();

    /* 7. SMP */
    if (!quick && madt_cpus && lapic_base < 0x100000000UL) {
        check_begin();
        check_smp();
        check_end();
    }

    /* 8. timer */
    if (!quick) {
        check_begin();
        check_timer();
        check_end();
    }

    /* 9. RTC */
    check_begin();
    check_rtc();
    check_end();

    /* KVM clock */
    check_begin();
    check_kvmclock();
    check_end();

    /* Boot-progress port: 123 marks "checks done" for the VMM's boot timer. */
    outb(0x80, 123);

    /* 10/11 */
    print_result();
    run_action();
}
