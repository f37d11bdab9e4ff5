/* The load generator's hot loop: open-loop sender, ack reader and market data recorder
 * in one thread, so the load stays out of the measurement (perf/loadgen.py builds this
 * with the system cc on first use and calls lg_run through ctypes; see there).
 *
 *   t0 + t_ns[i] due ─► take_due: pick C/R targets from acked resting orders ─► send()
 *   order sessions ─► recv: K/X by client order id → ack time, order_id, ts_ns; learn pool
 *   md sessions    ─► recv: keep trade/fill/error lines with their receive time
 *
 * Wake-ups are what a client costs on this machine (~12-20 us of CPU each, nested
 * virtualisation), so the loop wakes only for send instants and for the public trades
 * connection; everything else readable is read right after the sends of a wake-up.
 * Receive times are the kernel's (SO_TIMESTAMPNS: when the data reached our socket),
 * so reading late does not make a reply late. TCP merges segments that wait unread
 * into one, stamped with the newest arrival: a reply that waited behind a later one on
 * the same connection is reported as late as that one (at most the gap between our
 * wake-ups). Waits are epoll_pwait2 with a nanosecond timeout and a 1 ns timer slack
 * (the default 50 us slack would be lateness we add ourselves). Times are
 * CLOCK_MONOTONIC ns, the clock of Python's time.monotonic_ns().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441 /* the same number on every architecture */
#endif

/* request kinds, as perf/workload.py */
enum { GTC = 0, IOC = 1, CANCEL = 2, REPLACE = 3 };
#define FRAME 64
/* replies read per recv: 1,024 frames */
#define RECV_BYTES (FRAME * 1024)
#define MAX_EVENTS 64

typedef struct {
    int64_t fd, n, n_symbols, pool;
    /* the plan (perf/workload.py SessionPlan); frames and kind change at send time */
    const int64_t *t_ns;
    uint8_t *frames;
    uint8_t *kind;
    const uint8_t *sym, *side;
    const int64_t *mid, *dist, *gtc_price, *qty;
    const uint16_t *slot;
    /* what happened to each request */
    int64_t *sent_ns, *ack_ns;
    uint8_t *ack_type;
    uint16_t *reason;
    uint64_t *order_id, *ts_ns;
    /* the ids of this session's acked resting orders: n_symbols rings of `pool` */
    uint64_t *pool_oid;
    uint8_t *pool_side;
    int64_t *pool_head;
    /* counters, written by lg_run */
    int64_t next, sent_bytes, acked, closed, error_reason, stray, recvs, sends;
} lg_session;

typedef struct {
    int64_t t0;            /* monotonic ns of intended time 0 */
    int64_t drain_ns;      /* after the last due time, how long to wait for missing acks */
    int64_t linger_ns;     /* then read market data until it was quiet this long */
    int64_t linger_max_ns; /* ... or at most this long */
    int64_t md_buf_bytes;  /* receive buffer per market data session (longest line) */
    int64_t n_eager_md;    /* the first n market data sessions wake the loop (trades) */
    int64_t eager_acks;    /* 1: order sessions wake the loop too (a wake-up per reply) */
    int64_t md_poll_ns;    /* while sending, read the other market data sessions this often */
} lg_config;

typedef struct {
    char *kept;            /* kept lines, each ending in '\n' (malloc'd; lg_free) */
    int64_t kept_len;
    int64_t *kept_ns;      /* receive time of each kept line (malloc'd; lg_free) */
    int64_t kept_lines;
    int64_t lines, rejected, closed_mask, bytes, recvs, dropped;
    int64_t waits, t_end;
    int64_t cpu_ns;        /* this thread's CPU time inside lg_run */
    int64_t unstamped;     /* reads without a kernel timestamp (timed on reading instead) */
    int64_t wall_minus_mono;
} lg_md;

static inline int64_t clock_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
static inline int64_t now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static inline uint64_t get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void put_i64(uint8_t *p, int64_t v) { memcpy(p, &v, 8); }

/* Move every request due by `rel` (ns since t0) into the sendable range, choosing the
 * targets of cancels and replaces from the ids learned so far, one request at a time
 * (so two cancels sent together never pick the same order). */
static void take_due(lg_session *s, int64_t rel) {
    while (s->next < s->n && s->t_ns[s->next] <= rel) {
        int64_t i = s->next++;
        uint8_t k = s->kind[i];
        if (k != CANCEL && k != REPLACE) continue;
        uint8_t *f = s->frames + i * FRAME;
        int64_t sy = s->sym[i];
        int64_t head = s->pool_head[sy];
        int64_t filled = head < s->pool ? head : s->pool;
        int64_t at = sy * s->pool + s->slot[i] % (filled > 0 ? filled : 1);
        uint64_t oid = s->pool_oid[at];
        if (oid) {
            put_u64(f + 24, oid);
            if (k == REPLACE)
                put_i64(f + 32, s->mid[i] + (s->pool_side[at] == 'B' ? -s->dist[i] : s->dist[i]));
            else
                s->pool_oid[at] = 0; /* cancelled: no longer a target */
        } else { /* nothing known to cancel/replace yet: rest a new order instead */
            s->kind[i] = GTC;
            f[0] = 'N';
            f[1] = s->side[i];
            f[2] = 'L';
            f[3] = 'G';
            put_i64(f + 32, s->gtc_price[i]);
            put_i64(f + 40, s->qty[i]);
        }
    }
}

/* Send what is due and not sent yet; returns 1 if the socket is full (wait for EPOLLOUT). */
static int flush(lg_session *s) {
    int64_t end = s->next * FRAME;
    while (s->sent_bytes < end) {
        int64_t stamp = now_ns();
        ssize_t r = send((int)s->fd, s->frames + s->sent_bytes, (size_t)(end - s->sent_bytes),
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            s->closed = 3;
            return 0;
        }
        s->sends++;
        int64_t first = s->sent_bytes / FRAME, done = (s->sent_bytes + r) / FRAME;
        for (int64_t j = first; j < done; j++) s->sent_ns[j] = stamp;
        /* a frame sent in two pieces gets the time of its second piece, in the next call */
        s->sent_bytes += r;
    }
    return 0;
}

/* recv() with the kernel's receive time of the newest data read, as monotonic ns in
 * *at (the time of reading if the kernel gave none). */
static ssize_t recv_stamped(int fd, void *buf, size_t len, int64_t *at, lg_md *md) {
    char control[CMSG_SPACE(sizeof(struct timespec))];
    struct iovec iov = {buf, len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    ssize_t r = recvmsg(fd, &msg, MSG_DONTWAIT);
    if (r <= 0) return r;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            *at = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - md->wall_minus_mono;
            return r;
        }
    }
    md->unstamped++;
    *at = now_ns();
    return r;
}

/* Read replies; returns 0, or -1 when the session ended (EOF, an E frame, an error). */
static int receive(lg_session *s, uint8_t *buf, uint8_t *carry, int64_t *carry_len, lg_md *md) {
    for (;;) {
        memcpy(buf, carry, (size_t)*carry_len);
        int64_t at;
        ssize_t r = recv_stamped((int)s->fd, buf + *carry_len, RECV_BYTES, &at, md);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            s->closed = 3;
            return -1;
        }
        if (r == 0) { s->closed = 1; return -1; }
        s->recvs++;
        int64_t len = *carry_len + r, whole = len - len % FRAME;
        for (int64_t off = 0; off < whole; off += FRAME) {
            const uint8_t *f = buf + off;
            uint8_t mt = f[0];
            if (mt == 'K' || mt == 'X') {
                uint64_t i = get_u64(f + 16) - 1; /* client order ids count from 1 */
                if (i >= (uint64_t)s->n) { s->stray++; continue; }
                if (!s->ack_ns[i]) s->acked++;
                s->ack_ns[i] = at;
                s->ack_type[i] = mt;
                memcpy(&s->reason[i], f + 2, 2);
                s->order_id[i] = get_u64(f + 24);
                s->ts_ns[i] = get_u64(f + 56);
                if (mt == 'K' && s->kind[i] == GTC) { /* our resting order: a future target */
                    int64_t sy = s->sym[i];
                    int64_t slot = sy * s->pool + s->pool_head[sy] % s->pool;
                    s->pool_oid[slot] = s->order_id[i];
                    s->pool_side[slot] = s->side[i];
                    s->pool_head[sy]++;
                }
            } else if (mt == 'E') {
                memcpy(&s->error_reason, f + 2, 2);
                s->closed = 2;
                return -1;
            } /* A, H: nothing to record */
        }
        *carry_len = len - whole;
        memcpy(carry, buf + whole, (size_t)*carry_len);
        if (r < RECV_BYTES) return 0; /* drained (a full read may have left more) */
    }
}

typedef struct {
    int fd;
    uint8_t *buf;
    int64_t len;
    int64_t last_read;
} md_conn;

static int keep(lg_md *md, int64_t *cap, int64_t *ns_cap, const uint8_t *line, int64_t n, int64_t at) {
    if (md->kept_len + n > *cap) {
        int64_t c = *cap ? *cap : (1 << 20);
        while (c < md->kept_len + n) c *= 2;
        char *p = realloc(md->kept, (size_t)c);
        if (!p) return -1;
        md->kept = p;
        *cap = c;
    }
    if (md->kept_lines == *ns_cap) {
        int64_t c = *ns_cap ? *ns_cap * 2 : 65536;
        int64_t *p = realloc(md->kept_ns, (size_t)c * sizeof(int64_t));
        if (!p) return -1;
        md->kept_ns = p;
        *ns_cap = c;
    }
    memcpy(md->kept + md->kept_len, line, (size_t)n);
    md->kept_len += n;
    md->kept_ns[md->kept_lines++] = at;
    return 0;
}

#define PREFIX(line, n, lit) ((n) >= (int64_t)sizeof(lit) - 1 && !memcmp((line), (lit), sizeof(lit) - 1))

/* Read market data; whole lines are counted, trades, fills and errors kept with their
 * receive time (the rest is not needed and not copied). Returns -1 at EOF, -2 out of
 * memory. */
static int md_receive(md_conn *c, int64_t cap_bytes, lg_md *md, int64_t *cap, int64_t *ns_cap) {
    for (;;) {
        if (c->len == cap_bytes) { /* a line longer than the buffer: drop what we have of it */
            md->dropped++;
            c->len = 0;
        }
        int64_t at;
        ssize_t r = recv_stamped(c->fd, c->buf + c->len, (size_t)(cap_bytes - c->len), &at, md);
        if (r < 0) {
            if (errno == EINTR) continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        }
        if (r == 0) return -1;
        md->recvs++;
        md->bytes += r;
        int64_t scan = c->len, start = 0, room = cap_bytes - c->len;
        c->len += r;
        uint8_t *nl;
        while ((nl = memchr(c->buf + scan, '\n', (size_t)(c->len - scan))) != NULL) {
            const uint8_t *line = c->buf + start;
            int64_t n = nl - line + 1;
            md->lines++;
            if (PREFIX(line, n, "{\"type\":\"trade\"") || PREFIX(line, n, "{\"type\":\"fill\"") ||
                PREFIX(line, n, "{\"type\":\"error\"")) {
                if (keep(md, cap, ns_cap, line, n, at)) return -2;
            } else if (PREFIX(line, n, "{\"type\":\"rejected\"")) {
                md->rejected++;
            }
            start = scan = nl - c->buf + 1;
        }
        memmove(c->buf, c->buf + start, (size_t)(c->len - start));
        c->len -= start;
        if (r < room) return 0;
    }
}

/* Wait on `ep` until the absolute monotonic `deadline`. epoll_pwait2 where the kernel has
 * it (5.11+); else an absolute timerfd in the set. */
static int wait_until(int ep, int tfd, struct epoll_event *evs, int64_t deadline) {
    static int have_pwait2 = 1;
    int64_t left = deadline - now_ns();
    if (left < 0) left = 0;
    if (have_pwait2) {
        struct timespec ts = {left / 1000000000, left % 1000000000};
        long r = syscall(SYS_epoll_pwait2, ep, evs, MAX_EVENTS, &ts, NULL, (size_t)8);
        if (r >= 0 || errno != ENOSYS) return r < 0 ? 0 : (int)r;
        have_pwait2 = 0;
    }
    struct itimerspec it = {{0, 0}, {deadline / 1000000000, deadline % 1000000000}};
    if (left == 0) it.it_value = (struct timespec){0, 1};
    timerfd_settime(tfd, left == 0 ? 0 : TFD_TIMER_ABSTIME, &it, NULL);
    int r = epoll_wait(ep, evs, MAX_EVENTS, -1);
    return r < 0 ? 0 : r;
}

#define TIMER_TAG (-1)

static void watch(int ep, int fd, uint32_t events, int64_t tag) {
    struct epoll_event ev = {.events = events};
    ev.data.u64 = (uint64_t)tag;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static void rewatch(int ep, int fd, uint32_t events, int64_t tag) {
    struct epoll_event ev = {.events = events};
    ev.data.u64 = (uint64_t)tag;
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

/* Run one step: send every session's plan on time, record replies and market data, then
 * wait for the last acks (drain) and the last market data (linger). Returns 0, or -(1 +
 * index) of an order session the exchange closed, or -1000 if out of memory/epoll.
 *
 * Two epoll sets: `ep_all` holds every connection and is polled without waiting after
 * the sends of each wake-up; `ep_wake` holds what may wake the loop while requests are
 * still to be sent: its timer, the eager market data sessions, a session whose socket
 * was full, and (eager_acks) the order sessions. Once everything is sent, the loop waits
 * on `ep_all`. */
int64_t lg_run(const lg_config *cfg, lg_session *ss, int64_t nsess, const int32_t *md_fds, int64_t nmd, lg_md *md) {
    int64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    memset(md, 0, sizeof(*md));
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    /* the kernel stamps wall-clock time: the offset, from the closest of a few readings */
    int64_t best = INT64_MAX;
    for (int k = 0; k < 5; k++) {
        int64_t m0 = now_ns(), w = clock_ns(CLOCK_REALTIME), m1 = now_ns();
        if (m1 - m0 < best) { best = m1 - m0; md->wall_minus_mono = w - (m0 + m1) / 2; }
    }
    int ep_all = epoll_create1(EPOLL_CLOEXEC), ep_wake = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    uint8_t *buf = malloc(RECV_BYTES + FRAME);
    uint8_t *carry = calloc((size_t)nsess, FRAME);
    int64_t *carry_len = calloc((size_t)nsess, sizeof(int64_t));
    int *want_out = calloc((size_t)nsess, sizeof(int));
    md_conn *mc = calloc((size_t)(nmd ? nmd : 1), sizeof(md_conn));
    int64_t rc = 0, cap = 0, ns_cap = 0;
    const int one = 1;
    if (ep_all < 0 || ep_wake < 0 || tfd < 0 || !buf || !carry || !carry_len || !want_out || !mc) {
        rc = -1000;
        goto out;
    }
    watch(ep_all, tfd, EPOLLIN, TIMER_TAG);
    watch(ep_wake, tfd, EPOLLIN, TIMER_TAG);
    int64_t total = 0, last_due = cfg->t0;
    for (int64_t i = 0; i < nsess; i++) {
        setsockopt((int)ss[i].fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        watch(ep_all, (int)ss[i].fd, EPOLLIN, i);
        if (cfg->eager_acks) watch(ep_wake, (int)ss[i].fd, EPOLLIN, i);
        total += ss[i].n;
        if (ss[i].n && cfg->t0 + ss[i].t_ns[ss[i].n - 1] > last_due) last_due = cfg->t0 + ss[i].t_ns[ss[i].n - 1];
    }
    for (int64_t j = 0; j < nmd; j++) {
        mc[j].fd = md_fds[j];
        mc[j].buf = malloc((size_t)cfg->md_buf_bytes);
        if (!mc[j].buf) { rc = -1000; goto out; }
        setsockopt(mc[j].fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        watch(ep_all, mc[j].fd, EPOLLIN, nsess + j);
        if (j < cfg->n_eager_md) watch(ep_wake, mc[j].fd, EPOLLIN, nsess + j);
    }
    struct epoll_event evs[MAX_EVENTS];
    int phase = 0; /* 0 sending, 1 waiting for acks, 2 lingering for market data */
    int64_t drain_until = last_due + cfg->drain_ns, linger_from = 0, last_md = 0, md_open = nmd;
    int poll_all = 1; /* read everything readable before (maybe) sleeping */
    for (;;) {
        int64_t now = now_ns(), deadline = INT64_MAX;
        if (phase == 0) {
            int done = 1;
            for (int64_t i = 0; i < nsess; i++) {
                lg_session *s = &ss[i];
                take_due(s, now - cfg->t0);
                if (!want_out[i]) {
                    want_out[i] = flush(s);
                    if (want_out[i]) { /* the exchange is not reading: wake when it does */
                        rewatch(ep_all, (int)s->fd, EPOLLIN | EPOLLOUT, i);
                        if (cfg->eager_acks) rewatch(ep_wake, (int)s->fd, EPOLLIN | EPOLLOUT, i);
                        else watch(ep_wake, (int)s->fd, EPOLLOUT, i);
                    }
                }
                if (s->closed) { rc = -(1 + i); goto out; }
                if (s->next < s->n) {
                    done = 0;
                    if (cfg->t0 + s->t_ns[s->next] < deadline) deadline = cfg->t0 + s->t_ns[s->next];
                } else if (s->sent_bytes < s->n * FRAME) {
                    done = 0;
                }
            }
            if (done) phase = 1;
        }
        if (phase == 1) {
            int64_t acked = 0;
            for (int64_t i = 0; i < nsess; i++) acked += ss[i].acked;
            if (acked >= total || now > drain_until) {
                phase = 2;
                linger_from = last_md = now;
            } else {
                deadline = drain_until;
            }
        }
        if (phase == 2) {
            if (!md_open || now - last_md >= cfg->linger_ns || now - linger_from >= cfg->linger_max_ns) break;
            deadline = last_md + cfg->linger_ns;
            if (linger_from + cfg->linger_max_ns < deadline) deadline = linger_from + cfg->linger_max_ns;
        }
        if (deadline == INT64_MAX) deadline = now + 50000000; /* only a full socket to wait for */
        int n;
        if (poll_all) { /* lazy reads: everything readable, without waiting */
            n = epoll_wait(ep_all, evs, MAX_EVENTS, 0);
            if (n < 0) n = 0;
            poll_all = n == MAX_EVENTS; /* more may be ready: poll again before sleeping */
        } else {
            n = wait_until(phase == 0 ? ep_wake : ep_all, tfd, evs, deadline);
            md->waits++;
            poll_all = phase == 0;
        }
        for (int e = 0; e < n; e++) {
            int64_t tag = (int64_t)evs[e].data.u64;
            if (tag == TIMER_TAG) {
                uint64_t expirations;
                ssize_t ignored = read(tfd, &expirations, sizeof expirations);
                (void)ignored;
            } else if (tag < nsess) {
                lg_session *s = &ss[tag];
                if ((evs[e].events & EPOLLOUT) && want_out[tag]) {
                    want_out[tag] = flush(s);
                    if (!want_out[tag]) {
                        rewatch(ep_all, (int)s->fd, EPOLLIN, tag);
                        if (cfg->eager_acks) rewatch(ep_wake, (int)s->fd, EPOLLIN, tag);
                        else epoll_ctl(ep_wake, EPOLL_CTL_DEL, (int)s->fd, NULL);
                    }
                }
                if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                    if (receive(s, buf, carry + tag * FRAME, &carry_len[tag], md) < 0) {
                        if (phase < 2) {
                            rc = -(1 + tag);
                            goto out;
                        }
                        /* lingering for market data: the gateway may close a silent session */
                        epoll_ctl(ep_all, EPOLL_CTL_DEL, (int)s->fd, NULL);
                    }
                }
            } else {
                int64_t j = tag - nsess;
                if (phase == 0 && j >= cfg->n_eager_md) { /* lazy: not on every wake-up */
                    int64_t t = now_ns();
                    if (t - mc[j].last_read < cfg->md_poll_ns) continue;
                    mc[j].last_read = t;
                }
                int r = md_receive(&mc[j], cfg->md_buf_bytes, md, &cap, &ns_cap);
                if (r == -2) { rc = -1000; goto out; }
                if (r < 0) { /* cut off (a slow consumer at saturation): keep what we have */
                    md->closed_mask |= (int64_t)1 << (j < 62 ? j : 62);
                    epoll_ctl(ep_all, EPOLL_CTL_DEL, mc[j].fd, NULL);
                    epoll_ctl(ep_wake, EPOLL_CTL_DEL, mc[j].fd, NULL);
                    md_open--;
                }
                last_md = now_ns();
            }
        }
    }
out:
    md->t_end = now_ns();
    for (int64_t j = 0; j < nmd; j++) free(mc[j].buf);
    free(mc);
    free(want_out);
    free(carry_len);
    free(carry);
    free(buf);
    if (tfd >= 0) close(tfd);
    if (ep_wake >= 0) close(ep_wake);
    if (ep_all >= 0) close(ep_all);
    md->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    return rc;
}

void lg_free(void *p) { free(p); }
