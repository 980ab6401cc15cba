/*
 * A virtio-net driver for the test guest, on the helpers of virtio.c and virtio_misc.c
 * (included before this file by main.c). Written from the virtio 1.2 specification (§5.1
 * network device, §2.7 split queues). Features: VERSION_1 and MAC only, so every buffer
 * starts with the 12-byte virtio-net header and holds one whole frame.
 *
 * vtg.action=virtio-net: reads the MAC from the configuration space, posts receive
 * buffers, sends one Ethernet frame (broadcast, ethertype 0x88b5, payload
 * "vtg-net ping"), then waits (up to 30 s) for a frame of that ethertype from the host and
 * prints it:
 *   vtg: virtio-net mac=52:54:00:12:34:56 status=1
 *   vtg: virtio-net sent len=N
 *   vtg: virtio-net got len=N hdr=HEX payload=TEXT
 *   vtg: virtio-net PASS            (or: vtg: virtio-net FAIL <why>)
 * With vtg.virtio-hostile=1 it first makes a transmit descriptor loop (descriptor 0
 * chained to itself), notifies, and waits for the device to report DEVICE_NEEDS_RESET:
 *   vtg: virtio-net hostile needs-reset=1
 * then resets the device and carries on as above.
 */

#define VIRTIO_ID_NET 1
#define NET_F_MAC (1u << 5)
#define NET_HDR 12
#define NET_RXQ 0
#define NET_TXQ 1

#define S_NEEDS_RESET 0x40

static void virtio_net_hostile(void)
{
    struct vpci d;
    if (vdev_start("virtio-net", VIRTIO_ID_NET, NET_F_MAC, 2, &d))
        return;
    struct mq *q = &mqs[NET_TXQ];
    q->desc[0].addr = (u64)q->buf[0];
    q->desc[0].len = 64;
    q->desc[0].flags = 1; /* NEXT, to itself */
    q->desc[0].next = 0;
    volatile u16 *avail = q->avail;
    avail[2] = 0;
    barrier();
    avail[1] = 1;
    barrier();
    mq_notify(&d, NET_TXQ);
    u64 deadline = rdtsc() + ms_to_tsc(10000);
    while (!(vstatus(&d) & S_NEEDS_RESET) && rdtsc() < deadline)
        cpu_relax();
    pr("vtg: virtio-net hostile needs-reset=%lu\n", (u64)((vstatus(&d) & S_NEEDS_RESET) != 0));
    vreset(&d);
}

static void virtio_net_action(void)
{
    struct vpci d;
    char v[8];
    if (cmdline_get("vtg.virtio-hostile", v, sizeof(v)) && streq(v, "1"))
        virtio_net_hostile();
    if (vdev_start("virtio-net", VIRTIO_ID_NET, NET_F_MAC, 2, &d))
        return;
    u8 mac[6];
    for (int i = 0; i < 6; i++)
        mac[i] = mmio_read8(d.device + (u64)i);
    u16 status = mmio_read16(d.device + 6);
    pr("vtg: virtio-net mac=");
    for (int i = 0; i < 6; i++) {
        if (i)
            putc_(':');
        put_hex_byte(mac[i]);
    }
    pr(" status=%lu\n", (u64)status);
    /* Receive buffers: all but one slot (a full page each). */
    for (int i = 0; i < MQ_SIZE - 1; i++)
        mq_add(NET_RXQ, 4096, 1, 0);
    mq_notify(&d, NET_RXQ);
    /* One frame: header (no offloads), broadcast, our MAC, 0x88b5, payload. */
    static const char ping[] = "vtg-net ping";
    u8 *p;
    u32 flen = NET_HDR + 14 + sizeof(ping) - 1;
    mq_add(NET_TXQ, flen, 0, &p);
    memset(p, 0, NET_HDR);
    memset(p + NET_HDR, 0xff, 6);
    memcpy(p + NET_HDR + 6, mac, 6);
    p[NET_HDR + 12] = 0x88;
    p[NET_HDR + 13] = 0xb5;
    memcpy(p + NET_HDR + 14, ping, sizeof(ping) - 1);
    mq_notify(&d, NET_TXQ);
    u32 id, len;
    if (mq_used(NET_TXQ, 10000, &id, &len)) {
        pr("vtg: virtio-net FAIL transmit buffer not used within 10 s\n");
        return;
    }
    pr("vtg: virtio-net sent len=%lu\n", (u64)(flen - NET_HDR));
    /* Skip whatever else the host sends (IPv6 chatter) until our ethertype comes. */
    u64 deadline = rdtsc() + ms_to_tsc(30000);
    while (rdtsc() < deadline) {
        if (mq_used(NET_RXQ, 1000, &id, &len))
            continue;
        if (id >= MQ_SIZE || len > 4096) {
            pr("vtg: virtio-net FAIL used id=%lu len=%lu\n", (u64)id, (u64)len);
            return;
        }
        u8 *f = mqs[NET_RXQ].buf[id];
        int ours = len >= NET_HDR + 14 && f[NET_HDR + 12] == 0x88 && f[NET_HDR + 13] == 0xb5;
        if (ours) {
            pr("vtg: virtio-net got len=%lu hdr=", (u64)(len - NET_HDR));
            for (int i = 0; i < NET_HDR; i++)
                put_hex_byte(f[i]);
            pr(" payload=");
            for (u32 i = NET_HDR + 14; i < len && i < NET_HDR + 14 + 64; i++)
                putc_(f[i] >= 0x20 && f[i] < 0x7f ? (char)f[i] : '.');
            pr("\n");
            int to_us = 1;
            for (int i = 0; i < 6; i++)
                to_us &= f[NET_HDR + i] == mac[i];
            /* num_buffers must be 1 without MRG_RXBUF. */
            if (f[10] != 1 || f[11] != 0)
                pr("vtg: virtio-net FAIL num_buffers %lu\n", (u64)(f[10] | f[11] << 8));
            else if (!to_us)
                pr("vtg: virtio-net FAIL frame not addressed to our MAC\n");
            else
                pr("vtg: virtio-net PASS\n");
            vreset(&d);
            return;
        }
        /* Not ours: give the buffer back. */
        struct mq *q = &mqs[NET_RXQ];
        volatile u16 *avail = q->avail;
        u16 idx = avail[1];
        avail[2 + idx % MQ_SIZE] = (u16)id;
        barrier();
        avail[1] = (u16)(idx + 1);
        barrier();
        mq_notify(&d, NET_RXQ);
    }
    pr("vtg: virtio-net FAIL no frame from the host within 30 s\n");
}
