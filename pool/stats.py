"""Names of the keys that ``get_stats()`` returns (psycopg_pool's names where they fit).

Gauges are read live; counters accumulate until ``pop_stats()`` resets them.
"""

# Gauges
POOL_MIN = "pool_min"  # configured min_size
POOL_MAX = "pool_max"  # configured max_size
POOL_SIZE = "pool_size"  # connections open or being opened
POOL_AVAILABLE = "pool_available"  # idle connections ready to hand out
POOL_IN_USE = "pool_in_use"  # connections borrowed right now
REQUESTS_WAITING = "requests_waiting"  # greenlets queued for a connection

# Counters
REQUESTS_NUM = "requests_num"  # checkouts asked for
REQUESTS_QUEUED = "requests_queued"  # checkouts that had to wait
REQUESTS_WAIT_MS = "requests_wait_ms"  # total time spent waiting, in ms
REQUESTS_TIMEOUTS = "requests_timeouts"  # checkouts that raised PoolTimeout
REQUESTS_REJECTED = "requests_rejected"  # checkouts refused with TooManyRequests
REQUESTS_CANCELLED = "requests_cancelled"  # waiters killed or timed out from outside while queued
CONNECTIONS_NUM = "connections_num"  # connections opened
CONNECTIONS_MS = "connections_ms"  # total time spent opening connections, in ms
CONNECTIONS_ERRORS = "connections_errors"  # failed connection attempts
CONNECTIONS_LOST = "connections_lost"  # idle connections found broken at checkout and replaced
DISCARDED_CANCELLED = "discarded_cancelled"  # borrower raised a BaseException (timeout, kill, exit)
DISCARDED_ERROR = "discarded_error"  # borrower hit a connection error
DISCARDED_RESET = "discarded_reset"  # returned with unread replies or session state, or closed on purpose
DISCARDED_LIFETIME = "discarded_lifetime"  # older than max_lifetime
DISCARDED_IDLE = "discarded_idle"  # idle longer than max_idle
LEAKS_REPORTED = "leaks_reported"  # borrows held past leak_threshold
# Multiplexing (RedisPool(multiplex=N); all 0 when off, but exclusive_checkouts)
EXCLUSIVE_CHECKOUTS = "exclusive_checkouts"  # connections borrowed for one caller alone (every checkout when off)
MUX_CONNECTIONS_NUM = "mux_connections_num"  # shared connections opened
MUX_COMMANDS = "mux_commands"  # commands sent on shared connections
MUX_BATCHES = "mux_batches"  # writes on shared connections; mux_commands / mux_batches = mean batch size
MUX_REPLIES_DROPPED = "mux_replies_dropped"  # replies read and dropped: their callers had given up
MUX_CANCELLED_UNSENT = "mux_cancelled_unsent"  # commands whose callers gave up before they were written: never sent

GAUGES = (POOL_MIN, POOL_MAX, POOL_SIZE, POOL_AVAILABLE, POOL_IN_USE, REQUESTS_WAITING)
COUNTERS = (
    REQUESTS_NUM,
    REQUESTS_QUEUED,
    REQUESTS_WAIT_MS,
    REQUESTS_TIMEOUTS,
    REQUESTS_REJECTED,
    REQUESTS_CANCELLED,
    CONNECTIONS_NUM,
    CONNECTIONS_MS,
    CONNECTIONS_ERRORS,
    CONNECTIONS_LOST,
    DISCARDED_CANCELLED,
    DISCARDED_ERROR,
    DISCARDED_RESET,
    DISCARDED_LIFETIME,
    DISCARDED_IDLE,
    LEAKS_REPORTED,
    EXCLUSIVE_CHECKOUTS,
    MUX_CONNECTIONS_NUM,
    MUX_COMMANDS,
    MUX_BATCHES,
    MUX_REPLIES_DROPPED,
    MUX_CANCELLED_UNSENT,
)
# Why a connection was closed -> the counter that records it.
DISCARD_REASONS = {
    "cancelled": DISCARDED_CANCELLED,
    "error": DISCARDED_ERROR,
    "reset": DISCARDED_RESET,
    "lifetime": DISCARDED_LIFETIME,
    "idle": DISCARDED_IDLE,
    "lost": CONNECTIONS_LOST,
}
