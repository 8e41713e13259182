/*
 * td_clock.h - the two clocks of the process: a monotonic one for intervals,
 * timeouts and backoffs, and the wall clock (ms since the Unix epoch) for
 * what is stamped or compared with event and timer times.
 *
 * @locality any thread.
 */
#ifndef TD_CLOCK_H
#define TD_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Monotonic milliseconds (an arbitrary origin): never jumps with NTP. */
static inline int64_t td_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic microseconds, for phase timings. */
static inline int64_t td_mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Wall clock milliseconds since the Unix epoch. */
static inline int64_t td_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
