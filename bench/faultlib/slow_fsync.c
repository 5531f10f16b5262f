/* LD_PRELOAD shim for the flopwatt fault suite: every fsync(), fdatasync() and
 * sync_file_range() first sleeps FLOPWATT_FSYNC_DELAY_MS milliseconds (environment variable,
 * default 100), then calls the real function. Models a slow or contended disk under the
 * collector's SQLite store; processes started from the slowed one inherit LD_PRELOAD.
 *
 * Build: gcc -shared -fPIC -O2 -o slow_fsync.so slow_fsync.c -ldl
 * (bench/faultlib/shim.py builds it on demand into a cache directory).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/types.h>
#include <time.h>

static void slow_down(void) {
    const char *env = getenv("FLOPWATT_FSYNC_DELAY_MS");
    double ms = env ? atof(env) : 100.0;
    if (ms <= 0) return;
    int saved = errno;
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000.0);
    ts.tv_nsec = (long)((ms - ts.tv_sec * 1000.0) * 1e6);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int) = 0;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow_down();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int) = 0;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow_down();
    return real(fd);
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
    static int (*real)(int, off64_t, off64_t, unsigned int) = 0;
    if (!real)
        real = (int (*)(int, off64_t, off64_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    slow_down();
    return real(fd, offset, nbytes, flags);
}
