/*
 * td_calendar_load.h - reading business calendars from disk: a directory of
 * `<REGION>.holidays` files in, one td_calendar out. This is the I/O half;
 * parsing and queries are in src/core/td_calendar.h (no I/O there).
 *
 * @locality any thread (no shared state); the calendar returned is the
 * caller's.
 */
#ifndef TD_CALENDAR_LOAD_H
#define TD_CALENDAR_LOAD_H

#include <stddef.h>

#include "td_calendar.h"

/* Largest holidays file accepted, in bytes. */
#define TD_CAL_FILE_MAX (1024 * 1024)

/*
 * Reads every `*.holidays` file of directory `dir` (not recursive; hidden
 * files skipped), in name order, into a new calendar: the region of each file
 * is its name without the extension ("FR.holidays" -> FR, "DE-BY.holidays" ->
 * DE-BY; case-insensitive). A directory with no such file gives an empty
 * calendar (weekends only).
 * @returns the calendar (free with td_calendar_free), or NULL with err set to
 * "<path>: line N: message" (or an I/O error, or a bad file name); nothing is
 * kept from a directory with any bad file.
 */
td_calendar *td_calendar_load_dir(const char *dir, char *err, size_t errcap);

#endif
