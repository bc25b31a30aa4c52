/* tickwire._market: the embedded market's hot path, compiled.
 *
 * One Flow per symbol does, per batch, what the pure-Python path does across
 * simulator.SymbolFlow.run (the order flow), engine.Engine (the book, trade numbering,
 * ticker statistics) and hub.Hub._flush_book / _flush_trades (checksum, JSON): it
 * returns the batch's "delta" and "trades" messages as bytes, byte for byte the ones
 * the Python path builds for the same seed. tests/test_market_core.py holds the two to
 * that. The gateway relays these bytes (hub.Hub.relay) and reads the state through
 * Flow.export / Flow.ticker only when a snapshot or a ticker is due.
 *
 * Why C: the Python path costs about 2 us of CPU per book update, which at 200,000
 * updates/s is 40% of the gateway's core before a single frame is written. Here an
 * update costs a few tens of nanoseconds. The random stream is CPython's (MT19937,
 * seeded as random.Random(int) seeds it), so both paths draw the same events.
 *
 * Layout: integer prices (ticks) and sizes (lots); each book side is a sorted array
 * (at most MAX_LEVELS + 1 levels), so lookups are binary searches and the best and
 * worst levels are its ends.
 *
 * Levels (at the end) is the ingest protocol's book, for any source's prices: exact
 * decimal text, validated and applied once per change, with the same checksum and JSON
 * (tests/test_market_core.py holds it to ingest.PyLevels).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TABLE 4096
#define MAX_LEVELS 100
#define START_LEVELS 25
#define SIDE_CAP (MAX_LEVELS + 2)
#define CHECKSUM_DEPTH 10
#define RECENT_TRADES 50
#define FAIR_FLOOR_MIN 256
#define MT_N 624
#define MT_M 397

/* -- CPython's Mersenne Twister (Modules/_randommodule.c) ---------------------------- */

typedef struct {
    uint32_t state[MT_N];
    int index;
} mt_t;

static void mt_init_genrand(mt_t *mt, uint32_t s) {
    uint32_t *m = mt->state;
    m[0] = s;
    for (int i = 1; i < MT_N; i++)
        m[i] = 1812433253U * (m[i - 1] ^ (m[i - 1] >> 30)) + (uint32_t)i;
    mt->index = MT_N;
}

static void mt_init_by_array(mt_t *mt, const uint32_t *key, size_t len) {
    uint32_t *m = mt->state;
    size_t i = 1, j = 0, k;
    mt_init_genrand(mt, 19650218U);
    for (k = (MT_N > len ? MT_N : len); k; k--) {
        m[i] = (m[i] ^ ((m[i - 1] ^ (m[i - 1] >> 30)) * 1664525U)) + key[j] + (uint32_t)j;
        i++;
        j++;
        if (i >= MT_N) {
            m[0] = m[MT_N - 1];
            i = 1;
        }
        if (j >= len)
            j = 0;
    }
    for (k = MT_N - 1; k; k--) {
        m[i] = (m[i] ^ ((m[i - 1] ^ (m[i - 1] >> 30)) * 1566083941U)) - (uint32_t)i;
        i++;
        if (i >= MT_N) {
            m[0] = m[MT_N - 1];
            i = 1;
        }
    }
    m[0] = 0x80000000U;
}

#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

/* Refill the state: once every MT_N draws, so kept out of line. */
static NOINLINE void mt_twist(mt_t *mt) {
    static const uint32_t mag01[2] = {0x0U, 0x9908b0dfU};
    uint32_t *m = mt->state;
    uint32_t y;
    int kk;
    for (kk = 0; kk < MT_N - MT_M; kk++) {
        y = (m[kk] & 0x80000000U) | (m[kk + 1] & 0x7fffffffU);
        m[kk] = m[kk + MT_M] ^ (y >> 1) ^ mag01[y & 0x1U];
    }
    for (; kk < MT_N - 1; kk++) {
        y = (m[kk] & 0x80000000U) | (m[kk + 1] & 0x7fffffffU);
        m[kk] = m[kk + (MT_M - MT_N)] ^ (y >> 1) ^ mag01[y & 0x1U];
    }
    y = (m[MT_N - 1] & 0x80000000U) | (m[0] & 0x7fffffffU);
    m[MT_N - 1] = m[MT_M - 1] ^ (y >> 1) ^ mag01[y & 0x1U];
    mt->index = 0;
}

/* Inlined: eight or more draws per book update, each a few shifts. */
static inline uint32_t mt_next(mt_t *mt) {
    if (mt->index >= MT_N)
        mt_twist(mt);
    uint32_t y = mt->state[mt->index++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= (y >> 18);
    return y;
}

/* random.random(): 53 random bits in [0, 1). */
static inline double mt_random(mt_t *mt) {
    uint32_t a = mt_next(mt) >> 5, b = mt_next(mt) >> 6;
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

/* -- CRC32 (zlib's polynomial; the book checksum) -------------------------------------- */

/* Slicing-by-8 tables: crc_table[0] is the classic byte table; table k advances a byte
 * by k more zero bytes, so eight input bytes take eight lookups and no dependent shifts. */
static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320U ^ (c >> 1) : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            crc_table[k][n] = crc_table[0][crc_table[k - 1][n] & 0xff] ^ (crc_table[k - 1][n] >> 8);
}

static uint32_t crc32_of(const char *buf, size_t len) {
    const uint8_t *p = (const uint8_t *)buf;
    uint32_t c = 0xffffffffU;
    for (; len >= 8; len -= 8, p += 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
            crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    }
    while (len--)
        c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffU;
}

/* -- growable output buffer -------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t more) {
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Callers reserve first: each put writes at most what they reserved. */
#define PUT_LITERAL(b, s) put((b), (s), sizeof(s) - 1)
static inline void put(buf_t *b, const char *s, size_t n) {
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static const char DIGIT_PAIRS[] = "00010203040506070809101112131415161718192021222324"
                                  "25262728293031323334353637383940414243444546474849"
                                  "50515253545556575859606162636465666768697071727374"
                                  "75767778798081828384858687888990919293949596979899";

/* Write v's decimal digits, two at a time, ending just before `end`; return where they
 * start (prices, sizes and timestamps on every update). */
static inline char *digits_u64(char *end, uint64_t v) {
    while (v >= 100) {
        unsigned i = (unsigned)(v % 100) * 2;
        v /= 100;
        *--end = DIGIT_PAIRS[i + 1];
        *--end = DIGIT_PAIRS[i];
    }
    if (v >= 10) {
        *--end = DIGIT_PAIRS[v * 2 + 1];
        *--end = DIGIT_PAIRS[v * 2];
    } else {
        *--end = (char)('0' + v);
    }
    return end;
}

static inline size_t count_digits(uint64_t v) {
    size_t n = 1;
    for (;;) {
        if (v < 10)
            return n;
        if (v < 100)
            return n + 1;
        if (v < 1000)
            return n + 2;
        if (v < 10000)
            return n + 3;
        v /= 10000;
        n += 4;
    }
}

/* In place: no copy (a libc memcpy call per number cost more than the digits). */
static inline void put_u64(buf_t *b, uint64_t v) {
    size_t n = count_digits(v);
    digits_u64(b->data + b->len + n, v);
    b->len += n;
}

static inline void put_i64(buf_t *b, int64_t v) {
    if (v < 0) {
        b->data[b->len++] = '-';
        put_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(b, (uint64_t)v);
    }
}

/* Python's f"{q}.{r:0{decimals}d}" with q, r = divmod(value, scale) (floor division);
 * scale is 10**decimals (Flow_init checks 1 <= decimals <= 9). */
static inline void put_fixed(buf_t *b, int64_t value, int64_t scale, int decimals) {
    if (value >= 0) {
        /* No division: the value's digits, at least decimals + 1 of them (zero-padded),
         * written one place to the right; then the integer part moves back one place
         * and the point goes between. */
        uint64_t v = (uint64_t)value;
        size_t n = count_digits(v), d = (size_t)decimals;
        size_t width = n > d ? n : d + 1;
        char *out = b->data + b->len;
        char *first = digits_u64(out + 1 + width, v);
        while (first > out + 1)
            *--first = '0';
        memmove(out, out + 1, width - d);
        out[width - d] = '.';
        b->len += width + 1;
        return;
    }
    int64_t q = value / scale, r = value % scale;
    if (r < 0) {
        r += scale;
        q -= 1;
    }
    put_i64(b, q);
    b->data[b->len++] = '.';
    for (int i = decimals - 1; i >= 0; i--) {
        b->data[b->len + i] = (char)('0' + r % 10);
        r /= 10;
    }
    b->len += decimals;
}

/* A fixed number is at most this long: sign, 19 digits, point, 9 decimals (30), with
 * room to spare. */
#define FIXED_MAX (24 + 18)

/* -- one side of the book ------------------------------------------------------------ */

typedef struct {
    int64_t px[SIDE_CAP];
    int64_t lots[SIDE_CAP];
    int n;
} side_t;

/* Index of px, or -(insertion point) - 1. */
static inline int side_find(const side_t *s, int64_t px) {
    int lo = 0, hi = s->n;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (s->px[mid] < px)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < s->n && s->px[lo] == px)
        return lo;
    return -lo - 1;
}

static inline void side_delete(side_t *s, int i) {
    memmove(s->px + i, s->px + i + 1, (size_t)(s->n - i - 1) * sizeof(int64_t));
    memmove(s->lots + i, s->lots + i + 1, (size_t)(s->n - i - 1) * sizeof(int64_t));
    s->n--;
}

static inline void side_insert(side_t *s, int at, int64_t px, int64_t lots) {
    memmove(s->px + at + 1, s->px + at, (size_t)(s->n - at) * sizeof(int64_t));
    memmove(s->lots + at + 1, s->lots + at, (size_t)(s->n - at) * sizeof(int64_t));
    s->px[at] = px;
    s->lots[at] = lots;
    s->n++;
}

/* -- the flow ------------------------------------------------------------------------ */

typedef struct {
    int64_t id, px, lots, ts;
    int buy;
} trade_t;

typedef struct {
    PyObject_HEAD
    mt_t mt;
    side_t bids, asks; /* both ascending by price */
    int64_t best_bid, best_ask, fair, fair_floor, step;
    int initialized; /* __init__ succeeded: every method needs it */
    int64_t pscale, qscale;
    int pdec, qdec;
    /* Interned tables (intern_table): shared by every flow that has the same. */
    const int32_t *sizes, *add_distance, *cancel_distance;
    PyObject *book_ch;   /* JSON string of "book.<SYM>", quotes included (bytes) */
    PyObject *trades_ch; /* the same for "trades.<SYM>" */
    /* Engine state: sequence numbers, trade statistics, recent trades. */
    int64_t book_seq, trade_seq;
    int64_t trade_count, volume, open_px, high_px, low_px, last_px, last_ts;
    trade_t recent[RECENT_TRADES];
    int recent_n, recent_head;
    /* Per batch: the update list and the trades, before encoding; the batch's event
     * time, formatted once (every update of a batch carries it). */
    buf_t updates, trades, out;
    char ts_text[48];
    size_t ts_len;
    int64_t batch_updates;
    trade_t *batch_trades;
    int batch_trades_n, batch_trades_cap;
} FlowObject;

/* Copy a 4096-value table, each value within [0, limit]. */
static int load_table(PyObject *seq, int32_t *table, long long limit, const char *name) {
    PyObject *fast = PySequence_Fast(seq, name);
    if (fast == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(fast) != TABLE) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s must hold %d values", name, TABLE);
        return -1;
    }
    for (Py_ssize_t i = 0; i < TABLE; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        if (v < 0 || v > limit) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "%s values must be within 0..%lld", name, limit);
            return -1;
        }
        table[i] = (int32_t)v;
    }
    Py_DECREF(fast);
    return 0;
}

/* Tables are interned for the process's lifetime: the flows of a gateway share their
 * three (order sizes depend only on the quantity decimals), so ten flows' random
 * lookups hit 48 KB instead of 480 KB -- a cache that the kernel's socket writes
 * between two symbols' batches keep evicting. */
#define MAX_TABLES 16
static int32_t *interned[MAX_TABLES];
static int interned_n;

static const int32_t *intern_table(PyObject *seq, long long limit, const char *name) {
    int32_t *table = PyMem_Malloc(TABLE * sizeof(int32_t));
    if (table == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (load_table(seq, table, limit, name) < 0) {
        PyMem_Free(table);
        return NULL;
    }
    for (int i = 0; i < interned_n; i++) {
        if (memcmp(interned[i], table, TABLE * sizeof(int32_t)) == 0) {
            PyMem_Free(table);
            return interned[i];
        }
    }
    if (interned_n == MAX_TABLES) {
        PyMem_Free(table);
        PyErr_SetString(PyExc_ValueError, "too many distinct tables in one process");
        return NULL;
    }
    interned[interned_n++] = table;
    return table;
}

static int Flow_init(FlowObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"seed",      "mid",       "price_decimals", "qty_decimals",
                             "sizes",     "add_table", "cancel_table",   "book_ch",
                             "trades_ch", NULL};
    PyObject *seed, *sizes, *add, *cancel, *book_ch, *trades_ch;
    long long mid;
    int pdec, qdec;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OLiiOOOSS", kwlist, &seed, &mid,
                                     &pdec, &qdec, &sizes, &add, &cancel, &book_ch, &trades_ch))
        return -1;
    if (self->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "a Flow is initialized once");
        return -1;
    }
    if (mid <= 2 || mid > ((long long)1 << 52)) {
        PyErr_SetString(PyExc_ValueError, "mid must be within 3..2**52 ticks");
        return -1;
    }
    if (pdec < 1 || pdec > 9 || qdec < 1 || qdec > 9) {
        PyErr_SetString(PyExc_ValueError, "decimals must be within 1..9");
        return -1;
    }
    /* random.Random(seed) seeds with abs(seed) in 32-bit words, least significant
     * first; the caller passes those words (simulator.seed_words). */
    PyObject *fast = PySequence_Fast(seed, "seed");
    if (fast == NULL)
        return -1;
    Py_ssize_t words = PySequence_Fast_GET_SIZE(fast);
    if (words < 1 || words > 64) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "seed must be 1 to 64 words");
        return -1;
    }
    uint32_t key[64];
    for (Py_ssize_t i = 0; i < words; i++) {
        unsigned long w = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        if ((w == (unsigned long)-1 && PyErr_Occurred()) || w > 0xffffffffUL) {
            Py_DECREF(fast);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "seed words must be 32-bit");
            return -1;
        }
        key[i] = (uint32_t)w;
    }
    Py_DECREF(fast);
    mt_init_by_array(&self->mt, key, (size_t)words);
    self->sizes = intern_table(sizes, INT32_MAX, "sizes");
    if (self->sizes == NULL)
        return -1;
    self->add_distance = intern_table(add, INT16_MAX, "add_table");
    if (self->add_distance == NULL)
        return -1;
    self->cancel_distance = intern_table(cancel, INT16_MAX, "cancel_table");
    if (self->cancel_distance == NULL)
        return -1;
    self->pdec = pdec;
    self->qdec = qdec;
    self->pscale = 1;
    for (int i = 0; i < pdec; i++)
        self->pscale *= 10;
    self->qscale = 1;
    for (int i = 0; i < qdec; i++)
        self->qscale *= 10;
    self->step = self->qscale / 100 > 1 ? self->qscale / 100 : 1;
    self->bids.n = self->asks.n = 0;
    self->best_bid = mid - 1;
    self->best_ask = mid + 1;
    self->fair = mid;
    /* simulator.SymbolFlow.fair_floor: new orders rest at most 120 ticks (the distance
     * tables' cap) below the fair price, so a floor above that keeps prices positive. */
    self->fair_floor = mid / 2 > FAIR_FLOOR_MIN ? mid / 2 : FAIR_FLOOR_MIN;
    self->book_seq = self->trade_seq = 0;
    self->trade_count = self->volume = 0;
    self->open_px = self->high_px = self->low_px = self->last_px = 0;
    self->last_ts = 0;
    self->recent_n = self->recent_head = 0;
    Py_INCREF(book_ch);
    Py_XSETREF(self->book_ch, book_ch);
    Py_INCREF(trades_ch);
    Py_XSETREF(self->trades_ch, trades_ch);
    self->initialized = 1;
    return 0;
}

static int check_initialized(FlowObject *self) {
    if (self->initialized)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "Flow.__init__ was not called (or failed)");
    return -1;
}

static void Flow_dealloc(FlowObject *self) {
    Py_XDECREF(self->book_ch);
    Py_XDECREF(self->trades_ch);
    PyMem_Free(self->updates.data);
    PyMem_Free(self->trades.data);
    PyMem_Free(self->out.data);
    PyMem_Free(self->batch_trades);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Append one update object {"side":..,"price":..,"qty":..,"ts":..} (lots 0: "0"). */
static int emit(FlowObject *self, int bid, int64_t px, int64_t lots) {
    buf_t *b = &self->updates;
    if (buf_reserve(b, 64 + 2 * FIXED_MAX) < 0)
        return -1;
    if (b->len)
        b->data[b->len++] = ',';
    if (bid)
        PUT_LITERAL(b, "{\"side\":\"bid\",\"price\":\"");
    else
        PUT_LITERAL(b, "{\"side\":\"ask\",\"price\":\"");
    put_fixed(b, px, self->pscale, self->pdec);
    PUT_LITERAL(b, "\",\"qty\":\"");
    if (lots == 0)
        b->data[b->len++] = '0';
    else
        put_fixed(b, lots, self->qscale, self->qdec);
    put(b, self->ts_text, self->ts_len); /* "\",\"ts\":<ts>}" */
    self->batch_updates++;
    return 0;
}

static int add_trade(FlowObject *self, int64_t px, int64_t lots, int buy, int64_t ts) {
    if (self->batch_trades_n == self->batch_trades_cap) {
        int cap = self->batch_trades_cap ? self->batch_trades_cap * 2 : 64;
        trade_t *t = PyMem_Realloc(self->batch_trades, (size_t)cap * sizeof(trade_t));
        if (t == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->batch_trades = t;
        self->batch_trades_cap = cap;
    }
    trade_t *t = &self->batch_trades[self->batch_trades_n++];
    t->px = px;
    t->lots = lots;
    t->buy = buy;
    t->ts = ts;
    return 0;
}

/* fmod(u, 0.5) for u in [0, 1), without a libm call: u - 0.5 is exact there. */
static inline double half_frac(double u) {
    return u < 0.5 ? u : u - 0.5;
}

/* One uniform draw picks a tabulated value (simulator._inverse_cdf_table). */
#define TABLE_PICK(table, u) ((int64_t)(table)[(int)((u) * TABLE)])

/* SymbolFlow.run, statement for statement (same draws in the same order). */
static int flow_run(FlowObject *self, int64_t n, int64_t ts) {
    mt_t *mt = &self->mt;
    side_t *bids = &self->bids, *asks = &self->asks;
    int64_t best_bid = self->best_bid, best_ask = self->best_ask, fair = self->fair;
    int64_t step = self->step;
    while (self->batch_updates < n) {
        double r = mt_random(mt);
        double u = mt_random(mt);
        int is_bid = u < 0.5;
        if (0.5 <= r && r < 0.9) {
            side_t *book = is_bid ? bids : asks;
            int64_t d = TABLE_PICK(self->cancel_distance, mt_random(mt));
            int64_t px = is_bid ? best_bid - d : best_ask + d;
            int i = side_find(book, px);
            if (i >= 0 && book->n > 5) {
                int64_t lots = book->lots[i], left = 0;
                if (half_frac(u) < 0.375)
                    left = ((int64_t)((double)lots * mt_random(mt)) / step) * step;
                if (left <= 0) {
                    side_delete(book, i);
                    if (emit(self, is_bid, px, 0) < 0)
                        return -1;
                    if (px == best_bid && is_bid)
                        best_bid = bids->px[bids->n - 1];
                    else if (px == best_ask && !is_bid)
                        best_ask = asks->px[0];
                } else {
                    book->lots[i] = left;
                    if (emit(self, is_bid, px, left) < 0)
                        return -1;
                }
                continue;
            }
            r = 0.0;
        }
        if (r < 0.5) {
            if (u < 0.02)
                fair += u < 0.01 || fair <= self->fair_floor ? 1 : -1;
            int64_t d = TABLE_PICK(self->add_distance, mt_random(mt));
            int64_t lots = TABLE_PICK(self->sizes, mt_random(mt));
            side_t *book;
            int64_t px;
            if (is_bid) {
                book = bids;
                px = fair - 1 - d < best_ask - 1 ? fair - 1 - d : best_ask - 1;
                if (px > best_bid)
                    best_bid = px;
            } else {
                book = asks;
                px = fair + 1 + d > best_bid + 1 ? fair + 1 + d : best_bid + 1;
                if (px < best_ask)
                    best_ask = px;
            }
            int i = side_find(book, px);
            if (i >= 0) {
                lots += book->lots[i];
                book->lots[i] = lots;
            } else {
                side_insert(book, -i - 1, px, lots);
            }
            if (emit(self, is_bid, px, lots) < 0)
                return -1;
            if (book->n > MAX_LEVELS) {
                int worst_i = is_bid ? 0 : book->n - 1;
                int64_t worst = book->px[worst_i];
                side_delete(book, worst_i);
                if (emit(self, is_bid, worst, 0) < 0)
                    return -1;
            }
            continue;
        }
        /* Market order: sweep from the touch, one trade per level consumed. */
        int buy = is_bid;
        side_t *book = buy ? asks : bids;
        int64_t want = TABLE_PICK(self->sizes, mt_random(mt)) * (half_frac(u) < 0.05 ? 5 : 1);
        while (want > 0 && book->n > 5) {
            int64_t px = buy ? best_ask : best_bid;
            int i = side_find(book, px);
            if (i < 0) { /* unseeded start: the touch was never filled */
                i = buy ? 0 : book->n - 1;
                px = book->px[i];
            }
            int64_t lots = book->lots[i];
            int64_t fill = lots < want ? lots : want;
            want -= fill;
            if (add_trade(self, px, fill, buy, ts) < 0)
                return -1;
            if (fill == lots) {
                side_delete(book, i);
                if (emit(self, !buy, px, 0) < 0)
                    return -1;
                if (buy)
                    best_ask = asks->px[0];
                else
                    best_bid = bids->px[bids->n - 1];
            } else {
                book->lots[i] = lots - fill;
                if (emit(self, !buy, px, lots - fill) < 0)
                    return -1;
            }
        }
    }
    self->best_bid = best_bid;
    self->best_ask = best_ask;
    self->fair = fair;
    return 0;
}

/* strip(x): the fixed form without "." and without leading "0"s (book.py). For a
 * positive value (every level of a book) and scale == 10**decimals, that is just the
 * value's digits. */
static void put_stripped(buf_t *b, int64_t value, int64_t scale, int decimals) {
    if (value > 0) {
        put_u64(b, (uint64_t)value);
        return;
    }
    char tmp[FIXED_MAX];
    buf_t t = {tmp, 0, sizeof tmp};
    put_fixed(&t, value, scale, decimals);
    size_t i = 0;
    while (i < t.len && (tmp[i] == '0' || tmp[i] == '.'))
        i++;
    for (; i < t.len; i++)
        if (tmp[i] != '.')
            b->data[b->len++] = tmp[i];
}

static uint32_t flow_checksum(FlowObject *self) {
    char tmp[2 * CHECKSUM_DEPTH * 2 * FIXED_MAX];
    buf_t b = {tmp, 0, sizeof tmp};
    const side_t *asks = &self->asks, *bids = &self->bids;
    for (int i = 0; i < asks->n && i < CHECKSUM_DEPTH; i++) {
        put_stripped(&b, asks->px[i], self->pscale, self->pdec);
        put_stripped(&b, asks->lots[i], self->qscale, self->qdec);
    }
    for (int i = 0; i < bids->n && i < CHECKSUM_DEPTH; i++) {
        int k = bids->n - 1 - i;
        put_stripped(&b, bids->px[k], self->pscale, self->pdec);
        put_stripped(&b, bids->lots[k], self->qscale, self->qdec);
    }
    return crc32_of(tmp, b.len);
}

/* A message's head: {"type":"<kind>","ch":<ch>,"seq":<seq>,"prev_seq":<prev> (the caller
 * reserved room for it: at most 81 bytes beyond the channel name). */
static void put_head(buf_t *b, const char *opening, PyObject *ch, int64_t seq, int64_t prev) {
    put(b, opening, strlen(opening));
    put(b, PyBytes_AS_STRING(ch), (size_t)PyBytes_GET_SIZE(ch));
    PUT_LITERAL(b, ",\"seq\":");
    put_i64(b, seq);
    PUT_LITERAL(b, ",\"prev_seq\":");
    put_i64(b, prev);
}

/* Number the batch's trades, update the statistics, encode the "trades" message. */
static PyObject *flow_trades(FlowObject *self) {
    if (self->batch_trades_n == 0)
        return PyBytes_FromStringAndSize("", 0);
    int64_t prev = self->trade_seq;
    for (int k = 0; k < self->batch_trades_n; k++) {
        trade_t *t = &self->batch_trades[k];
        t->id = ++self->trade_seq;
        if (self->trade_count + k == 0)
            self->open_px = t->px;
        if (self->trade_count + k == 0 || t->px > self->high_px)
            self->high_px = t->px;
        if (self->trade_count + k == 0 || t->px < self->low_px)
            self->low_px = t->px;
        self->volume += t->lots;
        self->last_px = t->px;
        self->last_ts = t->ts;
        self->recent[self->recent_head] = *t;
        self->recent_head = (self->recent_head + 1) % RECENT_TRADES;
        if (self->recent_n < RECENT_TRADES)
            self->recent_n++;
    }
    self->trade_count += self->batch_trades_n;
    buf_t *b = &self->trades;
    b->len = 0;
    size_t ch_len = (size_t)PyBytes_GET_SIZE(self->trades_ch);
    if (buf_reserve(b, 96 + ch_len + (size_t)self->batch_trades_n * (96 + 2 * FIXED_MAX)) < 0)
        return NULL;
    put_head(b, "{\"type\":\"trades\",\"ch\":", self->trades_ch, self->trade_seq, prev);
    PUT_LITERAL(b, ",\"trades\":[");
    for (int k = 0; k < self->batch_trades_n; k++) {
        trade_t *t = &self->batch_trades[k];
        if (k)
            b->data[b->len++] = ',';
        PUT_LITERAL(b, "{\"id\":");
        put_i64(b, t->id);
        PUT_LITERAL(b, ",\"price\":\"");
        put_fixed(b, t->px, self->pscale, self->pdec);
        PUT_LITERAL(b, "\",\"qty\":\"");
        put_fixed(b, t->lots, self->qscale, self->qdec);
        if (t->buy)
            PUT_LITERAL(b, "\",\"side\":\"buy\",\"ts\":");
        else
            PUT_LITERAL(b, "\",\"side\":\"sell\",\"ts\":");
        put_i64(b, t->ts);
        b->data[b->len++] = '}';
    }
    PUT_LITERAL(b, "]}");
    return PyBytes_FromStringAndSize(b->data, (Py_ssize_t)b->len);
}

/* The batch as (prev_book, book, prev_trade, trade, book_json, trades_json). */
static PyObject *flow_batch(FlowObject *self, int64_t prev_book, int64_t prev_trade) {
    PyObject *book_json, *trades_json;
    int64_t n = self->batch_updates;
    if (n == 0) {
        book_json = PyBytes_FromStringAndSize("", 0);
    } else {
        self->book_seq += n;
        buf_t *b = &self->out;
        b->len = 0;
        size_t ch_len = (size_t)PyBytes_GET_SIZE(self->book_ch);
        if (buf_reserve(b, 128 + ch_len + self->updates.len) < 0)
            return NULL;
        put_head(b, "{\"type\":\"delta\",\"ch\":", self->book_ch, self->book_seq, prev_book);
        PUT_LITERAL(b, ",\"checksum\":");
        put_u64(b, flow_checksum(self));
        PUT_LITERAL(b, ",\"updates\":[");
        put(b, self->updates.data, self->updates.len);
        PUT_LITERAL(b, "]}");
        book_json = PyBytes_FromStringAndSize(b->data, (Py_ssize_t)b->len);
    }
    if (book_json == NULL)
        return NULL;
    trades_json = flow_trades(self);
    if (trades_json == NULL) {
        Py_DECREF(book_json);
        return NULL;
    }
    return Py_BuildValue("(LLLLNN)", (long long)prev_book, (long long)self->book_seq,
                         (long long)prev_trade, (long long)self->trade_seq, book_json,
                         trades_json);
}

static void batch_reset(FlowObject *self, int64_t ts) {
    self->updates.len = 0;
    self->batch_updates = 0;
    self->batch_trades_n = 0;
    buf_t t = {self->ts_text, 0, sizeof self->ts_text};
    PUT_LITERAL(&t, "\",\"ts\":");
    put_i64(&t, ts);
    t.data[t.len++] = '}';
    self->ts_len = t.len;
}

static PyObject *Flow_run(FlowObject *self, PyObject *args) {
    long long n, ts;
    if (check_initialized(self) < 0 || !PyArg_ParseTuple(args, "LL", &n, &ts))
        return NULL;
    int64_t prev_book = self->book_seq, prev_trade = self->trade_seq;
    batch_reset(self, ts);
    if (flow_run(self, n, ts) < 0)
        return NULL;
    if (self->batch_updates)
        self->last_ts = ts;
    return flow_batch(self, prev_book, prev_trade);
}

/* SymbolFlow.seed_book: START_LEVELS levels a side around the mid, as one batch. */
static PyObject *Flow_seed(FlowObject *self, PyObject *args) {
    long long ts;
    if (check_initialized(self) < 0 || !PyArg_ParseTuple(args, "L", &ts))
        return NULL;
    if (self->bids.n || self->asks.n) {
        PyErr_SetString(PyExc_RuntimeError, "the book is already seeded");
        return NULL;
    }
    int64_t prev_book = self->book_seq, prev_trade = self->trade_seq;
    batch_reset(self, ts);
    for (int i = 0; i < START_LEVELS; i++) {
        int64_t lots = TABLE_PICK(self->sizes, mt_random(&self->mt)) * (1 + i / 5);
        int64_t px = self->best_bid - i;
        side_insert(&self->bids, 0, px, lots);
        if (emit(self, 1, px, lots) < 0)
            return NULL;
        lots = TABLE_PICK(self->sizes, mt_random(&self->mt)) * (1 + i / 5);
        px = self->best_ask + i;
        side_insert(&self->asks, self->asks.n, px, lots);
        if (emit(self, 0, px, lots) < 0)
            return NULL;
    }
    self->last_ts = ts;
    return flow_batch(self, prev_book, prev_trade);
}

static PyObject *fixed_str(int64_t value, int64_t scale, int decimals) {
    char tmp[FIXED_MAX];
    buf_t b = {tmp, 0, sizeof tmp};
    put_fixed(&b, value, scale, decimals);
    return PyUnicode_FromStringAndSize(tmp, (Py_ssize_t)b.len);
}

static PyObject *level(FlowObject *self, const side_t *s, int i) {
    return Py_BuildValue("(NN)", fixed_str(s->px[i], self->pscale, self->pdec),
                         fixed_str(s->lots[i], self->qscale, self->qdec));
}

static PyObject *price_or_none(FlowObject *self, int64_t px) {
    if (self->trade_count == 0)
        Py_RETURN_NONE;
    return fixed_str(px, self->pscale, self->pdec);
}

static PyObject *volume_str(FlowObject *self) {
    if (self->trade_count == 0)
        return PyUnicode_FromString("0");
    return fixed_str(self->volume, self->qscale, self->qdec);
}

/* The engine's state: (book_seq, trade_seq, bids, asks, trades, last, open, high, low,
 * volume, trade_count, last_ts); levels best first, trades oldest first as
 * (id, price, qty, side, ts). */
static PyObject *Flow_export(FlowObject *self, PyObject *Py_UNUSED(ignored)) {
    if (check_initialized(self) < 0)
        return NULL;
    PyObject *bids = PyList_New(self->bids.n), *asks = PyList_New(self->asks.n);
    PyObject *trades = PyList_New(self->recent_n);
    if (bids == NULL || asks == NULL || trades == NULL)
        goto fail;
    for (int i = 0; i < self->bids.n; i++) {
        PyObject *lv = level(self, &self->bids, self->bids.n - 1 - i);
        if (lv == NULL)
            goto fail;
        PyList_SET_ITEM(bids, i, lv);
    }
    for (int i = 0; i < self->asks.n; i++) {
        PyObject *lv = level(self, &self->asks, i);
        if (lv == NULL)
            goto fail;
        PyList_SET_ITEM(asks, i, lv);
    }
    for (int k = 0; k < self->recent_n; k++) {
        int at = (self->recent_head - self->recent_n + k + RECENT_TRADES) % RECENT_TRADES;
        trade_t *t = &self->recent[at];
        PyObject *item = Py_BuildValue("(LNNsL)", (long long)t->id,
                                       fixed_str(t->px, self->pscale, self->pdec),
                                       fixed_str(t->lots, self->qscale, self->qdec),
                                       t->buy ? "buy" : "sell", (long long)t->ts);
        if (item == NULL)
            goto fail;
        PyList_SET_ITEM(trades, k, item);
    }
    return Py_BuildValue("(LLNNNNNNNNLL)", (long long)self->book_seq, (long long)self->trade_seq,
                         bids, asks, trades, price_or_none(self, self->last_px),
                         price_or_none(self, self->open_px), price_or_none(self, self->high_px),
                         price_or_none(self, self->low_px), volume_str(self),
                         (long long)self->trade_count, (long long)self->last_ts);
fail:
    Py_XDECREF(bids);
    Py_XDECREF(asks);
    Py_XDECREF(trades);
    return NULL;
}

/* The ticker's fields: (ts, bid, bid_qty, ask, ask_qty, last, open, high, low, volume,
 * trades); a side's two fields None when it is empty. */
static PyObject *Flow_ticker(FlowObject *self, PyObject *Py_UNUSED(ignored)) {
    if (check_initialized(self) < 0)
        return NULL;
    PyObject *bid, *bid_qty, *ask, *ask_qty;
    if (self->bids.n) {
        int i = self->bids.n - 1;
        bid = fixed_str(self->bids.px[i], self->pscale, self->pdec);
        bid_qty = fixed_str(self->bids.lots[i], self->qscale, self->qdec);
    } else {
        bid = Py_NewRef(Py_None);
        bid_qty = Py_NewRef(Py_None);
    }
    if (self->asks.n) {
        ask = fixed_str(self->asks.px[0], self->pscale, self->pdec);
        ask_qty = fixed_str(self->asks.lots[0], self->qscale, self->qdec);
    } else {
        ask = Py_NewRef(Py_None);
        ask_qty = Py_NewRef(Py_None);
    }
    return Py_BuildValue("(LNNNNNNNNNL)", (long long)self->last_ts, bid, bid_qty, ask, ask_qty,
                         price_or_none(self, self->last_px), price_or_none(self, self->open_px),
                         price_or_none(self, self->high_px), price_or_none(self, self->low_px),
                         volume_str(self), (long long)self->trade_count);
}

/* Whether a level rests at px ticks on one side (the synthetic accounts ask). */
static PyObject *Flow_rests(FlowObject *self, PyObject *args) {
    int bid;
    long long px;
    if (check_initialized(self) < 0 || !PyArg_ParseTuple(args, "pL", &bid, &px))
        return NULL;
    return PyBool_FromLong(side_find(bid ? &self->bids : &self->asks, px) >= 0);
}

static PyObject *Flow_get_seqs(FlowObject *self, void *Py_UNUSED(closure)) {
    return Py_BuildValue("(LL)", (long long)self->book_seq, (long long)self->trade_seq);
}

static PyMethodDef Flow_methods[] = {
    {"seed", (PyCFunction)Flow_seed, METH_VARARGS,
     "seed(ts) -> batch: the starting book (SymbolFlow.seed_book) as one batch."},
    {"run", (PyCFunction)Flow_run, METH_VARARGS,
     "run(n, ts) -> (prev_book, book, prev_trade, trade, book_json, trades_json):\n"
     "events until the batch holds at least n book updates, all at event time ts."},
    {"export", (PyCFunction)Flow_export, METH_NOARGS,
     "export() -> the engine state (seqs, levels best first, recent trades, statistics)."},
    {"ticker", (PyCFunction)Flow_ticker, METH_NOARGS,
     "ticker() -> (ts, bid, bid_qty, ask, ask_qty, last, open, high, low, volume, trades)."},
    {"rests", (PyCFunction)Flow_rests, METH_VARARGS,
     "rests(bid, px) -> whether a level rests at px ticks on that side."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Flow_getset[] = {
    {"seqs", (getter)Flow_get_seqs, NULL, "(book_seq, trade_seq) after the last batch", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FlowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tickwire._market.Flow",
    .tp_doc = PyDoc_STR("One symbol's order flow, book and messages (see simulator.py)."),
    .tp_basicsize = sizeof(FlowObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Flow_init,
    .tp_dealloc = (destructor)Flow_dealloc,
    .tp_methods = Flow_methods,
    .tp_getset = Flow_getset,
};

/* -- Levels: the ingest protocol's L2 book of exact decimal strings ------------------ *
 *
 * What ingest.PyLevels does in Python, for one symbol of an ingest source: take a
 * message's level changes [side, price, qty] as the source wrote them, validate and
 * canonicalize each decimal (ingest.canonical: up to 24 integer and 18 fraction digits),
 * apply them, reject a crossed book, and write the message's "delta" JSON with the
 * checksum after it -- the book the validation needs is the book the clients get, so
 * each change is applied once. A rejected message leaves the book as it was (an undo
 * log), and says where: the index of the first change that is not valid (Python then
 * raises the exact error), or the crossed best bid and ask.
 *
 * A level keeps its canonical price and quantity as text (what the JSON and the
 * checksum need) and a 42-byte key: the integer digits right-aligned in 24 places and
 * the fraction left-aligned in 18, so memcmp orders keys as the numbers. Each side is a
 * sorted array of level pointers with the best level last (bids ascending, asks
 * descending): most changes are near the touch, so inserts and deletes move little. */

#define DEC_INT 24
#define DEC_FRAC 18
#define KEY_LEN (DEC_INT + DEC_FRAC)
#define DEC_MAX (DEC_INT + 1 + DEC_FRAC)

typedef struct {
    char key[KEY_LEN];
    char text[DEC_MAX];
    uint8_t len;
} dec_t;

typedef struct {
    char key[KEY_LEN];
    uint8_t plen, qlen;
    char price[DEC_MAX];
    char qty[DEC_MAX];
} lvl_t;

typedef struct {
    lvl_t **v;
    Py_ssize_t n, cap;
    int desc; /* asks: keys descending (best last) */
} lside_t;

enum { UNDO_NONE, UNDO_QTY, UNDO_INSERTED, UNDO_DELETED };

typedef struct {
    lside_t *side;
    lvl_t *lvl;
    int kind;
    uint8_t qlen;
    char qty[DEC_MAX];
} undo_t;

typedef struct {
    PyObject_HEAD
    lside_t bids, asks;
    PyObject *book_ch; /* JSON string of "book.<SYM>", quotes included (bytes) */
    undo_t *undo;
    Py_ssize_t undo_cap;
    buf_t updates, out;
} LevelsObject;

/* ingest.canonical's grammar ([0-9]{1,24}(\.[0-9]{1,18})?, nothing else): 0 and the
 * canonical text and key in d, or -1 (not an exact decimal, or not text). */
static int parse_dec(PyObject *obj, dec_t *d) {
    if (!PyUnicode_Check(obj))
        return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
    if (s == NULL) { /* a lone surrogate: not a decimal */
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t i = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    Py_ssize_t wlen = i, fstart = i, flen = 0;
    if (wlen < 1 || wlen > DEC_INT)
        return -1;
    if (i < n) {
        if (s[i] != '.')
            return -1;
        fstart = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        flen = i - fstart;
        if (flen < 1 || flen > DEC_FRAC || i != n)
            return -1;
    }
    Py_ssize_t w0 = 0;
    while (w0 < wlen - 1 && s[w0] == '0')
        w0++;
    while (flen > 0 && s[fstart + flen - 1] == '0')
        flen--;
    size_t w = (size_t)(wlen - w0), len = w;
    memcpy(d->text, s + w0, w);
    if (flen) {
        d->text[len++] = '.';
        memcpy(d->text + len, s + fstart, (size_t)flen);
        len += (size_t)flen;
    }
    d->len = (uint8_t)len;
    memset(d->key, '0', KEY_LEN);
    memcpy(d->key + DEC_INT - w, s + w0, w);
    memcpy(d->key + DEC_INT, s + fstart, (size_t)flen);
    return 0;
}

static inline int dec_is_zero(const dec_t *d) {
    return d->len == 1 && d->text[0] == '0';
}

/* 0 bid, 1 ask, -1 neither. */
static int parse_side(PyObject *obj) {
    if (!PyUnicode_Check(obj))
        return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
    if (s == NULL) {
        PyErr_Clear();
        return -1;
    }
    if (n == 3 && memcmp(s, "bid", 3) == 0)
        return 0;
    if (n == 3 && memcmp(s, "ask", 3) == 0)
        return 1;
    return -1;
}

/* One change [side, price, qty]: 0 (side 0/1, price, qty set) or -1 (not valid). */
static int parse_change(PyObject *item, int *side, dec_t *price, dec_t *qty) {
    if (!(PyTuple_Check(item) || PyList_Check(item)) || PySequence_Fast_GET_SIZE(item) != 3)
        return -1;
    PyObject **f = PySequence_Fast_ITEMS(item);
    *side = parse_side(f[0]);
    if (*side < 0 || parse_dec(f[1], price) < 0 || parse_dec(f[2], qty) < 0)
        return -1;
    return dec_is_zero(price) ? -1 : 0;
}

static inline int lkey_cmp(const lside_t *s, const char *a, const char *b) {
    int r = memcmp(a, b, KEY_LEN);
    return s->desc ? -r : r;
}

/* Index of key, or -(insertion point) - 1. */
static Py_ssize_t lside_find(const lside_t *s, const char *key) {
    Py_ssize_t lo = 0, hi = s->n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) >> 1;
        if (lkey_cmp(s, s->v[mid]->key, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < s->n && memcmp(s->v[lo]->key, key, KEY_LEN) == 0)
        return lo;
    return -lo - 1;
}

static int lside_insert(lside_t *s, Py_ssize_t at, lvl_t *lvl) {
    if (s->n == s->cap) {
        Py_ssize_t cap = s->cap ? s->cap * 2 : 64;
        lvl_t **v = PyMem_Realloc(s->v, (size_t)cap * sizeof(lvl_t *));
        if (v == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->v = v;
        s->cap = cap;
    }
    memmove(s->v + at + 1, s->v + at, (size_t)(s->n - at) * sizeof(lvl_t *));
    s->v[at] = lvl;
    s->n++;
    return 0;
}

static void lside_remove(lside_t *s, Py_ssize_t at) {
    memmove(s->v + at, s->v + at + 1, (size_t)(s->n - at - 1) * sizeof(lvl_t *));
    s->n--;
}

static void lside_clear(lside_t *s) {
    for (Py_ssize_t i = 0; i < s->n; i++)
        PyMem_Free(s->v[i]);
    PyMem_Free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int Levels_init(LevelsObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"book_ch", NULL};
    PyObject *book_ch;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "S", kwlist, &book_ch))
        return -1;
    Py_INCREF(book_ch);
    Py_XSETREF(self->book_ch, book_ch);
    lside_clear(&self->bids);
    lside_clear(&self->asks);
    self->bids.desc = 0;
    self->asks.desc = 1;
    return 0;
}

static void Levels_dealloc(LevelsObject *self) {
    Py_XDECREF(self->book_ch);
    lside_clear(&self->bids);
    lside_clear(&self->asks);
    PyMem_Free(self->undo);
    PyMem_Free(self->updates.data);
    PyMem_Free(self->out.data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int levels_ready(LevelsObject *self) {
    if (self->book_ch != NULL)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "Levels.__init__ was not called (or failed)");
    return -1;
}

/* Set one level (qty zero: delete), logging how to undo it in u. */
static int levels_set(lside_t *s, const dec_t *price, const dec_t *qty, undo_t *u) {
    Py_ssize_t i = lside_find(s, price->key);
    u->side = s;
    if (dec_is_zero(qty)) {
        if (i < 0) {
            u->kind = UNDO_NONE;
            return 0;
        }
        u->kind = UNDO_DELETED;
        u->lvl = s->v[i];
        lside_remove(s, i);
        return 0;
    }
    if (i >= 0) {
        lvl_t *lvl = s->v[i];
        u->kind = UNDO_QTY;
        u->lvl = lvl;
        u->qlen = lvl->qlen;
        memcpy(u->qty, lvl->qty, lvl->qlen);
        memcpy(lvl->qty, qty->text, qty->len);
        lvl->qlen = qty->len;
        return 0;
    }
    lvl_t *lvl = PyMem_Malloc(sizeof(lvl_t));
    if (lvl == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(lvl->key, price->key, KEY_LEN);
    memcpy(lvl->price, price->text, price->len);
    lvl->plen = price->len;
    memcpy(lvl->qty, qty->text, qty->len);
    lvl->qlen = qty->len;
    if (lside_insert(s, -i - 1, lvl) < 0) {
        PyMem_Free(lvl);
        return -1;
    }
    u->kind = UNDO_INSERTED;
    u->lvl = lvl;
    return 0;
}

/* Undo entries [0, n) in reverse: the book is as before the first. */
static void levels_undo(LevelsObject *self, Py_ssize_t n) {
    while (n-- > 0) {
        undo_t *u = &self->undo[n];
        lside_t *s = u->side;
        Py_ssize_t i;
        switch (u->kind) {
        case UNDO_QTY:
            memcpy(u->lvl->qty, u->qty, u->qlen);
            u->lvl->qlen = u->qlen;
            break;
        case UNDO_INSERTED:
            i = lside_find(s, u->lvl->key);
            lside_remove(s, i);
            PyMem_Free(u->lvl);
            break;
        case UNDO_DELETED:
            i = lside_find(s, u->lvl->key);
            /* Room is there: the level was removed from this array. */
            memmove(s->v + (-i - 1) + 1, s->v + (-i - 1),
                    (size_t)(s->n - (-i - 1)) * sizeof(lvl_t *));
            s->v[-i - 1] = u->lvl;
            s->n++;
            break;
        default:
            break;
        }
    }
}

static void levels_commit(LevelsObject *self, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++)
        if (self->undo[k].kind == UNDO_DELETED)
            PyMem_Free(self->undo[k].lvl);
}

static PyObject *lvl_text(const char *s, uint8_t len) {
    return PyUnicode_FromStringAndSize(s, len);
}

/* (best bid, best ask) prices when the book is crossed, else NULL without error. */
static PyObject *levels_crossed(LevelsObject *self) {
    if (self->bids.n == 0 || self->asks.n == 0)
        return NULL;
    lvl_t *bid = self->bids.v[self->bids.n - 1], *ask = self->asks.v[self->asks.n - 1];
    if (memcmp(bid->key, ask->key, KEY_LEN) < 0)
        return NULL;
    return Py_BuildValue("(NN)", lvl_text(bid->price, bid->plen), lvl_text(ask->price, ask->plen));
}

/* strip(x) (book.py): without "." and leading "0"s. */
static void put_level_stripped(buf_t *b, const char *s, uint8_t len) {
    size_t start = b->len;
    for (uint8_t i = 0; i < len; i++)
        if (s[i] != '.')
            b->data[b->len++] = s[i];
    size_t z = start;
    while (z < b->len && b->data[z] == '0')
        z++;
    if (z > start) {
        memmove(b->data + start, b->data + z, b->len - z);
        b->len -= z - start;
    }
}

static uint32_t levels_checksum(LevelsObject *self) {
    char tmp[2 * CHECKSUM_DEPTH * 2 * DEC_MAX];
    buf_t b = {tmp, 0, sizeof tmp};
    const lside_t *sides[2] = {&self->asks, &self->bids};
    for (int k = 0; k < 2; k++) {
        const lside_t *s = sides[k];
        for (Py_ssize_t i = 0; i < s->n && i < CHECKSUM_DEPTH; i++) {
            lvl_t *lvl = s->v[s->n - 1 - i];
            put_level_stripped(&b, lvl->price, lvl->plen);
            put_level_stripped(&b, lvl->qty, lvl->qlen);
        }
    }
    return crc32_of(tmp, b.len);
}

static PyObject *Levels_apply(LevelsObject *self, PyObject *args) {
    PyObject *changes;
    long long ts, seq;
    if (levels_ready(self) < 0 || !PyArg_ParseTuple(args, "OLL", &changes, &ts, &seq))
        return NULL;
    PyObject *fast = PySequence_Fast(changes, "changes must be a sequence");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    if (n == 0) {
        Py_DECREF(fast);
        return PyBytes_FromStringAndSize("", 0);
    }
    if (n > self->undo_cap) {
        undo_t *undo = PyMem_Realloc(self->undo, (size_t)n * sizeof(undo_t));
        if (undo == NULL) {
            Py_DECREF(fast);
            return PyErr_NoMemory();
        }
        self->undo = undo;
        self->undo_cap = n;
    }
    char ts_text[32];
    buf_t t = {ts_text, 0, sizeof ts_text};
    put_i64(&t, ts);
    buf_t *b = &self->updates;
    b->len = 0;
    Py_ssize_t k;
    for (k = 0; k < n; k++) {
        int side;
        dec_t price, qty;
        if (parse_change(items[k], &side, &price, &qty) < 0) {
            levels_undo(self, k);
            Py_DECREF(fast);
            return PyLong_FromSsize_t(k);
        }
        if (buf_reserve(b, 64 + 2 * DEC_MAX + t.len) < 0 ||
            levels_set(side ? &self->asks : &self->bids, &price, &qty, &self->undo[k]) < 0) {
            levels_undo(self, k);
            Py_DECREF(fast);
            return NULL;
        }
        if (k)
            b->data[b->len++] = ',';
        if (side)
            PUT_LITERAL(b, "{\"side\":\"ask\",\"price\":\"");
        else
            PUT_LITERAL(b, "{\"side\":\"bid\",\"price\":\"");
        put(b, price.text, price.len);
        PUT_LITERAL(b, "\",\"qty\":\"");
        put(b, qty.text, qty.len);
        PUT_LITERAL(b, "\",\"ts\":");
        put(b, ts_text, t.len);
        b->data[b->len++] = '}';
    }
    Py_DECREF(fast);
    PyObject *crossed = levels_crossed(self);
    if (crossed != NULL || PyErr_Occurred()) {
        levels_undo(self, n);
        return crossed;
    }
    levels_commit(self, n);
    buf_t *o = &self->out;
    o->len = 0;
    size_t ch_len = (size_t)PyBytes_GET_SIZE(self->book_ch);
    if (buf_reserve(o, 128 + ch_len + b->len) < 0)
        return NULL;
    put_head(o, "{\"type\":\"delta\",\"ch\":", self->book_ch, seq + n, seq);
    PUT_LITERAL(o, ",\"checksum\":");
    put_u64(o, levels_checksum(self));
    PUT_LITERAL(o, ",\"updates\":[");
    put(o, b->data, b->len);
    PUT_LITERAL(o, "]}");
    return PyBytes_FromStringAndSize(o->data, (Py_ssize_t)o->len);
}

static PyObject *Levels_check(LevelsObject *Py_UNUSED(self), PyObject *changes) {
    PyObject *fast = PySequence_Fast(changes, "changes must be a sequence");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t k = 0; k < n; k++) {
        int side;
        dec_t price, qty;
        if (parse_change(items[k], &side, &price, &qty) < 0) {
            Py_DECREF(fast);
            return PyLong_FromSsize_t(k);
        }
    }
    Py_DECREF(fast);
    return PyLong_FromLong(-1);
}

typedef struct {
    lvl_t *lvl;
    Py_ssize_t at;
} ranked_t;

static int ranked_cmp(const void *a, const void *b) {
    const ranked_t *x = a, *y = b;
    int r = memcmp(x->lvl->key, y->lvl->key, KEY_LEN);
    if (r)
        return r;
    return x->at < y->at ? -1 : x->at > y->at;
}

/* A snapshot side's pairs into s (empty): zero quantities skipped, a price twice keeps
 * the last. Returns -1 (error set), the index of a pair that is not valid, or n. */
static Py_ssize_t levels_fill(lside_t *s, PyObject *pairs) {
    PyObject *fast = PySequence_Fast(pairs, "levels must be a sequence");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    ranked_t *r = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(ranked_t));
    if (r == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t m = 0, k;
    for (k = 0; k < n; k++) {
        PyObject *item = items[k];
        dec_t price, qty;
        if (!(PyTuple_Check(item) || PyList_Check(item)) || PySequence_Fast_GET_SIZE(item) != 2)
            break;
        PyObject **f = PySequence_Fast_ITEMS(item);
        if (parse_dec(f[0], &price) < 0 || dec_is_zero(&price) || parse_dec(f[1], &qty) < 0)
            break;
        if (dec_is_zero(&qty))
            continue;
        lvl_t *lvl = PyMem_Malloc(sizeof(lvl_t));
        if (lvl == NULL) {
            PyErr_NoMemory();
            k = -1;
            break;
        }
        memcpy(lvl->key, price.key, KEY_LEN);
        memcpy(lvl->price, price.text, price.len);
        lvl->plen = price.len;
        memcpy(lvl->qty, qty.text, qty.len);
        lvl->qlen = qty.len;
        r[m].lvl = lvl;
        r[m].at = k;
        m++;
    }
    Py_DECREF(fast);
    if (k != n) {
        for (Py_ssize_t i = 0; i < m; i++)
            PyMem_Free(r[i].lvl);
        PyMem_Free(r);
        return k;
    }
    qsort(r, (size_t)m, sizeof(ranked_t), ranked_cmp);
    s->v = PyMem_Malloc((size_t)(m ? m : 1) * sizeof(lvl_t *));
    if (s->v == NULL) {
        for (Py_ssize_t i = 0; i < m; i++)
            PyMem_Free(r[i].lvl);
        PyMem_Free(r);
        PyErr_NoMemory();
        return -1;
    }
    s->cap = m ? m : 1;
    s->n = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        if (i + 1 < m && memcmp(r[i].lvl->key, r[i + 1].lvl->key, KEY_LEN) == 0) {
            PyMem_Free(r[i].lvl); /* a later pair sets this price */
            continue;
        }
        s->v[s->n++] = r[i].lvl;
    }
    if (s->desc) /* best last: reverse the ascending order */
        for (Py_ssize_t i = 0, j = s->n - 1; i < j; i++, j--) {
            lvl_t *x = s->v[i];
            s->v[i] = s->v[j];
            s->v[j] = x;
        }
    PyMem_Free(r);
    return n;
}

static PyObject *Levels_load(LevelsObject *self, PyObject *args) {
    PyObject *bids, *asks;
    if (levels_ready(self) < 0 || !PyArg_ParseTuple(args, "OO", &bids, &asks))
        return NULL;
    Py_ssize_t nb = PySequence_Size(bids);
    if (nb < 0)
        return NULL;
    lside_t b = {NULL, 0, 0, 0}, a = {NULL, 0, 0, 1};
    Py_ssize_t k = levels_fill(&b, bids);
    if (k != nb) {
        lside_clear(&b);
        return k < 0 ? NULL : PyLong_FromSsize_t(k);
    }
    Py_ssize_t na = PySequence_Size(asks);
    k = na < 0 ? -1 : levels_fill(&a, asks);
    if (k != na) {
        lside_clear(&b);
        lside_clear(&a);
        return k < 0 ? NULL : PyLong_FromSsize_t(nb + k);
    }
    if (b.n && a.n && memcmp(b.v[b.n - 1]->key, a.v[a.n - 1]->key, KEY_LEN) >= 0) {
        PyObject *crossed = Py_BuildValue(
            "(NN)", lvl_text(b.v[b.n - 1]->price, b.v[b.n - 1]->plen),
            lvl_text(a.v[a.n - 1]->price, a.v[a.n - 1]->plen));
        lside_clear(&b);
        lside_clear(&a);
        return crossed;
    }
    lside_clear(&self->bids);
    lside_clear(&self->asks);
    self->bids = b;
    self->asks = a;
    Py_RETURN_NONE;
}

static PyObject *levels_list(const lside_t *s, Py_ssize_t depth) {
    Py_ssize_t n = depth >= 0 && depth < s->n ? depth : s->n;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        lvl_t *lvl = s->v[s->n - 1 - i];
        PyObject *item =
            Py_BuildValue("(NN)", lvl_text(lvl->price, lvl->plen), lvl_text(lvl->qty, lvl->qlen));
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *Levels_bids(LevelsObject *self, PyObject *args) {
    Py_ssize_t depth = -1;
    if (!PyArg_ParseTuple(args, "|n", &depth))
        return NULL;
    return levels_list(&self->bids, depth);
}

static PyObject *Levels_asks(LevelsObject *self, PyObject *args) {
    Py_ssize_t depth = -1;
    if (!PyArg_ParseTuple(args, "|n", &depth))
        return NULL;
    return levels_list(&self->asks, depth);
}

static PyObject *side_top(const lside_t *s, int qty) {
    if (s->n == 0)
        Py_RETURN_NONE;
    lvl_t *lvl = s->v[s->n - 1];
    return qty ? lvl_text(lvl->qty, lvl->qlen) : lvl_text(lvl->price, lvl->plen);
}

static PyObject *Levels_top(LevelsObject *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(NNNN)", side_top(&self->bids, 0), side_top(&self->bids, 1),
                         side_top(&self->asks, 0), side_top(&self->asks, 1));
}

static PyObject *Levels_checksum(LevelsObject *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLong(levels_checksum(self));
}

static PyObject *Levels_depth(LevelsObject *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(nn)", self->bids.n, self->asks.n);
}

static PyMethodDef Levels_methods[] = {
    {"apply", (PyCFunction)Levels_apply, METH_VARARGS,
     "apply(changes, ts, seq) -> delta JSON (prev_seq seq), or the index of the first\n"
     "change that is not valid, or (best bid, best ask) when the book would cross;\n"
     "a rejected message leaves the book as it was. No changes: b''."},
    {"check", (PyCFunction)Levels_check, METH_O,
     "check(changes) -> the index of the first change that is not valid, or -1."},
    {"load", (PyCFunction)Levels_load, METH_VARARGS,
     "load(bids, asks) -> None (loaded), the index of a pair that is not valid (bids then\n"
     "asks), or (best bid, best ask) when crossed; the book is replaced only on success."},
    {"bids", (PyCFunction)Levels_bids, METH_VARARGS, "bids([depth]) -> levels, best first."},
    {"asks", (PyCFunction)Levels_asks, METH_VARARGS, "asks([depth]) -> levels, best first."},
    {"top", (PyCFunction)Levels_top, METH_NOARGS,
     "top() -> (bid, bid_qty, ask, ask_qty), None for an empty side."},
    {"checksum", (PyCFunction)Levels_checksum, METH_NOARGS, "checksum() -> the book's CRC32."},
    {"depth", (PyCFunction)Levels_depth, METH_NOARGS, "depth() -> (bids, asks) level counts."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LevelsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tickwire._market.Levels",
    .tp_doc = PyDoc_STR("An ingest symbol's L2 book of exact decimals (see ingest.PyLevels)."),
    .tp_basicsize = sizeof(LevelsObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Levels_init,
    .tp_dealloc = (destructor)Levels_dealloc,
    .tp_methods = Levels_methods,
};

static struct PyModuleDef market_module = {
    PyModuleDef_HEAD_INIT, "_market",
    "The embedded market's compiled hot path (pure-Python equivalent: simulator.py) and\n"
    "the ingest protocol's L2 book (ingest.PyLevels).", -1,
    NULL,
};

PyMODINIT_FUNC PyInit__market(void) {
    crc_init();
    if (PyType_Ready(&FlowType) < 0)
        return NULL;
    if (PyType_Ready(&LevelsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&market_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FlowType);
    if (PyModule_AddObject(m, "Flow", (PyObject *)&FlowType) < 0) {
        Py_DECREF(&FlowType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&LevelsType);
    if (PyModule_AddObject(m, "Levels", (PyObject *)&LevelsType) < 0) {
        Py_DECREF(&LevelsType);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *all = Py_BuildValue("[ss]", "Flow", "Levels");
    if (all == NULL || PyModule_AddObject(m, "__all__", all) < 0) {
        Py_XDECREF(all);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
