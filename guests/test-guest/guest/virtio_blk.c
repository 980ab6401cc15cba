/*
 * A virtio-blk driver for the test guest, on the helpers of virtio.c and virtio_misc.c
 * (included before this file by main.c). Written from the virtio 1.2 specification (§5.2
 * block device, §2.7 split queues). One queue; each request is a three-descriptor chain
 * (header, data, status) in the queue's first slots; the used ring is polled.
 *
 * vtg.action=virtio-blk: reads the capacity and features, the serial (GET_ID), sector 0,
 * then writes sector 1 with the pattern byte i = (i * 7 + 3) & 0xff, flushes and reads it
 * back; on a read-only disk the write must fail with IOERR. With DISCARD offered it then
 * discards sectors 128..255 (64 KiB):
 *   vtg: virtio-blk capacity=N ro=0|1 flush=0|1 discard=0|1
 *   vtg: virtio-blk serial=TEXT
 *   vtg: virtio-blk sector0=HEX (first 32 bytes)
 *   vtg: virtio-blk write status=N readback=1
 *   vtg: virtio-blk discard status=N
 *   vtg: virtio-blk PASS            (or: vtg: virtio-blk FAIL <why>)
 * With vtg.blk-noflush=1 the write is not followed by a FLUSH (the VMM must still make it
 * durable when the guest powers off).
 * With vtg.virtio-hostile=1 the driver first sends a read whose data buffer lies outside
 * RAM (must be answered with IOERR) and then a descriptor loop (the device must set
 * DEVICE_NEEDS_RESET), resets the device and goes on as above:
 *   vtg: virtio-blk hostile oob-status=1 loop-needs-reset=1
 */

#define VIRTIO_ID_BLOCK 2
#define BLK_F_RO (1u << 5)
#define BLK_F_FLUSH (1u << 9)
#define BLK_F_DISCARD (1u << 13)
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_T_DISCARD 11

/* One request: header in buf[0], data in buf[1] (`len` bytes, device-writable when
 * `in`), status in buf[2]. Returns the status byte, or -1 on a timeout. */
static int blk_req(struct vpci *d, u32 type, u64 sector, u32 len, int in, u8 **data)
{
    struct mq *q = &mqs[0];
    u8 *hdr = q->buf[0];
    memset(hdr, 0, 16);
    hdr[0] = (u8)type;
    for (int i = 0; i < 8; i++)
        hdr[8 + i] = (u8)(sector >> (8 * i));
    q->buf[2][0] = 0xff;
    q->desc[0].addr = (u64)hdr;
    q->desc[0].len = 16;
    q->desc[0].flags = 1; /* NEXT */
    q->desc[0].next = 1;
    u16 status_desc = 1;
    if (len) {
        q->desc[1].addr = (u64)q->buf[1];
        q->desc[1].len = len;
        q->desc[1].flags = 1 | (in ? 2 : 0);
        q->desc[1].next = 2;
        status_desc = 2;
    }
    q->desc[status_desc].addr = (u64)q->buf[2];
    q->desc[status_desc].len = 1;
    q->desc[status_desc].flags = 2; /* WRITE */
    q->desc[status_desc].next = 0;
    if (data)
        *data = q->buf[1];
    volatile u16 *avail = q->avail;
    u16 idx = avail[1];
    avail[2 + idx % MQ_SIZE] = 0;
    barrier();
    avail[1] = (u16)(idx + 1);
    barrier();
    mq_notify(d, 0);
    u32 id, used_len;
    if (mq_used(0, 10000, &id, &used_len))
        return -1;
    return ((volatile u8 *)q->buf[2])[0];
}

static void virtio_blk_action(void)
{
    struct vpci d;
    if (vpci_find(VIRTIO_ID_BLOCK, &d)) {
        pr("vtg: virtio-blk FAIL no device on bus 0\n");
        return;
    }
    mmio_write32(d.common + C_DFSEL, 0);
    u32 offered = mmio_read32(d.common + C_DF);
    u32 want = offered & (BLK_F_RO | BLK_F_FLUSH | BLK_F_DISCARD);
    if (vdev_start("virtio-blk", VIRTIO_ID_BLOCK, want, 1, &d))
        return;
    char v[8];
    if (cmdline_get("vtg.virtio-hostile", v, sizeof(v)) && streq(v, "1")) {
        /* A read into memory the guest does not have. */
        struct mq *q = &mqs[0];
        u8 *p0;
        (void)blk_req(&d, BLK_T_IN, 0, 512, 1, &p0); /* sets up the chain */
        q->desc[1].addr = 1ull << 40;
        q->buf[2][0] = 0xff;
        volatile u16 *avail = q->avail;
        u16 idx = avail[1];
        avail[2 + idx % MQ_SIZE] = 0;
        barrier();
        avail[1] = (u16)(idx + 1);
        barrier();
        mq_notify(&d, 0);
        u32 id, len;
        int oob = mq_used(0, 10000, &id, &len) ? -1 : ((volatile u8 *)q->buf[2])[0];
        /* A loop: header -> data -> header. */
        q->desc[0].flags = 1;
        q->desc[0].next = 1;
        q->desc[1].addr = (u64)q->buf[1];
        q->desc[1].flags = 1 | 2;
        q->desc[1].next = 0;
        idx = avail[1];
        avail[2 + idx % MQ_SIZE] = 0;
        barrier();
        avail[1] = (u16)(idx + 1);
        barrier();
        mq_notify(&d, 0);
        u64 deadline = rdtsc() + ms_to_tsc(10000);
        while (!(vstatus(&d) & 0x40) && rdtsc() < deadline)
            cpu_relax();
        int broken = !!(vstatus(&d) & 0x40);
        pr("vtg: virtio-blk hostile oob-status=%lu loop-needs-reset=%lu\n", (u64)(u32)oob,
           (u64)broken);
        if (oob != 1 || !broken) {
            pr("vtg: virtio-blk FAIL hostile requests\n");
            return;
        }
        if (vdev_start("virtio-blk", VIRTIO_ID_BLOCK, want, 1, &d))
            return;
    }
    u64 capacity = mmio_read32(d.device) | (u64)mmio_read32(d.device + 4) << 32;
    int ro = !!(want & BLK_F_RO);
    pr("vtg: virtio-blk capacity=%lu ro=%lu flush=%lu discard=%lu\n", capacity, (u64)ro,
       (u64)!!(want & BLK_F_FLUSH), (u64)!!(want & BLK_F_DISCARD));

    u8 *p;
    int st = blk_req(&d, BLK_T_GET_ID, 0, 20, 1, &p);
    if (st != 0) {
        pr("vtg: virtio-blk FAIL GET_ID status %lu\n", (u64)(u32)st);
        return;
    }
    pr("vtg: virtio-blk serial=");
    for (int i = 0; i < 20 && p[i]; i++)
        putc_(p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.');
    pr("\n");

    st = blk_req(&d, BLK_T_IN, 0, 512, 1, &p);
    if (st != 0) {
        pr("vtg: virtio-blk FAIL read status %lu\n", (u64)(u32)st);
        return;
    }
    pr("vtg: virtio-blk sector0=");
    for (int i = 0; i < 32; i++)
        put_hex_byte(p[i]);
    pr("\n");

    /* Write sector 1, flush, read it back. */
    u8 *w = mqs[0].buf[1];
    for (int i = 0; i < 512; i++)
        w[i] = (u8)(i * 7 + 3);
    st = blk_req(&d, BLK_T_OUT, 1, 512, 0, 0);
    int readback = 0;
    if (st == 0) {
        char nf[4];
        int noflush = cmdline_get("vtg.blk-noflush", nf, sizeof(nf)) && streq(nf, "1");
        if ((want & BLK_F_FLUSH) && !noflush) {
            int fs = blk_req(&d, BLK_T_FLUSH, 0, 0, 0, 0);
            if (fs != 0) {
                pr("vtg: virtio-blk FAIL flush status %lu\n", (u64)(u32)fs);
                return;
            }
        }
        memset(mqs[0].buf[1], 0, 512);
        if (blk_req(&d, BLK_T_IN, 1, 512, 1, &p) == 0) {
            readback = 1;
            for (int i = 0; i < 512; i++)
                readback &= p[i] == (u8)(i * 7 + 3);
        }
    }
    pr("vtg: virtio-blk write status=%lu readback=%lu\n", (u64)(u32)st, (u64)readback);
    if (ro ? st != 1 : (st != 0 || !readback)) {
        pr("vtg: virtio-blk FAIL write on a %s disk\n", ro ? "read-only" : "writable");
        return;
    }

    if (want & BLK_F_DISCARD) {
        u8 *r = mqs[0].buf[1];
        memset(r, 0, 16);
        r[0] = 128; /* sector 128 */
        r[8] = 128; /* 128 sectors */
        st = blk_req(&d, BLK_T_DISCARD, 0, 16, 0, 0);
        pr("vtg: virtio-blk discard status=%lu\n", (u64)(u32)st);
        if (st != 0) {
            pr("vtg: virtio-blk FAIL discard\n");
            return;
        }
    }
    pr("vtg: virtio-blk PASS\n");
    vreset(&d);
}
