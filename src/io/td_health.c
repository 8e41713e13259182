/*
 * td_health.c - the heartbeat and sd_notify (td_health.h).
 *
 * The heartbeat is one process-wide atomic: every beat is a store, every
 * /healthz a load, nothing else is shared. sd_notify(3) sends one datagram
 * to $NOTIFY_SOCKET per call; a beat sends one at most every third of the
 * watchdog interval, so a busy loop pays a clock read and a compare.
 *
 * File-local names start with hl_.
 *
 * @locality see td_health.h.
 */
#include "td_health.h"

#include <stdlib.h>

#include <systemd/sd-daemon.h>

#include "td_clock.h"
#include "td_log.h"

static int64_t hl_beat;        /* __atomic */
static bool hl_on;             /* $NOTIFY_SOCKET set */
static int64_t hl_watchdog_ms; /* a third of $WATCHDOG_USEC; 0: no watchdog */
static int64_t hl_next_watchdog;
static uint64_t hl_watchdogs;

bool td_health_init(void) {
    __atomic_store_n(&hl_beat, td_mono_ms(), __ATOMIC_RELAXED);
    const char *sock = getenv("NOTIFY_SOCKET");
    hl_on = sock && *sock;
    hl_watchdog_ms = 0;
    if (hl_on) {
        uint64_t usec = 0;
        if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
            hl_watchdog_ms = (int64_t)(usec / 3000);
            if (hl_watchdog_ms < 1) hl_watchdog_ms = 1;
        }
        td_log_info("systemd notification", "watchdog_ms=%lld", (long long)(hl_watchdog_ms * 3));
    }
    hl_next_watchdog = 0;
    return hl_on;
}

void td_health_beat(void) {
    int64_t now = td_mono_ms();
    __atomic_store_n(&hl_beat, now, __ATOMIC_RELAXED);
    if (hl_watchdog_ms && now >= hl_next_watchdog) {
        hl_next_watchdog = now + hl_watchdog_ms;
        if (sd_notify(0, "WATCHDOG=1") > 0) hl_watchdogs++;
    }
}

int64_t td_health_last_beat_ms(void) { return __atomic_load_n(&hl_beat, __ATOMIC_RELAXED); }

void td_health_notify_ready(const char *status) {
    if (!hl_on) return;
    sd_notifyf(0, "READY=1\nSTATUS=%s", status ? status : "running");
    hl_next_watchdog = 0; /* the first WATCHDOG=1 at the next beat */
}

void td_health_notify_stopping(void) {
    if (hl_on) sd_notify(0, "STOPPING=1");
}

uint64_t td_health_watchdogs_sent(void) { return hl_watchdogs; }

static int hl_redis_held; /* __atomic */

void td_health_set_redis_held(bool held) {
    __atomic_store_n(&hl_redis_held, held ? 1 : 0, __ATOMIC_RELAXED);
}

bool td_health_redis_held(void) { return __atomic_load_n(&hl_redis_held, __ATOMIC_RELAXED) != 0; }
