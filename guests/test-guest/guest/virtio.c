/*
 * A minimal virtio-pci (virtio 1.x, modern) driver for the test guest, written from the
 * virtio 1.2 specification (§4.1 virtio over PCI, §2.7 split virtqueues) and the PCI
 * local bus specification. Included by main.c (it uses its helpers); runs at CPL3 with
 * configuration space reached through ports 0xCF8/0xCFC and the BAR through the identity
 * map. Polls the used ring: no interrupts are needed.
 *
 * vtg.action=rng reads vtg.rng-bytes=N (default 32, at most 4096) bytes from the first
 * virtio-rng device and prints them, then powers off:
 *   vtg: virtio-rng slot=N bar=ADDR msix=N queue_max=N
 *   vtg: virtio-rng bytes=N data=HEX
 *   vtg: virtio-rng PASS            (or: vtg: virtio-rng FAIL <why>)
 * With vtg.virtio-hostile=1 the driver first breaks the rules (queue enable before
 * FEATURES_OK, a queue size that is not a power of two, DRIVER_OK without FEATURES_OK,
 * a notification before DRIVER_OK, features that were not offered, accesses outside
 * every structure), checks that each is refused, prints
 *   vtg: virtio-hostile refused=N of N
 * then resets the device and reads the bytes as above. With vtg.virtio-bar=HEX the driver
 * first moves BAR 0 there (as an OS reassigning resources would) and uses it at its new
 * address.
 */

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_ID_RNG 4
#define VQ_SIZE 8

static inline u32 inl(u16 port) { return sys_in(SYS_INL, port); }

static u32 pci_cfg_read(u32 slot, u32 off)
{
    outl(0xcf8, 0x80000000u | slot << 11 | (off & 0xfc));
    return inl(0xcfc);
}

static void pci_cfg_write(u32 slot, u32 off, u32 v)
{
    outl(0xcf8, 0x80000000u | slot << 11 | (off & 0xfc));
    outl(0xcfc, v);
}

static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write64(u64 a, u64 v)
{
    mmio_write32(a, (u32)v);
    mmio_write32(a + 4, (u32)(v >> 32));
}
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

/* struct virtio_pci_common_cfg offsets */
#define C_DFSEL 0x00
#define C_DF 0x04
#define C_GFSEL 0x08
#define C_GF 0x0c
#define C_NUMQ 0x12
#define C_STATUS 0x14
#define C_QSEL 0x16
#define C_QSIZE 0x18
#define C_QENABLE 0x1c
#define C_QNOFF 0x1e
#define C_QDESC 0x20
#define C_QDRIVER 0x28
#define C_QDEVICE 0x30

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8

struct vq_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct vpci {
    u32 slot;
    u64 bar0;
    u64 common, isr, device, notify;
    u32 notify_mul;
    u32 msix_vectors;
};

static struct vq_desc vq_desc[VQ_SIZE] __attribute__((aligned(4096)));
static volatile u16 vq_avail[3 + VQ_SIZE] __attribute__((aligned(4096)));
static volatile u32 vq_used[1 + 2 * VQ_SIZE + 1] __attribute__((aligned(4096)));
static u8 vq_buf[4096] __attribute__((aligned(4096)));

static u64 bar_address(u32 slot, u32 bar)
{
    u32 lo = pci_cfg_read(slot, 0x10 + 4 * bar);
    if (lo & 1)
        return 0; /* I/O BAR: not what virtio modern uses here */
    u64 a = lo & ~0xfu;
    if (((lo >> 1) & 3) == 2)
        a |= (u64)pci_cfg_read(slot, 0x14 + 4 * bar) << 32;
    return a;
}

/* Finds the first function with the given virtio device type; 0 on success. */
static int vpci_find(u32 type, struct vpci *d)
{
    for (u32 slot = 0; slot < 32; slot++) {
        u32 id = pci_cfg_read(slot, 0);
        if ((id & 0xffff) != VIRTIO_VENDOR || (id >> 16) != 0x1040 + type)
            continue;
        memset(d, 0, sizeof(*d));
        d->slot = slot;
        /* memory decode + bus master */
        pci_cfg_write(slot, 4, pci_cfg_read(slot, 4) | 0x6);
        if (!(pci_cfg_read(slot, 4) & (1 << 20)))
            return -1; /* no capability list */
        u32 at = pci_cfg_read(slot, 0x34) & 0xfc;
        for (u32 n = 0; at && n < 48; n++) {
            u32 h = pci_cfg_read(slot, at);
            u8 cap_id = h & 0xff, next = (h >> 8) & 0xfc;
            if (cap_id == 0x09) {
                u8 cfg_type = (h >> 24) & 0xff;
                u32 bar = pci_cfg_read(slot, at + 4) & 0xff;
                u64 base = bar < 6 ? bar_address(slot, bar) : 0;
                u64 off = pci_cfg_read(slot, at + 8);
                if (cfg_type == 1)
                    d->common = base + off;
                else if (cfg_type == 2) {
                    d->notify = base + off;
                    d->notify_mul = pci_cfg_read(slot, at + 16);
                } else if (cfg_type == 3)
                    d->isr = base + off;
                else if (cfg_type == 4)
                    d->device = base + off;
                if (cfg_type == 1)
                    d->bar0 = base;
            } else if (cap_id == 0x11) {
                d->msix_vectors = ((h >> 16) & 0x7ff) + 1;
            }
            at = next;
        }
        return d->common && d->notify && d->isr ? 0 : -2;
    }
    return -3;
}

static u8 vstatus(struct vpci *d) { return mmio_read8(d->common + C_STATUS); }

static void vreset(struct vpci *d)
{
    mmio_write8(d->common + C_STATUS, 0);
    for (int i = 0; i < 1000 && vstatus(d); i++)
        cpu_relax();
}

/* ACK, DRIVER, features = VERSION_1 (+ `extra_lo`), FEATURES_OK; the status read back. */
static u8 vnegotiate(struct vpci *d, u32 extra_lo)
{
    mmio_write8(d->common + C_STATUS, S_ACK);
    mmio_write8(d->common + C_STATUS, S_ACK | S_DRIVER);
    mmio_write32(d->common + C_GFSEL, 0);
    mmio_write32(d->common + C_GF, extra_lo);
    mmio_write32(d->common + C_GFSEL, 1);
    mmio_write32(d->common + C_GF, 1); /* VIRTIO_F_VERSION_1 */
    mmio_write8(d->common + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    return vstatus(d);
}

static void vq_setup(struct vpci *d, u16 size)
{
    mmio_write16(d->common + C_QSEL, 0);
    mmio_write16(d->common + C_QSIZE, size);
    mmio_write64(d->common + C_QDESC, (u64)vq_desc);
    mmio_write64(d->common + C_QDRIVER, (u64)vq_avail);
    mmio_write64(d->common + C_QDEVICE, (u64)vq_used);
}

static void vq_notify(struct vpci *d)
{
    mmio_write16(d->common + C_QSEL, 0);
    u16 off = mmio_read16(d->common + C_QNOFF);
    mmio_write16(d->notify + (u64)off * d->notify_mul, 0);
}

static void put_hex_byte(u8 b)
{
    const char *h = "0123456789abcdef";
    putc_(h[b >> 4]);
    putc_(h[b & 15]);
}

/* Breaks each rule once; returns how many the device refused (of *tried). */
static u32 virtio_hostile(struct vpci *d, u32 *tried)
{
    u32 refused = 0;
    *tried = 0;
    vreset(d);
    mmio_write8(d->common + C_STATUS, S_ACK | S_DRIVER);
    /* 1. queue set up and enabled before FEATURES_OK */
    (*tried)++;
    vq_setup(d, 4);
    mmio_write16(d->common + C_QENABLE, 1);
    if (mmio_read16(d->common + C_QENABLE) == 0)
        refused++;
    /* 2. DRIVER_OK without FEATURES_OK */
    (*tried)++;
    mmio_write8(d->common + C_STATUS, S_ACK | S_DRIVER | S_DRIVER_OK);
    if (!(vstatus(d) & S_DRIVER_OK))
        refused++;
    /* 3. a feature the device did not offer (bit 5) */
    (*tried)++;
    vreset(d);
    if (!(vnegotiate(d, 1u << 5) & S_FEATURES_OK))
        refused++;
    vreset(d);
    vnegotiate(d, 0);
    /* 4. queue sizes that are not a power of two, or too large */
    (*tried)++;
    mmio_write16(d->common + C_QSEL, 0);
    u16 max = mmio_read16(d->common + C_QSIZE);
    mmio_write16(d->common + C_QSIZE, 3);
    mmio_write16(d->common + C_QSIZE, (u16)(max * 2));
    if (mmio_read16(d->common + C_QSIZE) == max)
        refused++;
    /* 5. a notification before DRIVER_OK: ignored (the device must not touch the ring) */
    (*tried)++;
    vq_setup(d, VQ_SIZE);
    vq_desc[0].addr = (u64)vq_buf;
    vq_desc[0].len = 16;
    vq_desc[0].flags = 2;
    vq_avail[2] = 0;
    barrier();
    vq_avail[1] = 1;
    barrier();
    vq_notify(d);
    delay_us(20000);
    if (((volatile u16 *)vq_used)[1] == 0)
        refused++;
    /* 6. accesses outside every structure and a write to read-only num_queues */
    (*tried)++;
    u16 nq = mmio_read16(d->common + C_NUMQ);
    mmio_write16(d->common + C_NUMQ, 99);
    mmio_write32(d->bar0 + 0x7ffc, 0xffffffff);
    (void)mmio_read32(d->bar0 + 0x6000);
    if (mmio_read16(d->common + C_NUMQ) == nq)
        refused++;
    vreset(d);
    vq_avail[1] = 0;
    return refused;
}

static void virtio_rng_action(void)
{
    char v[16];
    u32 want = 32;
    struct vpci d;
    if (cmdline_get("vtg.rng-bytes", v, sizeof(v))) {
        want = 0;
        for (char *p = v; *p >= '0' && *p <= '9'; p++)
            want = want * 10 + (u32)(*p - '0');
        if (want == 0 || want > sizeof(vq_buf))
            want = 32;
    }
    int r = vpci_find(VIRTIO_ID_RNG, &d);
    if (r) {
        pr("vtg: virtio-rng FAIL no virtio-rng device on bus 0 (%lu)\n", (u64)(u32)-r);
        return;
    }
    if (cmdline_get("vtg.virtio-bar", v, sizeof(v))) {
        u64 to = 0;
        for (char *p = v; *p; p++) {
            char c = *p;
            u32 digit = c >= '0' && c <= '9' ? (u32)(c - '0')
                        : c >= 'a' && c <= 'f' ? (u32)(c - 'a' + 10) : 16;
            if (digit < 16)
                to = to * 16 + digit;
        }
        u32 cmd = pci_cfg_read(d.slot, 4);
        pci_cfg_write(d.slot, 4, cmd & ~2u); /* memory decode off while moving */
        pci_cfg_write(d.slot, 0x10, (u32)to);
        pci_cfg_write(d.slot, 0x14, (u32)(to >> 32));
        pci_cfg_write(d.slot, 4, cmd);
        if (vpci_find(VIRTIO_ID_RNG, &d)) {
            pr("vtg: virtio-rng FAIL capabilities lost after moving BAR 0\n");
            return;
        }
    }
    vreset(&d);
    mmio_write16(d.common + C_QSEL, 0);
    u16 qmax = mmio_read16(d.common + C_QSIZE);
    pr("vtg: virtio-rng slot=%lu bar=%lx msix=%lu queue_max=%lu\n", (u64)d.slot, d.bar0,
       (u64)d.msix_vectors, (u64)qmax);
    if (cmdline_get("vtg.virtio-hostile", v, sizeof(v)) && streq(v, "1")) {
        u32 tried;
        u32 refused = virtio_hostile(&d, &tried);
        pr("vtg: virtio-hostile refused=%lu of %lu\n", (u64)refused, (u64)tried);
    }
    memset(vq_buf, 0, sizeof(vq_buf));
    memset((void *)vq_used, 0, sizeof(vq_used));
    memset((void *)vq_avail, 0, sizeof(vq_avail));
    vreset(&d);
    if (!(vnegotiate(&d, 0) & S_FEATURES_OK)) {
        pr("vtg: virtio-rng FAIL FEATURES_OK refused\n");
        return;
    }
    vq_setup(&d, VQ_SIZE);
    mmio_write16(d.common + C_QENABLE, 1);
    if (mmio_read16(d.common + C_QENABLE) != 1) {
        pr("vtg: virtio-rng FAIL queue 0 not enabled\n");
        return;
    }
    mmio_write8(d.common + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    if (vstatus(&d) != (S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)) {
        pr("vtg: virtio-rng FAIL status %lx after DRIVER_OK\n", (u64)vstatus(&d));
        return;
    }
    vq_desc[0].addr = (u64)vq_buf;
    vq_desc[0].len = want;
    vq_desc[0].flags = 2; /* VIRTQ_DESC_F_WRITE */
    vq_desc[0].next = 0;
    vq_avail[2] = 0;
    barrier();
    vq_avail[1] = 1;
    barrier();
    vq_notify(&d);
    u64 deadline = rdtsc() + ms_to_tsc(10000);
    while (((volatile u16 *)vq_used)[1] != 1 && rdtsc() < deadline)
        cpu_relax();
    barrier();
    if (((volatile u16 *)vq_used)[1] != 1) {
        pr("vtg: virtio-rng FAIL no used buffer within 10 s\n");
        return;
    }
    u32 id = vq_used[1], len = vq_used[2];
    u32 nonzero = 0;
    for (u32 i = 0; i < len && i < sizeof(vq_buf); i++)
        nonzero += vq_buf[i] != 0;
    pr("vtg: virtio-rng bytes=%lu data=", (u64)len);
    for (u32 i = 0; i < len && i < 64; i++)
        put_hex_byte(vq_buf[i]);
    pr("\n");
    if (id != 0 || len != want)
        pr("vtg: virtio-rng FAIL used id=%lu len=%lu, want id 0 len %lu\n", (u64)id, (u64)len,
           (u64)want);
    else if (nonzero < len / 2)
        pr("vtg: virtio-rng FAIL %lu of %lu bytes are zero\n", (u64)(len - nonzero), (u64)len);
    else
        pr("vtg: virtio-rng PASS\n");
    vreset(&d);
}
