/* clockshift: an LD_PRELOAD shim that moves CLOCK_REALTIME (and only it) by
 * an offset, to test what a member whose wall clock is wrong does.
 *
 *   PGHA_CLOCKSHIFT=SECONDS        a fixed offset (may be negative, fractional)
 *   PGHA_CLOCKSHIFT_FILE=PATH      the offset read from PATH, again at most every
 *                                  0.1 s of CLOCK_MONOTONIC (a running process's
 *                                  clock can be stepped); overrides the above
 *
 * Moved: clock_gettime(CLOCK_REALTIME and CLOCK_REALTIME_COARSE), gettimeofday,
 * time. CLOCK_MONOTONIC, CLOCK_BOOTTIME and the rest are left alone.
 * Build: gcc -shared -fPIC -O2 -o clockshift.so clockshift.c -ldl
 * (harness/clockshift.py builds and checks it). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime(void) {
    static clock_gettime_fn real;
    if (!real)
        real = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    return real;
}

static __thread double cached_offset;
static __thread double next_read = -1.0;

static double offset_now(void) {
    const char *path = getenv("PGHA_CLOCKSHIFT_FILE");
    if (!path) {
        const char *fixed = getenv("PGHA_CLOCKSHIFT");
        return fixed ? strtod(fixed, NULL) : 0.0;
    }
    struct timespec mono;
    if (real_clock_gettime()(CLOCK_MONOTONIC, &mono) != 0)
        return cached_offset;
    double now = mono.tv_sec + mono.tv_nsec / 1e9;
    if (now >= next_read) {
        FILE *f = fopen(path, "r");
        double value;
        if (f) {
            if (fscanf(f, "%lf", &value) == 1)
                cached_offset = value;
            fclose(f);
        }
        next_read = now + 0.1;
    }
    return cached_offset;
}

static void shift(struct timespec *ts, double offset) {
    long long whole = (long long)offset;
    long long nsec = ts->tv_nsec + (long long)((offset - whole) * 1e9);
    long long sec = ts->tv_sec + whole;
    while (nsec < 0) { nsec += 1000000000LL; sec -= 1; }
    while (nsec >= 1000000000LL) { nsec -= 1000000000LL; sec += 1; }
    ts->tv_sec = sec;
    ts->tv_nsec = nsec;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int rc = real_clock_gettime()(clock, ts);
    if (rc == 0 && ts && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE))
        shift(ts, offset_now());
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    if (tz)
        ((struct timezone *)tz)->tz_minuteswest = ((struct timezone *)tz)->tz_dsttime = 0;
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
