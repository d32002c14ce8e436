/* vdclip: the clipboard of a guest without a desktop, shared with the
 * host through QEMU's qemu-vdagent (the SPICE agent protocol on the
 * virtio-serial port com.redhat.spice.0), which QEMU's VNC server shares
 * with viewers that speak the extended clipboard (vmdesk's console).
 * Text only, the CLIPBOARD selection only. Part of tiny-linux.
 *
 *   vdclip -d        serve the port (started by tiny-linux's init)
 *   clip             copy standard input to the clipboard (the host sees it)
 *   clip -o          print what the host copied last
 *
 * The copy is a file (/run/vdclip/copy) and a byte on a FIFO tells the
 * daemon; what the host copies lands in /run/vdclip/paste.
 *
 * Wire (little-endian): chunks {u32 port; u32 size; data}, carrying
 * messages {u32 protocol = 1; u32 type; u64 opaque; u32 size; data}.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIR_ "/run/vdclip"
#define COPY DIR_ "/copy"
#define PASTE DIR_ "/paste"
#define FIFO DIR_ "/wake"
#define MAX_TEXT (1u << 20)

enum { CLIENT_PORT = 1, MAX_CHUNK = 2048 };
enum { M_CLIPBOARD = 4, M_CAPS = 6, M_GRAB = 7, M_REQUEST = 8, M_RELEASE = 9 };
enum { CAP_BY_DEMAND = 5, CAP_SELECTION = 6 };
enum { UTF8_TEXT = 1 };

static int port = -1;
static int selections; /* both sides announced CLIPBOARD_SELECTION */

static void put32(uint8_t *p, uint32_t v) {
    p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}
static uint32_t get32(const uint8_t *p) {
    return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static int write_all(int fd, const uint8_t *b, size_t n) {
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        b += w; n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, uint8_t *b, size_t n) {
    while (n) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        b += r; n -= (size_t)r;
    }
    return 0;
}

/* One message, in chunks of at most MAX_CHUNK bytes. */
static void send_msg(uint32_t type, const uint8_t *data, uint32_t size) {
    uint8_t *m = calloc(1, 20 + (size_t)size);
    if (!m) return;
    put32(m, 1);
    put32(m + 4, type);
    put32(m + 16, size);
    memcpy(m + 20, data, size);
    for (uint32_t off = 0, total = 20 + size; off < total;) {
        uint32_t n = total - off > MAX_CHUNK ? MAX_CHUNK : total - off;
        uint8_t h[8];
        put32(h, CLIENT_PORT);
        put32(h + 4, n);
        if (write_all(port, h, 8) || write_all(port, m + off, n)) break;
        off += n;
    }
    free(m);
}

/* A clipboard message: the selection (when both sides have them), then the body. */
static void send_clip(uint32_t type, uint32_t kind, const uint8_t *text, uint32_t n) {
    uint8_t *b = calloc(1, 8 + (size_t)n);
    if (!b) return;
    uint32_t o = selections ? 4 : 0; /* selection 0: CLIPBOARD */
    put32(b + o, kind);
    if (n) memcpy(b + o + 4, text, n);
    send_msg(type, b, o + 4 + n);
    free(b);
}

static void send_caps(uint32_t request) {
    uint8_t c[8];
    put32(c, request);
    put32(c + 4, 1u << CAP_BY_DEMAND | 1u << CAP_SELECTION);
    send_msg(M_CAPS, c, 8);
}

/* The guest's clipboard: the copy file, at most MAX_TEXT bytes. */
static uint8_t *read_copy(uint32_t *n) {
    uint8_t *b = malloc(MAX_TEXT);
    int fd = open(COPY, O_RDONLY | O_CLOEXEC);
    *n = 0;
    if (!b || fd < 0) { if (fd >= 0) close(fd); return b; }
    for (ssize_t r; *n < MAX_TEXT && (r = read(fd, b + *n, MAX_TEXT - *n)) > 0;) *n += (uint32_t)r;
    close(fd);
    return b;
}

static void on_msg(uint32_t type, const uint8_t *d, uint32_t n) {
    if (type == M_CAPS) {
        if (n < 8) return;
        selections = (get32(d + 4) >> CAP_SELECTION) & 1;
        if (get32(d)) send_caps(0);
        return;
    }
    if (type != M_CLIPBOARD && type != M_GRAB && type != M_REQUEST && type != M_RELEASE) return;
    if (selections) {
        if (n < 4 || d[0] != 0) return; /* another selection than CLIPBOARD */
        d += 4; n -= 4;
    }
    if (type == M_GRAB) { /* the host has new contents: ask for its text */
        for (uint32_t i = 0; i + 4 <= n; i += 4)
            if (get32(d + i) == UTF8_TEXT) { send_clip(M_REQUEST, UTF8_TEXT, NULL, 0); return; }
    } else if (type == M_CLIPBOARD) { /* the host's text */
        if (n < 4 || get32(d) != UTF8_TEXT) return;
        d += 4; n -= 4;
        while (n && d[n - 1] == 0) n--; /* viewers may end it with a NUL */
        int fd = open(PASTE ".new", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) return;
        for (uint32_t i = 0; i < n; i++) /* lines end with LF here */
            if (!(d[i] == '\r' && i + 1 < n && d[i + 1] == '\n') && write_all(fd, d + i, 1)) break;
        close(fd);
        rename(PASTE ".new", PASTE);
    } else if (type == M_REQUEST) { /* the host wants ours */
        if (n < 4 || get32(d) != UTF8_TEXT) return;
        uint32_t len;
        uint8_t *text = read_copy(&len);
        send_clip(M_CLIPBOARD, UTF8_TEXT, text, len);
        free(text);
    }
}

static int serve(void) {
    char path[300] = "";
    DIR *dir = opendir("/sys/class/virtio-ports");
    for (struct dirent *e; dir && (e = readdir(dir));) {
        char p[300], name[64] = "";
        snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        if (fgets(name, sizeof name, f) && (name[strcspn(name, "\n")] = 0, !strcmp(name, "com.redhat.spice.0")))
            snprintf(path, sizeof path, "/dev/%s", e->d_name);
        fclose(f);
    }
    if (dir) closedir(dir);
    if (!*path || (port = open(path, O_RDWR | O_CLOEXEC)) < 0) {
        fprintf(stderr, "vdclip: no virtio port com.redhat.spice.0 (no qemu-vdagent channel)\n");
        return 1;
    }
    mkdir(DIR_, 0755);
    unlink(FIFO);
    if (mkfifo(FIFO, 0622) < 0) { perror("vdclip: " FIFO); return 1; }
    chmod(FIFO, 0622);
    int wake = open(FIFO, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    send_caps(1);
    uint8_t *msg = NULL;
    uint32_t have = 0, want = 0;
    for (;;) {
        struct pollfd p[2] = {{port, POLLIN, 0}, {wake, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents & POLLIN) { /* the guest copied: tell the host */
            uint8_t drain[64];
            while (read(wake, drain, sizeof drain) > 0) {}
            send_clip(M_GRAB, UTF8_TEXT, NULL, 0);
        }
        if (!(p[0].revents & (POLLIN | POLLHUP))) continue;
        uint8_t h[8];
        if (read_all(port, h, 8)) { usleep(200000); continue; } /* no host end yet */
        uint32_t n = get32(h + 4);
        if (n > MAX_TEXT + 64) return 1;
        if (!have) { free(msg); msg = malloc(n > 20 ? n : 20); want = 0; }
        else msg = realloc(msg, have + n);
        if (!msg || read_all(port, msg + have, n)) return 1;
        have += n;
        if (!want && have >= 20) want = 20 + get32(msg + 16);
        if (want > MAX_TEXT + 64) return 1;
        if (want && have >= want) {
            on_msg(get32(msg + 4), msg + 20, want - 20);
            have = 0;
        }
    }
}

int main(int argc, char **argv) {
    const char *me = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    if (argc > 1 && !strcmp(argv[1], "-d")) return serve();
    if (argc > 1 && !strcmp(argv[1], "-o")) { /* print the host's text */
        int fd = open(PASTE, O_RDONLY | O_CLOEXEC);
        uint8_t b[4096];
        if (fd < 0) return 0;
        for (ssize_t r; (r = read(fd, b, sizeof b)) > 0;) if (write_all(1, b, (size_t)r)) return 1;
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "usage: %s [-o]   (copy standard input, or print what the host copied)\n", me);
        return 2;
    }
    mkdir(DIR_, 0755);
    int fd = open(COPY ".new", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) { perror("clip"); return 1; }
    uint8_t b[4096];
    size_t total = 0;
    for (ssize_t r; (r = read(0, b, sizeof b)) > 0;) {
        total += (size_t)r;
        if (total > MAX_TEXT) { fprintf(stderr, "clip: over 1 MiB\n"); return 1; }
        if (write_all(fd, b, (size_t)r)) { perror("clip"); return 1; }
    }
    close(fd);
    rename(COPY ".new", COPY);
    int w = open(FIFO, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (w < 0) { fprintf(stderr, "clip: the clipboard agent is not running\n"); return 1; }
    (void)!write(w, "c", 1);
    close(w);
    return 0;
}
