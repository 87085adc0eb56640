/* A privsep child in C: it speaks the wire protocol of docs/PROTOCOL.md directly.
 *
 *     client GRANTED_FILE DENIED_FILE
 *
 * hello, ping, try to open GRANTED_FILE by itself (it is not in the
 * sandbox's view), open it through the broker (the descriptor arrives
 * with SCM_RIGHTS) and print it, then open DENIED_FILE and print the
 * broker's error code and message. Exit 0 when the broker answered each as
 * the policy says: the first open granted, the second denied.
 *
 * Replies are read with a small, strict scanner for the few fields used
 * here; a real client would use a JSON parser. Paths are copied into the
 * request as JSON strings, so quotes and backslashes in them are escaped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FRAME 65536
#define MAX_FDS 253

static int channel;
static char reply[MAX_FRAME + 1];
static int fds[MAX_FDS]; /* the descriptors the last reply carried (ours to close) */
static int nfds;
static long next_id = 1;
static char last_code[64]; /* the error code of the last refused request */

static void close_all(void)
{
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    nfds = 0;
}

/* Send one request frame, receive its reply into `reply` and its descriptors
   into `fds`. Returns the reply length, or -1 with every descriptor closed. */
static ssize_t call(const char *request)
{
    size_t len = strlen(request);
    nfds = 0;
    if (send(channel, request, len, MSG_NOSIGNAL) != (ssize_t)len) /* one send = one frame */
        return -1;

    union {
        char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = reply, .iov_len = MAX_FRAME};
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof control.buf,
    };
    ssize_t n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC); /* descriptors close-on-exec at once */
    if (n <= 0)                                          /* 0: the broker closed the channel */
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count && nfds < MAX_FDS; i++)
            memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        close_all(); /* a broken broker */
        return -1;
    }
    reply[n] = '\0';
    return n;
}

/* Append `s` to `out` as a JSON string (with its quotes); 0, or -1 if it does not fit. */
static int json_string(char *out, size_t size, const char *s)
{
    size_t used = strlen(out);
    if (used + 1 >= size)
        return -1;
    out[used++] = '"';
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char esc[8];
        if (ch == '"' || ch == '\\')
            snprintf(esc, sizeof esc, "\\%c", ch);
        else if (ch < 0x20)
            snprintf(esc, sizeof esc, "\\u%04x", ch);
        else
            esc[0] = (char)ch, esc[1] = '\0';
        size_t add = strlen(esc);
        if (used + add + 2 >= size)
            return -1;
        memcpy(out + used, esc, add);
        used += add;
    }
    out[used++] = '"';
    out[used] = '\0';
    return 0;
}

/* The value of the string field `"name":"..."` of the reply, unescaped into
   `out` (\uXXXX kept as written). The broker writes compact JSON. */
static const char *field(const char *name, char *out, size_t size)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":\"", name);
    const char *p = strstr(reply, key);
    if (p == NULL || size == 0)
        return NULL;
    size_t used = 0;
    for (p += strlen(key); *p && *p != '"'; p++) {
        if (*p == '\\' && p[1] != '\0' && p[1] != 'u')
            p++;
        if (used + 1 < size)
            out[used++] = *p;
    }
    out[used] = '\0';
    return *p == '"' ? out : NULL;
}

/* Is this the reply to request `id`, and did it succeed? -1: not a reply we can read. */
static int reply_ok(long id)
{
    char want[64];
    snprintf(want, sizeof want, "\"id\":%ld,", id);
    if (strstr(reply, want) == NULL)
        return -1;
    if (strstr(reply, "\"ok\":true") != NULL)
        return 1;
    return strstr(reply, "\"ok\":false") != NULL ? 0 : -1;
}

/* open PATH read-only: the file's descriptor, or -1 after printing the broker's answer. */
static int broker_open(const char *path)
{
    char request[8192];
    long id = next_id++;
    snprintf(request, sizeof request, "{\"id\":%ld,\"op\":\"open\",\"path\":", id);
    if (json_string(request, sizeof request - 16, path) < 0) {
        fprintf(stderr, "path too long\n");
        return -2;
    }
    strcat(request, ",\"mode\":\"r\"}");
    if (call(request) < 0) {
        fprintf(stderr, "the channel broke\n");
        return -2;
    }
    int ok = reply_ok(id);
    if (ok < 0 || nfds != (ok ? 1 : 0)) { /* exactly one fd with a success, none with an error */
        close_all();
        fprintf(stderr, "a broken reply: %s\n", reply);
        return -2;
    }
    if (ok)
        return fds[0];
    char message[1100];
    if (field("code", last_code, sizeof last_code) == NULL)
        strcpy(last_code, "?");
    printf("open %s: refused: code=%s message=%s\n", path, last_code,
           field("message", message, sizeof message) ? message : "?");
    return -1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s GRANTED_FILE DENIED_FILE\n", argv[0]);
        return 2;
    }
    const char *fd_env = getenv("PRIVSEP_FD");
    if (fd_env == NULL) {
        fprintf(stderr, "PRIVSEP_FD is not set: run me under privsep run\n");
        return 2;
    }
    channel = atoi(fd_env);

    char request[128], broker[128];
    long id = next_id++;
    snprintf(request, sizeof request, "{\"id\":%ld,\"op\":\"hello\",\"versions\":[1]}", id);
    if (call(request) < 0 || nfds != 0 || reply_ok(id) != 1) {
        fprintf(stderr, "hello failed: %s\n", reply);
        return 1;
    }
    const char *version = strstr(reply, "\"version\":");
    printf("hello: protocol version %d, broker \"%s\"\n", version ? atoi(version + 10) : -1,
           field("broker", broker, sizeof broker) ? broker : "?");

    id = next_id++;
    snprintf(request, sizeof request, "{\"id\":%ld,\"op\":\"ping\"}", id);
    if (call(request) < 0 || nfds != 0 || reply_ok(id) != 1) {
        fprintf(stderr, "ping failed: %s\n", reply);
        return 1;
    }
    printf("ping: %s\n", reply);

    int direct = open(argv[1], O_RDONLY | O_CLOEXEC); /* by itself: the file is not in its view */
    if (direct >= 0) {
        printf("open %s by myself: it worked?! it should not be in my view\n", argv[1]);
        return 1;
    }
    printf("open %s by myself: %s (not in my view)\n", argv[1], strerror(errno));

    int file = broker_open(argv[1]);
    if (file < 0) {
        fprintf(stderr, "could not open %s\n", argv[1]);
        return 1;
    }
    printf("open %s: granted, fd %d; it says:\n", argv[1], file);
    char buf[4096];
    ssize_t got;
    while ((got = read(file, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)got, stdout);
    close(file);
    if (got < 0) {
        perror("read");
        return 1;
    }

    int denied = broker_open(argv[2]);
    if (denied >= 0) {
        close(denied);
        printf("open %s: granted?! the policy should have refused it\n", argv[2]);
        return 1;
    }
    return denied == -1 && strcmp(last_code, "denied") == 0 ? 0 : 1;
}
