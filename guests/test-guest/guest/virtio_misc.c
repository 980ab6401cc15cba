/*
 * Drivers for virtio-console, virtio-balloon and virtio-vsock in the test guest, on the
 * virtio-pci helpers of virtio.c (included before this file by main.c). Written from the
 * virtio 1.2 specification (§5.3 console, §5.5 balloon, §5.10 vsock, §2.7 split queues).
 * Each queue gets rings of its own; the used rings are polled (no interrupts).
 *
 * vtg.action=virtio-console: writes one line through the transmit queue (port 0, hvc0):
 *   vtg: hvc0 says hello
 *   vtg: virtio-console PASS        (or FAIL <why>)
 * with vtg.console-echo=1 it then prints "vtg: hvc0 waiting for input" (through hvc0),
 * waits up to 60 s for input in a receive buffer and writes "vtg: hvc0 got=<input>".
 * vtg.action=virtio-balloon: fills a page with 0xaa, inflates the balloon with it, checks
 * that it reads back as zeroes (the host dropped it), reports actual=1 in the config space,
 * deflates it and checks it is usable again:
 *   vtg: virtio-balloon target=N inflated zeroed=1 reusable=1
 *   vtg: virtio-balloon PASS
 * with vtg.balloon-wait=1 it then waits (up to 60 s) for the host to change the target:
 *   vtg: virtio-balloon new-target=N
 * vtg.action=virtio-vsock: connects to host port vtg.vsock-port (default 1234), sends
 * "ping from the guest", reads the host's answer and closes (with vtg.vsock-listen=PORT it
 * instead accepts one connection from the host on PORT and echoes what it gets):
 *   vtg: virtio-vsock cid=N
 *   vtg: virtio-vsock connected local=N
 *   vtg: virtio-vsock got=TEXT
 *   vtg: virtio-vsock PASS
 */

#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_BALLOON 5
#define VIRTIO_ID_VSOCK 19
#define MQ_SIZE 8
#define MQ_MAX 3

struct mq {
    struct vq_desc desc[MQ_SIZE];
    u16 avail[3 + MQ_SIZE];
    u32 used[1 + 2 * MQ_SIZE + 1];
    u16 next_desc, used_seen;
    u8 buf[MQ_SIZE][4096];
} __attribute__((aligned(4096)));

static struct mq mqs[MQ_MAX];

static int mq_setup(struct vpci *d, u16 index)
{
    struct mq *q = &mqs[index];
    memset(q, 0, sizeof(*q));
    mmio_write16(d->common + C_QSEL, index);
    if (mmio_read16(d->common + C_QSIZE) < MQ_SIZE)
        return -1;
    mmio_write16(d->common + C_QSIZE, MQ_SIZE);
    mmio_write64(d->common + C_QDESC, (u64)q->desc);
    mmio_write64(d->common + C_QDRIVER, (u64)q->avail);
    mmio_write64(d->common + C_QDEVICE, (u64)q->used);
    mmio_write16(d->common + C_QENABLE, 1);
    return mmio_read16(d->common + C_QENABLE) == 1 ? 0 : -2;
}

static void mq_notify(struct vpci *d, u16 index)
{
    mmio_write16(d->common + C_QSEL, index);
    u16 off = mmio_read16(d->common + C_QNOFF);
    mmio_write16(d->notify + (u64)off * d->notify_mul, index);
}

/* Makes one buffer available: `len` bytes of slot `s`'s page, device-writable or not. */
static u16 mq_add(u16 index, u32 len, int writable, u8 **data)
{
    struct mq *q = &mqs[index];
    u16 id = q->next_desc++ % MQ_SIZE;
    q->desc[id].addr = (u64)q->buf[id];
    q->desc[id].len = len;
    q->desc[id].flags = writable ? 2 : 0;
    q->desc[id].next = 0;
    if (data)
        *data = q->buf[id];
    volatile u16 *avail = q->avail;
    u16 idx = avail[1];
    avail[2 + idx % MQ_SIZE] = id;
    barrier();
    avail[1] = (u16)(idx + 1);
    barrier();
    return id;
}

/* Waits (up to `ms`) for the next used entry; returns 0 and its id/len, or -1. */
static int mq_used(u16 index, u64 ms, u32 *id, u32 *len)
{
    struct mq *q = &mqs[index];
    volatile u16 *used_idx = (volatile u16 *)q->used + 1;
    u64 deadline = rdtsc() + ms_to_tsc(ms);
    while (*used_idx == q->used_seen && rdtsc() < deadline)
        cpu_relax();
    barrier();
    if (*used_idx == q->used_seen)
        return -1;
    u32 slot = q->used_seen % MQ_SIZE;
    *id = ((volatile u32 *)q->used)[1 + 2 * slot];
    *len = ((volatile u32 *)q->used)[2 + 2 * slot];
    q->used_seen++;
    return 0;
}

/* Finds `type`, resets it, negotiates VERSION_1 + `features`, sets up `nq` queues and
 * sets DRIVER_OK; 0 on success (a FAIL line is printed otherwise). */
static int vdev_start(const char *name, u32 type, u32 features, u16 nq, struct vpci *d)
{
    if (vpci_find(type, d)) {
        pr("vtg: %s FAIL no device on bus 0\n", name);
        return -1;
    }
    vreset(d);
    if (!(vnegotiate(d, features) & S_FEATURES_OK)) {
        pr("vtg: %s FAIL FEATURES_OK refused\n", name);
        return -1;
    }
    for (u16 i = 0; i < nq; i++) {
        if (mq_setup(d, i)) {
            pr("vtg: %s FAIL queue %lu\n", name, (u64)i);
            return -1;
        }
    }
    mmio_write8(d->common + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    if (vstatus(d) != (S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)) {
        pr("vtg: %s FAIL status %lx after DRIVER_OK\n", name, (u64)vstatus(d));
        return -1;
    }
    return 0;
}

static void virtio_console_action(void)
{
    struct vpci d;
    if (vdev_start("virtio-console", VIRTIO_ID_CONSOLE, 0, 2, &d))
        return;
    static const char line[] = "vtg: hvc0 says hello\n";
    u8 *p;
    u16 id = mq_add(1, sizeof(line) - 1, 0, &p);
    memcpy(p, line, sizeof(line) - 1);
    mq_notify(&d, 1);
    u32 uid, len;
    if (mq_used(1, 10000, &uid, &len))
        pr("vtg: virtio-console FAIL transmit buffer not used within 10 s\n");
    else if (uid != id)
        pr("vtg: virtio-console FAIL used id %lu, want %lu\n", (u64)uid, (u64)id);
    else
        pr("vtg: virtio-console PASS\n");
    char v[8];
    if (cmdline_get("vtg.console-echo", v, sizeof(v)) && streq(v, "1")) {
        /* One receive buffer; what arrives is sent back through the transmit queue. */
        u8 *in;
        u16 rid = mq_add(0, 64, 1, &in);
        mq_notify(&d, 0);
        static const char ready[] = "vtg: hvc0 waiting for input\n";
        mq_add(1, sizeof(ready) - 1, 0, &p);
        memcpy(p, ready, sizeof(ready) - 1);
        mq_notify(&d, 1);
        if (mq_used(1, 10000, &uid, &len) == 0 && mq_used(0, 60000, &uid, &len) == 0 &&
            uid == rid && len > 0 && len <= 64) {
            static const char pre[] = "vtg: hvc0 got=";
            u8 *out;
            u32 n = len;
            while (n && (in[n - 1] == '\n' || in[n - 1] == '\r'))
                n--;
            mq_add(1, (u32)(sizeof(pre) - 1) + n + 1, 0, &out);
            memcpy(out, pre, sizeof(pre) - 1);
            memcpy(out + sizeof(pre) - 1, in, n);
            out[sizeof(pre) - 1 + n] = '\n';
            mq_notify(&d, 1);
            (void)mq_used(1, 10000, &uid, &len);
        } else {
            pr("vtg: virtio-console FAIL no input within 60 s\n");
        }
    }
    vreset(&d);
}

static u8 balloon_page[4096] __attribute__((aligned(4096)));

static int page_is(const u8 *p, u8 v)
{
    for (int i = 0; i < 4096; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

/* Sends balloon_page's frame number on queue `q` and waits for it to be used. */
static int balloon_send(struct vpci *d, u16 q)
{
    u8 *p;
    mq_add(q, 4, 0, &p);
    u32 pfn = (u32)((u64)balloon_page >> 12);
    memcpy(p, &pfn, 4);
    mq_notify(d, q);
    u32 id, len;
    return mq_used(q, 10000, &id, &len);
}

static void virtio_balloon_action(void)
{
    struct vpci d;
    char v[8];
    if (vdev_start("virtio-balloon", VIRTIO_ID_BALLOON, 0, 2, &d))
        return;
    u32 target = mmio_read32(d.device);
    memset(balloon_page, 0xaa, sizeof(balloon_page));
    if (balloon_send(&d, 0)) {
        pr("vtg: virtio-balloon FAIL inflate not used within 10 s\n");
        return;
    }
    int zeroed = page_is(balloon_page, 0);
    mmio_write32(d.device + 4, 1); /* actual */
    if (balloon_send(&d, 1)) {
        pr("vtg: virtio-balloon FAIL deflate not used within 10 s\n");
        return;
    }
    memset(balloon_page, 0x55, sizeof(balloon_page));
    int reusable = page_is(balloon_page, 0x55);
    mmio_write32(d.device + 4, 0);
    pr("vtg: virtio-balloon target=%lu inflated zeroed=%lu reusable=%lu\n", (u64)target,
       (u64)zeroed, (u64)reusable);
    if (zeroed && reusable)
        pr("vtg: virtio-balloon PASS\n");
    else
        pr("vtg: virtio-balloon FAIL the page was not released or not usable again\n");
    if (cmdline_get("vtg.balloon-wait", v, sizeof(v)) && streq(v, "1")) {
        mmio_write32(d.device + 4, 1); /* as if still inflated: the host sees actual */
        u64 deadline = rdtsc() + ms_to_tsc(60000);
        u32 now = target;
        while ((now = mmio_read32(d.device)) == target && rdtsc() < deadline)
            delay_us(1000);
        pr("vtg: virtio-balloon new-target=%lu\n", (u64)now);
    }
    vreset(&d);
}

/* struct virtio_vsock_hdr (44 bytes, little-endian, packed). */
struct vsock_hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

#define VSOCK_OP_REQUEST 1
#define VSOCK_OP_RESPONSE 2
#define VSOCK_OP_RST 3
#define VSOCK_OP_SHUTDOWN 4
#define VSOCK_OP_RW 5

static void vsock_send(struct vpci *d, struct vsock_hdr *h, const char *data, u32 n)
{
    u8 *p;
    mq_add(1, (u32)sizeof(*h) + n, 0, &p);
    memcpy(p, h, sizeof(*h));
    if (n)
        memcpy(p + sizeof(*h), data, n);
    mq_notify(d, 1);
    u32 id, len;
    (void)mq_used(1, 10000, &id, &len);
}

/* The next packet from the host (re-posting its receive buffer); 0 or -1 on timeout. */
static int vsock_recv(struct vpci *d, struct vsock_hdr *h, char *data, u32 cap)
{
    u32 id, len;
    if (mq_used(0, 10000, &id, &len) || id >= MQ_SIZE || len < sizeof(*h))
        return -1;
    memcpy(h, mqs[0].buf[id], sizeof(*h));
    u32 n = h->len < cap - 1 ? h->len : cap - 1;
    memcpy(data, mqs[0].buf[id] + sizeof(*h), n);
    data[n] = 0;
    mq_add(0, 4096, 1, 0);
    mq_notify(d, 0);
    return 0;
}

/* vtg.vsock-listen: accept one connection from the host on `port`, answer
 * "echo: <what it sent>", and close once the host has. */
static void vsock_listen(struct vpci *d, u64 cid, u32 port)
{
    char got[128];
    struct vsock_hdr r, h;
    pr("vtg: virtio-vsock listening port=%lu\n", (u64)port);
    u64 deadline = rdtsc() + ms_to_tsc(60000);
    for (;;) {
        if (rdtsc() > deadline) {
            pr("vtg: virtio-vsock FAIL no connection within 60 s\n");
            return;
        }
        if (vsock_recv(d, &r, got, sizeof(got)))
            continue;
        if (r.op == VSOCK_OP_REQUEST && r.dst_port == port)
            break;
    }
    memset(&h, 0, sizeof(h));
    h.src_cid = cid;
    h.dst_cid = 2;
    h.src_port = port;
    h.dst_port = r.src_port;
    h.type = 1;
    h.op = VSOCK_OP_RESPONSE;
    h.buf_alloc = 4096;
    vsock_send(d, &h, 0, 0);
    pr("vtg: virtio-vsock accepted from=%lu\n", (u64)r.src_port);
    for (int tries = 0; tries < 8; tries++) {
        if (vsock_recv(d, &r, got, sizeof(got))) {
            pr("vtg: virtio-vsock FAIL no data within 10 s\n");
            return;
        }
        if (r.op == VSOCK_OP_RW)
            break;
    }
    pr("vtg: virtio-vsock got=%s\n", got);
    char reply[160];
    memcpy(reply, "echo: ", 6);
    u32 n = (u32)slen(got);
    memcpy(reply + 6, got, n);
    h.op = VSOCK_OP_RW;
    h.len = 6 + n;
    h.fwd_cnt = r.len;
    vsock_send(d, &h, reply, h.len);
    /* The host client closes: SHUTDOWN (then maybe an RST); answer with RST. */
    int shut = 0;
    for (int tries = 0; tries < 8 && !shut; tries++) {
        if (vsock_recv(d, &r, got, sizeof(got)))
            break;
        shut = r.op == VSOCK_OP_SHUTDOWN || r.op == VSOCK_OP_RST;
    }
    if (!shut) {
        pr("vtg: virtio-vsock FAIL the host did not close\n");
        return;
    }
    if (r.op == VSOCK_OP_SHUTDOWN) {
        h.op = VSOCK_OP_RST;
        h.len = 0;
        vsock_send(d, &h, 0, 0);
    }
    pr("vtg: virtio-vsock PASS\n");
}

static void virtio_vsock_action(void)
{
    struct vpci d;
    char v[16], got[128];
    u32 port = 1234, listen = 0;
    if (cmdline_get("vtg.vsock-port", v, sizeof(v))) {
        port = 0;
        for (char *p = v; *p >= '0' && *p <= '9'; p++)
            port = port * 10 + (u32)(*p - '0');
    }
    if (cmdline_get("vtg.vsock-listen", v, sizeof(v)))
        for (char *p = v; *p >= '0' && *p <= '9'; p++)
            listen = listen * 10 + (u32)(*p - '0');
    if (vdev_start("virtio-vsock", VIRTIO_ID_VSOCK, 0, 3, &d))
        return;
    u64 cid = mmio_read32(d.device) | (u64)mmio_read32(d.device + 4) << 32;
    pr("vtg: virtio-vsock cid=%lu\n", cid);
    for (int i = 0; i < 4; i++)
        mq_add(0, 4096, 1, 0);
    mq_notify(&d, 0);
    if (listen) {
        vsock_listen(&d, cid, listen);
        vreset(&d);
        return;
    }
    struct vsock_hdr h;
    memset(&h, 0, sizeof(h));
    h.src_cid = cid;
    h.dst_cid = 2;
    h.src_port = 49152;
    h.dst_port = port;
    h.type = 1;
    h.op = VSOCK_OP_REQUEST;
    h.buf_alloc = 4096;
    vsock_send(&d, &h, 0, 0);
    struct vsock_hdr r;
    if (vsock_recv(&d, &r, got, sizeof(got)) || r.op != VSOCK_OP_RESPONSE) {
        pr("vtg: virtio-vsock FAIL no RESPONSE (op %lu)\n", (u64)r.op);
        return;
    }
    pr("vtg: virtio-vsock connected local=%lu\n", (u64)h.src_port);
    static const char ping[] = "ping from the guest";
    h.op = VSOCK_OP_RW;
    h.len = sizeof(ping) - 1;
    vsock_send(&d, &h, ping, h.len);
    /* The answer may come after credit updates; skip those. */
    for (int tries = 0; tries < 8; tries++) {
        if (vsock_recv(&d, &r, got, sizeof(got))) {
            pr("vtg: virtio-vsock FAIL no answer within 10 s\n");
            return;
        }
        if (r.op == VSOCK_OP_RW)
            break;
    }
    pr("vtg: virtio-vsock got=%s\n", got);
    h.op = VSOCK_OP_SHUTDOWN;
    h.len = 0;
    h.flags = 3;
    h.fwd_cnt = r.len;
    vsock_send(&d, &h, 0, 0);
    /* The host ends the connection with RST (after a SHUTDOWN of its own, maybe). */
    int rst = 0;
    for (int tries = 0; tries < 4 && !rst; tries++) {
        if (vsock_recv(&d, &r, got, sizeof(got)))
            break;
        rst = r.op == VSOCK_OP_RST;
    }
    if (rst)
        pr("vtg: virtio-vsock PASS\n");
    else
        pr("vtg: virtio-vsock FAIL no RST after SHUTDOWN\n");
    vreset(&d);
}
