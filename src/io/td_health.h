/*
 * td_health.h - is the process alive: the heartbeat of the main loop, and
 * systemd's notification protocol (sd_notify, libsystemd).
 *
 * The main loop calls td_health_beat at every turn, and so do the waits
 * that hold the loop by design (Redis down: the batch is held and retried;
 * the broker acknowledging nothing): the process is alive while it waits,
 * and a supervisor must not kill it for that. What a beat that stops means
 * is a loop that is stuck (a deadlock, a call that never returns): /healthz
 * says so after TD_HEALTH_STALL_MS, and systemd's watchdog restarts the
 * service after WatchdogSec= (deploy/touchd.service).
 *
 * Notification is on only when $NOTIFY_SOCKET is set (systemd Type=notify
 * sets it): READY=1 once the daemon runs, WATCHDOG=1 from td_health_beat
 * every third of $WATCHDOG_USEC (when systemd asks for a watchdog), and
 * STOPPING=1 when the stop begins. Without it every call is a no-op.
 *
 * @locality td_health_beat, td_health_notify_*: the main thread;
 * td_health_last_beat_ms: any thread (an atomic).
 */
#ifndef TD_HEALTH_H
#define TD_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

/* /healthz is unhealthy once the loop has not turned for this long. */
#define TD_HEALTH_STALL_MS 30000

/* Reads $NOTIFY_SOCKET and the watchdog interval (sd_watchdog_enabled);
 * the first beat is now. @returns true when notification is on. */
bool td_health_init(void);
/* The loop turns (or waits, alive): records the time; sends WATCHDOG=1 when
 * a third of the watchdog interval has passed since the last one. */
void td_health_beat(void);
/* Monotonic ms of the last beat (0: never). */
int64_t td_health_last_beat_ms(void);
/* READY=1 (with a STATUS= text), STOPPING=1. */
void td_health_notify_ready(const char *status);
void td_health_notify_stopping(void);
/* The pipeline holds a batch because Redis fails (set when the hold
 * begins, cleared when Redis answers again): /readyz reports it. */
void td_health_set_redis_held(bool held);
bool td_health_redis_held(void);
/* WATCHDOG=1 messages sent so far. */
uint64_t td_health_watchdogs_sent(void);

#endif
