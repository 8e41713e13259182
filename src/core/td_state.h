/*
 * td_state.h - per-prospect state: the model, one reducer per event type, the
 * schema that rules read, and the flat field/value form stored in Redis.
 *
 * State is a plain struct plus two small growable tables (per-rule last fired
 * times, pending timers). The reducer (td_state_apply) is pure: the state and
 * the event in, the state changed in place, nothing else touched. The schema
 * (td_schema_*) is the contract of the rules language: every name a `when`,
 * `block` or `at` expression can read, its type, and how to read it.
 *
 * Flat form: td_state_serialize emits only fields that differ from a fresh
 * state, as ASCII text, so `redis-cli HGETALL touchd:p:{p-42}` is readable;
 * td_state_set_field reads them back. A round trip is lossless.
 *
 * The code is in td_state.c (the reducer and the tables), td_state_flat.c
 * (the flat form) and td_state_schema.c (the schema and its getters).
 *
 * @locality any thread; a td_state is used by one thread at a time.
 */
#ifndef TD_STATE_H
#define TD_STATE_H

#include "td_base.h"
#include "td_event.h"
#include "td_time.h"

#define TD_DEDUP_RING 32 /* the newest applied event ids, a ring */
/* Older ids, evicted from the ring, kept in segments of TD_DEDUP_SEG: a
 * duplicate is caught within the dedup window (td_trigger.dedup_window,
 * default TD_DEDUP_WINDOW) or the prospect's last TD_DEDUP_MIN events,
 * whichever is larger, and never more than TD_DEDUP_MAX ids (docs/state.md). */
#define TD_DEDUP_SEG 32
#define TD_DEDUP_MIN 1000
#define TD_DEDUP_MAX 4096
#define TD_DEDUP_WINDOW (7 * TD_DAY)
#define TD_TOUCH_RING 64  /* recent outbound touch times kept per prospect */
#define TD_POS_MAX 8      /* input (topic, partition) positions per prospect */
#define TD_RECENT_RECS 32 /* recently published recommendation ids kept per prospect */

/* Why a channel is blocked for good. */
typedef enum td_block_reason {
    TD_BLOCK_NONE = 0,
    TD_BLOCK_UNSUBSCRIBED, /* email.unsubscribed */
    TD_BLOCK_HARD_BOUNCE,  /* email.bounced with hard = true */
    TD_BLOCK_OPTED_OUT     /* whatsapp/sms.opted_out */
} td_block_reason;
const char *td_block_reason_name(td_block_reason r); /* "" for NONE */

typedef struct td_chan_state {
    int64_t sent; /* outbound touches on this channel */
    int64_t delivered;
    int64_t opened; /* human opens (email.opened human=true, *.read) */
    int64_t clicked;
    int64_t replied;                                     /* replies, out-of-office excluded */
    int64_t failed;                                      /* soft bounces, failed sends */
    int64_t unanswered;                                  /* sent since the last reply */
    int64_t opens_since_reply;                           /* human opens since the last reply */
    td_ms last_sent_at, last_opened_at, last_replied_at; /* TD_MS_MISSING if never */
    td_block_reason blocked;
    td_tristate consent; /* from opted_in/opted_out and prospect.updated */
} td_chan_state;

/*
 * A rule id with its length and hash: the key of the per-rule tables below.
 * The ruleset computes one per rule when it compiles (td_rule.key) and the
 * expression compiler one per constant last_fired('...') argument, so the
 * engine's lookups compare 64-bit hashes instead of calling strcmp; a hash
 * match is always confirmed on the bytes, so a collision costs time, never
 * correctness. The string API (td_state_fired_at...) makes one on the fly.
 */
typedef struct td_rule_key {
    const char *id; /* borrowed: len bytes (NUL-terminated when it is stored) */
    uint32_t len;
    uint64_t hash; /* td_hash64(id, len, TD_HASH_SEED) */
} td_rule_key;
/* The key of `id` (borrowed: it must outlive the key). */
td_rule_key td_rule_key_make(const char *id);

/* Last time a rule fired for this prospect (cooldowns). */
typedef struct td_fired {
    uint64_t hash; /* td_rule_key hash of rule: a lookup accelerator, not in the flat form */
    td_ms at;
    char rule[TD_RULE_ID_MAX + 1];
} td_fired;

/*
 * A pending timer of a rule with `after` (one per rule and prospect).
 *
 * One event arms many timers (every rule with `after` it triggers), all with
 * its id, so the id is not stored in each entry but once per state, in a
 * small pool of td_armed slots shared by reference count; an entry is 96
 * bytes instead of 216, and re-arming a state's timers touches half the
 * memory. `armed_by` reads as before (a NUL-terminated id with TD_ID_MAX + 1
 * readable bytes behind it, so copying `sizeof(char[TD_ID_MAX + 1])` bytes
 * from it is safe); like the entry itself, it stays valid until the state's
 * timers change (arm, disarm, copy, free).
 */
typedef struct td_timer {
    /* td_rule_key hash of rule: a lookup accelerator, not in the flat form.
     * hash, due_at and most of rule share the first cache line: finding a
     * timer (and checking when it is due) reads one line per entry. */
    uint64_t hash;
    td_ms due_at;
    char rule[TD_RULE_ID_MAX + 1];
    uint32_t armed_slot;  /* index of its td_armed in the state's pool */
    const char *armed_by; /* id of the event that armed it: the pool slot's id */
} td_timer;

/* An armed_by id shared by the timers it armed (td_state.armed). */
typedef struct td_armed {
    char id[TD_ID_MAX + 1];
    uint8_t len;   /* strlen(id) (TD_ID_MAX fits) */
    uint32_t refs; /* timers pointing here; 0: free for reuse */
} td_armed;

/*
 * A pending recommendation: published, not yet acted on, dismissed,
 * withdrawn or expired. The state keeps them (the current plan,
 * docs/recommendations.md), soonest not_before first (then by id), at most
 * TD_PLAN_MAX. json is the recommendation exactly as published but for its
 * generated_at (owned, NUL-terminated); the other fields are what the engine
 * matches withdrawals on, copied from the rule when it fired (a reload that
 * removes the rule does not orphan them).
 */
#define TD_PLAN_MAX 32
#define TD_INTENT_MAX 24
typedef struct td_pending {
    char id[36]; /* "r-" + 32 hex */
    td_ms not_before, expires_at;
    td_channel channel;
    bool owner; /* audience: the owner (an owner nudge), else the prospect */
    char rule[TD_RULE_ID_MAX + 1];
    char group[TD_RULE_ID_MAX + 1]; /* "" when the rule has none (its own group) */
    char touch[TD_SHORT_MAX + 1];
    char intent[TD_INTENT_MAX + 1]; /* "" when the rule declares none */
    td_ms snoozed_until;            /* 0: not snoozed; else out of the published plan until then */
    char *json;
    uint32_t len;
} td_pending;

/* A segment of older applied event ids (fingerprints), oldest first. */
typedef struct td_dedup_seg {
    uint64_t fp[TD_DEDUP_SEG];
    uint32_t n;
    uint32_t seq; /* its number: the flat form's "dedup.<seq>" */
    td_ms newest; /* the prospect's clock when its last id was added */
} td_dedup_seg;

/* Last applied input offset for one (topic, partition), set by the daemon. */
typedef struct td_pos {
    uint64_t key; /* td_hash64 of "<topic>/<partition>" */
    int64_t offset;
} td_pos;

typedef struct td_state {
    char prospect_id[TD_ID_MAX + 1];
    char owner_id[TD_ID_MAX + 1];
    int64_t version; /* bumped by every successful write (compare-and-set) */
    int64_t events;  /* events applied */

    td_chan_state ch[TD_CH__COUNT];

    /* CRM attributes (prospect.updated); "" / NONE / missing when never set */
    td_stage stage;
    int64_t tier; /* TD_INT_MISSING or 1..3 */
    char country[3];
    char sector[TD_SHORT_MAX + 1];
    char timezone[TD_SHORT_MAX + 1];
    td_gift_policy gift_policy;
    td_dec lifetime_value_eur; /* TD_DEC_MISSING when unknown */
    char language[16];

    td_ms first_seen_at;   /* occurred_at of the first event applied */
    td_ms last_event_at;   /* latest occurred_at applied */
    td_ms clock;           /* the prospect's clock: the engine's now of its latest
                            * trigger (never runs backwards; docs/state.md) */
    td_ms last_touch_at;   /* latest outbound touch, any channel */
    td_ms last_inbound_at; /* latest reply/accept/connected, any channel */
    td_ms first_touch_at;  /* first outbound touch, any channel */
    td_ms stage_changed_at;
    int64_t replies; /* replies on any channel, out-of-office excluded */
    td_sentiment last_reply_sentiment;
    int64_t meetings_booked, meetings_held, meetings_cancelled, meetings_no_show;
    td_ms next_meeting_at; /* `at` of the last meeting.booked, cleared on held/cancelled */

    /* outbound touch times, newest at touch_ring[(touch_head - 1) % RING] */
    td_ms touch_ring[TD_TOUCH_RING];
    uint32_t touch_count; /* entries used, <= TD_TOUCH_RING */
    uint32_t touch_head;

    /* engagement by local hour: human opens and replies counted by the hour of
     * day in the prospect's zone (or the default zone) when they occurred */
    uint32_t hour_hist[24];

    /* gifts: counters are for gift_year (local calendar year of the last gift) */
    int32_t gift_year;
    int64_t gifts_year_count;
    td_dec gifts_year_spend_eur;
    int64_t gifts_total;
    td_ms last_gift_at;
    td_gift_kind last_gift_kind;

    /* recently applied event ids (fingerprints), a ring */
    uint64_t dedup[TD_DEDUP_RING];
    uint32_t dedup_count, dedup_head;
    /* owned: the ids evicted from the ring, oldest segment first */
    td_dedup_seg *dold;
    uint32_t ndold;
    size_t capdold;

    td_pos pos[TD_POS_MAX];
    uint32_t npos;

    /* the current plan: pending recommendations, soonest first (owned) */
    td_pending *plan;
    uint32_t nplan;
    size_t capplan;
    int64_t plan_version; /* bumped by every change of the plan */
    /* fingerprints of the recommendations published lately, newest at
     * recent[(recent_head - 1) % RING]: what feedback may name; the low bit
     * is 1 for a gift touch (the gift cadence) */
    uint64_t recent[TD_RECENT_RECS];
    uint32_t recent_count, recent_head;
    /* gift touches recommended in the local year gift_rec_year and not
     * dismissed (the cadence counts them, whatever the CRM reports) */
    int32_t gift_rec_year;
    int64_t gift_recs_year;
    /* feedback from notifiers */
    int64_t fb_acted, fb_dismissed, fb_snoozed;
    td_ms last_acted_at;

    td_fired *fired; /* owned; sorted by rule id */
    uint32_t nfired, capfired;
    td_timer *timers; /* owned; sorted by rule id */
    uint32_t ntimers, captimers;
    /* owned: the armed_by ids of the timers, shared (see td_timer); slots
     * with refs == 0 are reused, and none of this is state (the flat form
     * and td_state_equal see only each timer's armed_by) */
    td_armed *armed;
    uint32_t narmed, caparmed;
    uint32_t armed_hint; /* slot of the latest arm: the next one is often the same event */

    /* Lookup accelerators for the two tables, not state (never serialised
     * or compared): slot hash % N holds 1 + the index of an entry whose
     * rule id has that hash, or 0 when no entry has it. A hit is verified on
     * the entry and a wrong non-zero slot falls back to a scan, so it costs
     * time, never a wrong answer; a 0 is trusted (a lookup misses at once),
     * which holds because td_state.c rebuilds them from every entry (while
     * fewer than 255) on each insertion or removal: only td_state.c may
     * change the tables. */
    uint8_t fired_slot[32];
    uint8_t timer_slot[64];
} td_state;

/* Settings the state, the functions and the engine read. The ruleset carries
 * them (a `settings` block in a rules file), so ops tune them with the rules. */
typedef struct td_settings {
    char default_timezone[TD_SHORT_MAX + 1]; /* used when the prospect has none; "UTC" */
    int best_time_min_points;   /* engagement points needed before best_time trusts them (5) */
    int best_time_default_hour; /* local hour used below that (10) */
    int business_start_hour;    /* 9: first local hour a touch may be scheduled */
    int business_end_hour;      /* 18: touches end before this local hour */
    int quiet_start_hour;       /* 21: even `window = "any"` touches wait from this local hour */
    int quiet_end_hour;         /* 8: ... until this one (the range wraps midnight) */
    /* yearly cap on client gifts per recipient whose VAT is recoverable, per
     * country (France: 73 EUR incl. VAT); read by gift_tax_cap_eur() */
    struct {
        char country[3];
        td_dec cap_eur;
    } gift_tax_caps[32];
    uint32_t ngift_tax_caps;
    /* public holidays and weekends per country (td_calendar.h); the ruleset
     * owns an empty one until the caller attaches a loaded one. Never NULL
     * inside a compiled ruleset. */
    const struct td_calendar *calendar;
    /* the plan (docs/rules.md): how long after its not_before a
     * recommendation expires, and how far past its not_before it may be
     * published before it is late, unless the rule says (7d, 24h) */
    td_ms expires, late_after;
} td_settings;
/* The defaults above. */
void td_settings_default(td_settings *s);

/* A fresh state for `prospect_id` (truncated to TD_ID_MAX). */
void td_state_init(td_state *st, const char *prospect_id);
/* Frees the tables; the struct itself belongs to the caller. NULL is a no-op. */
void td_state_free(td_state *st);
/* Deep copy: dst is initialised (any previous content of dst is NOT freed). */
int td_state_copy(td_state *dst, const td_state *src);
/* Deep equality (for tests and round trips). */
bool td_state_equal(const td_state *a, const td_state *b);

/* Event-id dedup ring. The _fp forms take td_state_fingerprint(event_id),
 * so a step that checks then remembers hashes the id once. */
bool td_state_seen(const td_state *st, const char *event_id);
void td_state_remember(td_state *st, const char *event_id);
uint64_t td_state_fingerprint(const char *event_id);
bool td_state_seen_fp(const td_state *st, uint64_t fp);
void td_state_remember_fp(td_state *st, uint64_t fp);
/* Remembers fp at the prospect's time `now`: the id the ring evicts goes to
 * the older segments, and the oldest segment goes when all its ids are
 * older than both bounds (window before now, and the last TD_DEDUP_MIN
 * ids), or past TD_DEDUP_MAX. window 0: TD_DEDUP_WINDOW.
 * @returns TD_OK, or TD_ERR on out-of-memory (the id is in the ring). */
int td_state_remember_at(td_state *st, uint64_t fp, td_ms now, td_ms window);
/* Ids the dedup remembers (ring and segments). */
uint32_t td_state_dedup_size(const td_state *st);
/* Puts a loaded older segment in seq order (the same seq: replaced). */
int td_state_dedup_put(td_state *st, const td_dedup_seg *g);

/* Input positions: last applied offset of (topic, partition), -1 if none. */
int64_t td_state_pos_get(const td_state *st, const char *topic, int32_t partition);
void td_state_pos_set(td_state *st, const char *topic, int32_t partition, int64_t offset);

/* Per-rule last fired time (TD_MS_MISSING if never) and its update. Both
 * tables stay sorted by rule id (the flat form and td_redis rely on it); the
 * _key forms are the same operations with a precomputed key. */
td_ms td_state_fired_at(const td_state *st, const char *rule);
int td_state_set_fired(td_state *st, const char *rule, td_ms at);
td_ms td_state_fired_at_key(const td_state *st, const td_rule_key *rule);
int td_state_set_fired_key(td_state *st, const td_rule_key *rule, td_ms at);

/* Pending timers: find (NULL if none), arm or re-arm, disarm. */
const td_timer *td_state_timer(const td_state *st, const char *rule);
int td_state_arm_timer(td_state *st, const char *rule, td_ms due_at, const char *armed_by);
void td_state_disarm_timer(td_state *st, const char *rule);
const td_timer *td_state_timer_key(const td_state *st, const td_rule_key *rule);
/* armed_len: strlen(armed_by), so a step arming many timers measures it once */
int td_state_arm_timer_key(td_state *st, const td_rule_key *rule, td_ms due_at,
                           const char *armed_by, size_t armed_len);
void td_state_disarm_timer_key(td_state *st, const td_rule_key *rule);
/*
 * Arming many timers with one armed_by (what an event does): hold its pool
 * slot once, arm each timer with the slot, then drop the hold; the id is
 * then looked up once, not once per timer. The slot stays valid while held
 * (arming and disarming timers do not move the pool). td_state_armed_hold
 * returns TD_ERR on out-of-memory or an id over TD_ID_MAX bytes;
 * td_state_arm_timer_slot as td_state_arm_timer_key (and TD_ERR for a slot
 * that is not held).
 */
int td_state_armed_hold(td_state *st, const char *armed_by, size_t armed_len, uint32_t *slot);
int td_state_arm_timer_slot(td_state *st, const td_rule_key *rule, td_ms due_at, uint32_t slot);
void td_state_armed_drop(td_state *st, uint32_t slot);

/* The plan: td_state_plan_add takes e (its json is owned by the state
 * afterwards, also on TD_ERR, when it is freed) and keeps the table in plan
 * order; a plan already at TD_PLAN_MAX first loses the entry that expires
 * first, which is copied to *evicted (its json then the caller's; NULL:
 * freed). td_state_plan_remove drops entry i (its json freed unless taken:
 * set json NULL first). td_state_plan_find returns the index of id or -1. */
int td_state_plan_add(td_state *st, td_pending *e, td_pending *evicted);
void td_state_plan_remove(td_state *st, uint32_t i);
int td_state_plan_find(const td_state *st, const char *id);
/* The recently published ring: the fingerprint of a recommendation id (low
 * bit: gift), remember one, find one (0 when absent, else its stored
 * fingerprint with the gift bit). */
uint64_t td_state_rec_fingerprint(const char *rec_id, bool gift);
void td_state_rec_remember(td_state *st, uint64_t fp);
uint64_t td_state_rec_seen(const td_state *st, const char *rec_id);
/* Entries of the plan that are published (not snoozed at the clock). */
uint32_t td_state_plan_visible(const td_state *st);

/* Outbound touches in (now - window, now]. */
int64_t td_state_touches_within(const td_state *st, td_ms now, td_ms window);

/*
 * Applies one validated event to the state: counters, last-at times,
 * unanswered / opens_since_reply, human opens only, out-of-office replies not
 * counted as replies, consent and opt-outs, hard bounces, CRM attributes,
 * gifts of the year, engagement by local hour, owner. Does NOT check or update
 * the dedup ring (the engine does). `tz` and `set` give local time.
 * @returns TD_OK, or TD_ERR on out-of-memory (state unchanged then).
 */
int td_state_apply(td_state *st, const td_event *ev, td_tzdb *tz, const td_settings *set);

/* ---- flat form (Redis hash) ---- */

typedef void (*td_kv_fn)(void *ud, const char *key, size_t klen, const char *val, size_t vlen);
/* Calls fn once per non-default field, in a stable order; key and value
 * are NUL-terminated and valid during the call only. */
void td_state_serialize(const td_state *st, td_kv_fn fn, void *ud);
/*
 * Sets one field from its flat form. Unknown keys are ignored (returns 1) so
 * an older touchd can read a newer one's hash; a malformed value returns
 * TD_ERR with a message in err.
 * @returns TD_OK, 1 (ignored), or TD_ERR.
 */
int td_state_set_field(td_state *st, const char *key, size_t klen, const char *val, size_t vlen,
                       char *err, size_t errcap);

/*
 * The difference between two states' flat forms, for writes that send only
 * what changed: set_fn is called for every key of `now` whose value differs
 * from (or is absent in) `before`, del_fn for every key of `before` that
 * `now` no longer has. Applying them to before's hash gives now's hash.
 * @returns TD_OK, or TD_ERR on out-of-memory (nothing was called then).
 */
typedef void (*td_kdel_fn)(void *ud, const char *key, size_t klen);
int td_state_diff(const td_state *before, const td_state *now, td_kv_fn set_fn, td_kdel_fn del_fn,
                  void *ud);

/* ---- the schema: what rule expressions can read ---- */

/* What a guard sees of the recommendation it judges. */
typedef struct td_rec_view {
    td_channel channel;
    const char *touch;
    const char *rule;
    const char *group; /* "" when none */
    int64_t priority;
    td_ms not_before;
    /* the truth of the judging guard's fixed operands for this rule
     * (td_expr_fix_operands), or NULL: then every operand is tested */
    const uint64_t *fixed;
} td_rec_view;

/* Everything an expression can read, for one evaluation. */
typedef struct td_ctx {
    const td_state *st;
    const td_event *ev; /* the triggering event; NULL for timer triggers */
    td_ms now;
    const td_rec_view *rec; /* guards only; NULL otherwise */
    td_tzdb *tz;
    const td_settings *settings;
    void *facts; /* the evaluator's fact recorder, or NULL */
} td_ctx;

/* Where a field may be read. */
enum {
    TD_FIELD_ANY = 0,   /* state and computed fields: everywhere */
    TD_FIELD_EVENT = 1, /* event.*: everywhere, missing on timer triggers */
    TD_FIELD_GUARD = 2  /* rec.*, target.*: only in guards' `block` */
};

typedef struct td_field td_field;
typedef void (*td_field_get_fn)(const td_field *f, const td_ctx *ctx, td_value *out);
struct td_field {
    const char *name; /* "email.unanswered", "tier", "touches.7d", "event.kind" */
    td_type type;
    int scope; /* TD_FIELD_* */
    td_field_get_fn get;
    int channel;     /* for per-channel fields; -1 otherwise */
    size_t offset;   /* for plain fields: offset in td_state or td_chan_state */
    const char *doc; /* one line for docs and `touchd explain` */
};

/* The field named `name` (len bytes), or NULL. */
const td_field *td_schema_lookup(const char *name, size_t len);
/* All fields, for docs and tests; *n receives the count. */
const td_field *td_schema_fields(size_t *n);

/*
 * How the expression evaluator may read a field without calling its getter:
 * the same value, from a fixed place in the td_state. Fields that compute
 * their value (touches.7d, local.hour...), event.*, rec.* and target.* are
 * TD_FA_GETTER: only f->get reads them.
 */
typedef enum td_field_access {
    TD_FA_GETTER = 0, /* only through f->get */
    TD_FA_I64,        /* an int64_t at (const char *)ctx->st + off; never missing */
    TD_FA_I64_OPT,    /* an int64_t at st + off; missing when INT64_MIN (times, tier, decimals) */
    TD_FA_ENUM        /* an int enum code at st + off; its string is enum_name(code), missing
                         when that is NULL or "" */
} td_field_access;
typedef const char *(*td_enum_name_fn)(int code);
/* The access of f; *off and (for TD_FA_ENUM) *enum_name are set when it is
 * not TD_FA_GETTER. */
td_field_access td_field_direct(const td_field *f, size_t *off, td_enum_name_fn *enum_name);

/* Reads a field (convenience for td_field.get). */
static inline void td_field_read(const td_field *f, const td_ctx *ctx, td_value *out) {
    f->get(f, ctx, out);
}

#endif
