/*
 * otelbridge-runc: the runtime-side recorder of otelbridge (docs/runtime.md).
 *
 * Installed as the runc binary of containerd's runc shim (runc option BinaryName, or
 * `ctr run --runc-binary`). For `runc create` and `runc start` it notes when runc was
 * invoked and when it exited (CLOCK_REALTIME nanoseconds, the clock of containerd's event
 * envelopes) in the spool, one line per moment, and passes runc's exit status on; every
 * other command is handed to runc by execv, untouched.
 *
 * Contracts:
 *  - runc always runs, with the same argv, stdio, environment and exit status: a failure
 *    to record (spool missing, full, unwritable) is silent and costs nothing but the
 *    entry. Signals the wrapper gets (TERM, INT, HUP, QUIT, USR1, USR2) are passed on to
 *    runc; runc dies with the wrapper (PR_SET_PDEATHSIG, as the shim asks of runc).
 *  - The spool file of a container is OB_SPOOL/<namespace>/<container id>, lines appended
 *    with O_APPEND, one write(2) each:
 *        ob1 <time ns> <moment> <namespace> <id> [key=value ...]
 *    moments: create.begin (with shim=new|reused|unknown and shim_pid=N), create.end and
 *    start.end (with status=N: runc's exit code, or 128+signal), start.begin.
 *    The namespace is the last element of runc's --root (the shim's <root>/<namespace>).
 *  - Bounds: nothing is appended to a file already OB_MAX_FILE_BYTES long, and no new
 *    file is created in a namespace directory whose size (its entries) exceeds
 *    OB_MAX_DIR_BYTES; the bridge removes what it read and what grew old.
 *  - A shim is "reused" when a marker OB_SPOOL/.shims/<shim pid>-<shim start time> was
 *    there already: an earlier container's runc create ran under the same shim process
 *    (CRI runs one shim per pod).
 *
 * Build (otelbridge hook install does it):
 *   cc -O2 -static -DOB_RUNC='"/usr/sbin/runc"' -DOB_SPOOL='"/var/lib/otelbridge/hook-spool"'
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef OB_RUNC
#error "define OB_RUNC: the real runc binary"
#endif
#ifndef OB_SPOOL
#error "define OB_SPOOL: the spool directory"
#endif
#ifndef OB_MAX_FILE_BYTES
#define OB_MAX_FILE_BYTES 4096
#endif
#ifndef OB_MAX_DIR_BYTES
#define OB_MAX_DIR_BYTES (1024L * 1024)
#endif

#define MAX_NAME 76 /* containerd's identifier limit */

static volatile pid_t child_pid;

static void forward(int sig)
{
    if (child_pid > 0)
        kill(child_pid, sig);
}

static void run_runc(char **argv)
{
    execv(OB_RUNC, argv);
    dprintf(2, "otelbridge-runc: cannot run %s: %s\n", OB_RUNC, strerror(errno));
    _exit(127);
}

/* containerd identifiers: [A-Za-z0-9]+([._-][A-Za-z0-9]+)*, at most 76 characters */
static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME || s[0] == '.' || s[0] == '-' || s[0] == '_')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* runc's global options that take a value (urfave/cli accepts - and --) */
static int takes_value(const char *opt)
{
    static const char *const with_value[] = {"root", "log", "log-format", "criu", "rootless", 0};
    while (*opt == '-')
        opt++;
    for (int i = 0; with_value[i]; i++)
        if (strcmp(opt, with_value[i]) == 0)
            return 1;
    return 0;
}

/* the start time of process `pid` (clock ticks since boot: field 22 of /proc/PID/stat) */
static int start_ticks(pid_t pid, char *out, size_t size)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (p == NULL)
        return -1;
    p++;
    for (int field = 3; field < 22; field++) { /* p is before field 3 */
        p = strchr(p + 1, ' ');
        if (p == NULL)
            return -1;
    }
    p++;
    size_t len = strcspn(p, " ");
    if (len == 0 || len >= size)
        return -1;
    memcpy(out, p, len);
    out[len] = 0;
    return 0;
}

/* "new", "reused" or "unknown": whether an earlier runc create ran under this shim */
static const char *shim_state(int spool, pid_t shim)
{
    char ticks[32], marker[96];
    if (start_ticks(shim, ticks, sizeof ticks) != 0)
        return "unknown";
    snprintf(marker, sizeof marker, "%d-%s", (int)shim, ticks);
    int dir = openat(spool, ".shims", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (dir < 0 && errno == ENOENT && mkdirat(spool, ".shims", 0700) == 0)
        dir = openat(spool, ".shims", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (dir < 0)
        return "unknown";
    struct stat d;
    int full = fstat(dir, &d) != 0 || d.st_size > OB_MAX_DIR_BYTES;
    int flags = full ? O_RDONLY : O_WRONLY | O_CREAT | O_EXCL; /* full: look, do not add */
    int fd = openat(dir, marker, flags | O_CLOEXEC | O_NOFOLLOW, 0600);
    const char *state = fd >= 0 ? (full ? "reused" : "new")
                        : (!full && errno == EEXIST) ? "reused" : "unknown";
    if (fd >= 0)
        close(fd);
    close(dir);
    return state;
}

/* the container's spool file, opened for appending; -1 when it cannot or must not grow */
static int open_entry(int spool, const char *ns, const char *id)
{
    int dir = openat(spool, ns, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (dir < 0 && errno == ENOENT && mkdirat(spool, ns, 0700) == 0)
        dir = openat(spool, ns, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (dir < 0)
        return -1;
    int fd = openat(dir, id, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT) {
        struct stat d;
        if (fstat(dir, &d) == 0 && d.st_size <= OB_MAX_DIR_BYTES)
            fd = openat(dir, id, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    }
    close(dir);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || st.st_size >= OB_MAX_FILE_BYTES)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static void note(int fd, long long t, const char *moment, const char *ns, const char *id,
                 const char *extra)
{
    char line[320];
    int n = snprintf(line, sizeof line, "ob1 %lld %s %s %s%s%s\n", t, moment, ns, id,
                     extra[0] ? " " : "", extra);
    if (fd >= 0 && n > 0 && (size_t)n < sizeof line) {
        ssize_t w = write(fd, line, (size_t)n); /* one write: lines never interleave */
        (void)w;
    }
}

int main(int argc, char **argv)
{
    const char *root = NULL, *command = NULL;
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-') {
            command = a;
            break;
        }
        if (strchr(a, '=') == NULL && takes_value(a) && i + 1 < argc) {
            const char *name = a + strspn(a, "-");
            if (strcmp(name, "root") == 0)
                root = argv[i + 1];
            i++;
        } else if (strncmp(a + strspn(a, "-"), "root=", 5) == 0) {
            root = a + strspn(a, "-") + 5;
        }
    }
    int create = command != NULL && strcmp(command, "create") == 0;
    int start = command != NULL && strcmp(command, "start") == 0;
    const char *id = argv[argc - 1];
    const char *ns = root != NULL ? strrchr(root, '/') : NULL;
    ns = ns != NULL ? ns + 1 : root;
    if ((!create && !start) || i >= argc - 1 || ns == NULL || !valid_name(ns) ||
        !valid_name(id))
        run_runc(argv); /* nothing to record: runc as if called directly */

    long long begin = now_ns();
    int spool = open(OB_SPOOL, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (spool < 0)
        run_runc(argv);
    char extra[96] = "";
    if (create) {
        pid_t shim = getppid();
        snprintf(extra, sizeof extra, "shim=%s shim_pid=%d", shim_state(spool, shim), (int)shim);
    }
    int fd = open_entry(spool, ns, id);
    close(spool);
    if (fd < 0)
        run_runc(argv);

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        note(fd, begin, create ? "create.begin" : "start.begin", ns, id, extra);
        close(fd);
        run_runc(argv);
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(137); /* the wrapper died before we could be told */
        run_runc(argv);
    }
    child_pid = pid;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t k = 0; k < sizeof forwarded / sizeof forwarded[0]; k++)
        sigaction(forwarded[k], &sa, NULL);
    note(fd, begin, create ? "create.begin" : "start.begin", ns, id, extra);

    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            status = 127 << 8; /* cannot happen: our own child */
            break;
        }
    long long end = now_ns();
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    char result[32];
    snprintf(result, sizeof result, "status=%d", code);
    note(fd, end, create ? "create.end" : "start.end", ns, id, result);
    close(fd);
    if (WIFSIGNALED(status)) {
        signal(WTERMSIG(status), SIG_DFL);
        raise(WTERMSIG(status));
    }
    return code;
}
