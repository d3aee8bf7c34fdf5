/* Blocking sockets with deadlines (see tessera/net.h). */
#include "tessera/net.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tessera/util.h"

uint64_t ts_net_deadline(int64_t timeout_ms)
{
    if (timeout_ms < 0) return UINT64_MAX;
    return ts_mono_us() + (uint64_t)timeout_ms * 1000u;
}

/* Milliseconds left until deadline_us; -1: no deadline. */
static int remaining_ms(uint64_t deadline_us)
{
    if (deadline_us == UINT64_MAX) return -1;
    uint64_t now = ts_mono_us();
    if (now >= deadline_us) return 0;
    uint64_t ms = (deadline_us - now + 999) / 1000;
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

ts_status_t ts_net_wait(int fd, short events, uint64_t deadline_us)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, remaining_ms(deadline_us));
        if (rc > 0) return TS_OK;
        if (rc == 0) return TS_ERR_TIMEOUT;
        if (errno != EINTR) return TS_ERR_IO;
    }
}

static int connect_one(const struct addrinfo *ai, uint64_t deadline_us, ts_status_t *st)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        *st = TS_ERR_UNAVAILABLE;
        return -1;
    }
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) goto fail;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS && errno != EINTR) goto fail;
        ts_status_t w = ts_net_wait(fd, POLLOUT, deadline_us);
        if (w != TS_OK) {
            close(fd);
            *st = w == TS_ERR_TIMEOUT ? TS_ERR_TIMEOUT : TS_ERR_UNAVAILABLE;
            return -1;
        }
        int err = 0;
        socklen_t elen = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) goto fail;
    }
    if (fcntl(fd, F_SETFL, flags) < 0) goto fail;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *st = TS_OK;
    return fd;
fail:
    close(fd);
    *st = TS_ERR_UNAVAILABLE;
    return -1;
}

int ts_net_connect(const char *host, int port, uint64_t deadline_us, ts_status_t *st)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    *st = TS_ERR_UNAVAILABLE;
    if (getaddrinfo(host, portstr, &hints, &res) != 0 || res == NULL) return -1;
    int fd = -1;
    for (const struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = connect_one(ai, deadline_us, st);
        if (*st == TS_ERR_TIMEOUT) break;
    }
    freeaddrinfo(res);
    return fd;
}
