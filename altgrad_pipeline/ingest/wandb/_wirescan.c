/* Compiled scan of `.wandb` records for `fastpath.py`: the wire-format walks its numpy passes do
 * (top-level classification, item lists, steps, item templates, span gathers), as plain loops.
 *
 * Why C. The numpy passes cost a handful of array operations per item (gathers, masks, chains) and
 * a log of narrow rows has ~25 items per kilobyte: at 12 keys per row they were half of a read.
 * A sequential walk in C reads each byte once. No maintained library decodes W&B's log this way
 * (upb builds a message object per record; wandb-core's Go reader is not exposed for local files).
 *
 * Safety. The bytes are untrusted: every read is checked against the end of the message being
 * walked (itself checked against the buffer), varints are at most 10 bytes (tags and lengths 5),
 * lengths are checked before use, and no allocation is sized from the input: outputs are arrays
 * the caller allocated, whose sizes are passed in and checked. The rules a record must meet are
 * the ones `fastpath.py` documents; differential tests hold the two implementations equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { WIRE_VARINT = 0, WIRE_I64 = 1, WIRE_LEN = 2, WIRE_I32 = 5 };
enum { KIND_OTHER = 0, KIND_HISTORY = 1, KIND_SUMMARY = 2 };
/* How far ahead of a sequential walk the lines of the buffer are prefetched, and how many messages
 * ahead a walk over message spans prefetches the next ones' first lines. */
#define PREFETCH_BYTES 4096
#define PREFETCH_MESSAGES 8

/* Prefetch the first lines of the message [start, end) (at most 16: longer walks stream on). */
static inline void prefetch_message(const uint8_t *u8, int64_t start, int64_t end) {
    for (int64_t p = start; p < end && p < start + 1024; p += 64) __builtin_prefetch(u8 + p);
}

/* Top-level fields read before a record is refused (a `Record` holds a handful). */
#define MAX_TOP_FIELDS 16

typedef struct {
    uint64_t field;
    int wire;
    int64_t start; /* payload (LEN) or value start */
    int64_t end;
    uint64_t value; /* varint value (wire type 0), else 0 */
} Field;

/* One varint at p (before lim), at most max_bytes long; a 10-byte varint's last byte must be 0 or 1.
 * Returns the position after it, or -1 when malformed. */
static inline __attribute__((always_inline)) int64_t read_varint(const uint8_t *u8, int64_t p, int64_t lim, int max_bytes, uint64_t *out) {
    uint64_t value = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (p + i >= lim) return -1;
        uint8_t b = u8[p + i];
        if (i == 9 && b > 1) return -1;
        value |= (uint64_t)(b & 0x7F) << (7 * i);
        if (b < 0x80) {
            *out = value;
            return p + i + 1;
        }
    }
    return -1;
}

/* One field at p (before lim): 1 and the field, or 0 when malformed (a tag or length varint over
 * 5 bytes, a tag of field number 0 or at/above 2^32, a length at/above 2^31, groups or reserved
 * wire types, a field running past lim) -- the checks of fastpath's `_round_general`. */
static inline __attribute__((always_inline)) int read_field(const uint8_t *u8, int64_t p, int64_t lim, Field *f) {
    if (lim - p >= 2 && u8[p] >= 8 && u8[p] < 0x80 && (u8[p] & 7) == WIRE_LEN && u8[p + 1] < 0x80) {
        /* the usual field: a one-byte tag of a LEN field and a one-byte length */
        f->field = u8[p] >> 3;
        f->wire = WIRE_LEN;
        f->value = 0;
        f->start = p + 2;
        f->end = p + 2 + u8[p + 1];
        return f->end <= lim;
    }
    uint64_t tag;
    int64_t q = read_varint(u8, p, lim, 5, &tag);
    if (q < 0 || tag < 8 || tag >= ((uint64_t)1 << 32)) return 0;
    f->field = tag >> 3;
    f->wire = (int)(tag & 7);
    f->value = 0;
    switch (f->wire) {
    case WIRE_VARINT: {
        int64_t e = read_varint(u8, q, lim, 10, &f->value);
        if (e < 0) return 0;
        f->start = q;
        f->end = e;
        return 1;
    }
    case WIRE_LEN: {
        uint64_t length;
        int64_t s = read_varint(u8, q, lim, 5, &length);
        if (s < 0 || length >= ((uint64_t)1 << 31) || (int64_t)length > lim - s) return 0;
        f->start = s;
        f->end = s + (int64_t)length;
        return 1;
    }
    case WIRE_I64:
    case WIRE_I32: {
        int64_t size = f->wire == WIRE_I64 ? 8 : 4;
        if (size > lim - q) return 0;
        f->start = q;
        f->end = q + size;
        return 1;
    }
    default:
        return 0;
    }
}

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int get_buffer(PyObject *obj, Buf *b, int writable, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(obj, &b->view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0) return -1;
    b->held = 1;
    if (itemsize > 1 && b->view.len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: buffer size is not a multiple of %zd bytes", what, itemsize);
        return -1;
    }
    return 0;
}

static void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
}

/* Spans [starts[i], ends[i]) must lie in the buffer; n spans. */
static int check_spans(const int64_t *starts, const int64_t *ends, Py_ssize_t n, int64_t size) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (starts[i] < 0 || ends[i] < starts[i] || ends[i] > size) {
            PyErr_SetString(PyExc_ValueError, "record spans must satisfy 0 <= start <= end <= len(buffer)");
            return -1;
        }
    }
    return 0;
}

/* classify(u8, starts, ends, f_history, f_summary, declared, kinds, payload_start, payload_end, may_fold)
 * Per `Record` [starts[i], ends[i]): kind (history/summary: that field exactly once and LEN, and no
 * other field the reader's view declares), its payload span, and whether the protobuf path may fold
 * it into the summary (a summary field of any wire type, or a record that could not be walked).
 * More than MAX_TOP_FIELDS fields: not walked. As fastpath's `_top_level`. */
static PyObject *classify(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *o[8];
    unsigned long long f_history, f_summary;
    if (!PyArg_ParseTuple(args, "OOOKKOOOOO", &o[0], &o[1], &o[2], &f_history, &f_summary, &o[3], &o[4], &o[5], &o[6], &o[7]))
        return NULL;
    Buf b[8];
    memset(b, 0, sizeof b);
    static const Py_ssize_t sizes[8] = {1, 8, 8, 8, 1, 8, 8, 1};
    static const int writable[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    for (int i = 0; i < 8; i++)
        if (get_buffer(o[i], &b[i], writable[i], sizes[i], "classify") < 0) goto fail;
    const uint8_t *u8 = b[0].view.buf;
    const int64_t *starts = b[1].view.buf, *ends = b[2].view.buf;
    const uint64_t *declared = b[3].view.buf;
    Py_ssize_t n = b[1].view.len / 8, n_declared = b[3].view.len / 8;
    if (b[2].view.len / 8 != n || b[4].view.len != n || b[5].view.len / 8 != n || b[6].view.len / 8 != n || b[7].view.len != n) {
        PyErr_SetString(PyExc_ValueError, "classify: arrays differ in length");
        goto fail;
    }
    if (check_spans(starts, ends, n, b[0].view.len) < 0) goto fail;
    int8_t *kinds = b[4].view.buf;
    int64_t *payload_start = b[5].view.buf, *payload_end = b[6].view.buf;
    uint8_t *may_fold = b[7].view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n; r++) {
        if (r + PREFETCH_MESSAGES < n) prefetch_message(u8, starts[r + PREFETCH_MESSAGES], ends[r + PREFETCH_MESSAGES]);
        int64_t p = starts[r], lim = ends[r];
        int refused = 0, fields = 0, n_history = 0, n_summary_len = 0, n_summary_any = 0, n_declared_seen = 0;
        int64_t h_start = 0, h_end = 0, s_start = 0, s_end = 0;
        while (p < lim) {
            Field f;
            if (fields == MAX_TOP_FIELDS || !read_field(u8, p, lim, &f)) {
                refused = 1;
                break;
            }
            fields++;
            for (Py_ssize_t d = 0; d < n_declared; d++)
                if (f.field == declared[d]) {
                    n_declared_seen++;
                    break;
                }
            if (f.field == f_history && f.wire == WIRE_LEN) {
                n_history++;
                h_start = f.start;
                h_end = f.end;
            }
            if (f.field == f_summary) {
                n_summary_any++;
                if (f.wire == WIRE_LEN) {
                    n_summary_len++;
                    s_start = f.start;
                    s_end = f.end;
                }
            }
            p = f.end;
        }
        kinds[r] = KIND_OTHER;
        payload_start[r] = payload_end[r] = 0;
        if (!refused && n_declared_seen == 1 && n_history == 1) {
            kinds[r] = KIND_HISTORY;
            payload_start[r] = h_start;
            payload_end[r] = h_end;
        } else if (!refused && n_declared_seen == 1 && n_summary_len == 1) {
            kinds[r] = KIND_SUMMARY;
            payload_start[r] = s_start;
            payload_end[r] = s_end;
        }
        may_fold[r] = refused || n_summary_any > 0;
    }
    Py_END_ALLOW_THREADS
    release(b, 8);
    Py_RETURN_NONE;
fail:
    release(b, 8);
    return NULL;
}

/* Fields numbers of the messages `scan` reads, from the installed wandb.proto descriptors. */
typedef struct {
    uint64_t item, step, history_info, summary_info, step_num, key, nested_key, value_json;
} Numbers;

/* One item (`HistoryItem`/`SummaryItem`) [p, lim): plain when exactly one name (`key` or
 * `nested_key`, LEN) and one `value_json` (LEN), in either order, and nothing else. spans: name
 * start, end, value start, end. */
static inline __attribute__((always_inline)) int read_item(const uint8_t *u8, int64_t p, int64_t lim, const Numbers *num, int64_t *spans, uint8_t *nested) {
    int names = 0, values = 0, fields = 0;
    while (p < lim) {
        Field f;
        if (!read_field(u8, p, lim, &f) || ++fields > 2) return 0;
        if (f.wire == WIRE_LEN && (f.field == num->key || f.field == num->nested_key)) {
            names++;
            spans[0] = f.start;
            spans[1] = f.end;
            *nested = f.field == num->nested_key;
        } else if (f.wire == WIRE_LEN && f.field == num->value_json) {
            values++;
            spans[2] = f.start;
            spans[3] = f.end;
        }
        p = f.end;
    }
    return fields == 2 && names == 1 && values == 1;
}

/* One `HistoryStep` [p, lim): at most one field, a varint `num` (0 when absent). */
static inline int read_step(const uint8_t *u8, int64_t p, int64_t lim, uint64_t number, uint64_t *out) {
    int fields = 0;
    *out = 0;
    while (p < lim) {
        Field f;
        if (!read_field(u8, p, lim, &f) || ++fields > 1 || f.field != number || f.wire != WIRE_VARINT) return 0;
        *out = f.value;
        p = f.end;
    }
    return 1;
}

/* Item names dictionary-encoded as they are read: an open-addressing hash table over the distinct
 * names (spans of the buffer, compared byte for byte), codes in order of first appearance. Grows
 * with the names actually found, never sized from a length read from the input. */
typedef struct {
    int32_t *slots; /* entry index + 1, 0 when empty */
    uint64_t *hashes;
    int64_t *spans; /* per entry: start, end */
    int64_t mask, count, capacity;
    int64_t size; /* bytes in the buffer */
} Names;

/* A hash of the n bytes at p; `readable` bytes may be read from p (n or more): the last partial
 * word is read whole and masked when the buffer goes on past it (no byte loop). */
static inline uint64_t hash_bytes(const uint8_t *p, int64_t n, int64_t readable) {
    uint64_t h = 0x243F6A8885A308D3ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
        readable -= 8;
    }
    if (n > 0) {
        uint64_t w = 0;
        if (readable >= 8) {
            memcpy(&w, p, 8);
            w &= (~0ull) >> (64 - 8 * n);
        } else {
            for (int64_t i = 0; i < n; i++) w |= (uint64_t)p[i] << (8 * i);
        }
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 31);
}

static int names_grow(Names *t) {
    int64_t size = t->mask ? 2 * (t->mask + 1) : 1024;
    int32_t *slots = calloc((size_t)size, sizeof *slots);
    uint64_t *hashes = realloc(t->hashes, (size_t)(size / 2) * sizeof *hashes);
    if (hashes) t->hashes = hashes;
    int64_t *spans = realloc(t->spans, (size_t)size * sizeof *spans); /* size / 2 entries, 2 each */
    if (spans) t->spans = spans;
    if (!slots || !hashes || !spans) {
        free(slots);
        return -1;
    }
    for (int64_t e = 0; e < t->count; e++) {
        int64_t at = (int64_t)(t->hashes[e] & (uint64_t)(size - 1));
        while (slots[at]) at = (at + 1) & (size - 1);
        slots[at] = (int32_t)(e + 1);
    }
    free(t->slots);
    t->slots = slots;
    t->mask = size - 1;
    t->capacity = size / 2;
    return 0;
}

/* The code of name [start, end): its entry, added when new; -1 when out of memory. */
static inline int64_t names_code(Names *t, const uint8_t *u8, int64_t start, int64_t end) {
    if (t->count == t->capacity && (t->count >= INT32_MAX / 4 || names_grow(t) < 0)) return -1;
    uint64_t h = hash_bytes(u8 + start, end - start, t->size - start);
    int64_t at = (int64_t)(h & (uint64_t)t->mask);
    for (;;) {
        int32_t slot = t->slots[at];
        if (!slot) break;
        int64_t e = slot - 1, e_start = t->spans[2 * e], e_end = t->spans[2 * e + 1];
        if (t->hashes[e] == h && e_end - e_start == end - start && memcmp(u8 + e_start, u8 + start, (size_t)(end - start)) == 0) return e;
        at = (at + 1) & t->mask;
    }
    int64_t e = t->count++;
    t->slots[at] = (int32_t)(e + 1);
    t->hashes[e] = h;
    t->spans[2 * e] = start;
    t->spans[2 * e + 1] = end;
    return e;
}

/* scan(u8, starts, ends, n_history, numbers, msg_ok, has_step, step_num,
 *      item_msg, item_code, item_values, item_ok, item_nested, text_offsets, texts) -> (items, name spans)
 * (item_msg and item_code int32: fewer than 2^31 messages.)
 * Messages [starts[i], ends[i]): the first n_history `HistoryRecord`s, then `SummaryRecord`s.
 * msg_ok: walked to the end with only items, `_info` and (history) at most one `step` holding at
 * most one varint `num`. Per item of an ok message (message then write order): its message, the
 * code of its name (plain items only; -1 otherwise) among the distinct names returned (bytes of
 * int64 start, end pairs, in order of first appearance), its value span (2 int64), plain or not
 * (`read_item`) and whether its name is a `nested_key`. The values of plain history items are
 * copied to `texts` while their bytes are in cache (`texts` must hold the history messages'
 * bytes); item i's copy is texts[text_offsets[i]:text_offsets[i + 1]] (empty for the others):
 * an Arrow binary array over all items. Items are written while they fit the arrays given; the
 * count says how many there are (the caller calls again with larger arrays when it exceeds
 * their length). */
static PyObject *scan(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *o[13];
    Py_ssize_t n_history;
    PyObject *numbers;
    if (!PyArg_ParseTuple(args, "OOOnOOOOOOOOOOO", &o[0], &o[1], &o[2], &n_history, &numbers, &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12]))
        return NULL;
    Numbers num;
    if (!PyArg_ParseTuple(numbers, "KKKKKKKK", &num.item, &num.step, &num.history_info, &num.summary_info, &num.step_num, &num.key, &num.nested_key, &num.value_json))
        return NULL;
    Buf b[13];
    memset(b, 0, sizeof b);
    Names names;
    memset(&names, 0, sizeof names);
    static const Py_ssize_t sizes[13] = {1, 8, 8, 1, 1, 8, 4, 4, 16, 1, 1, 8, 1};
    static const int writable[13] = {0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    for (int i = 0; i < 13; i++)
        if (get_buffer(o[i], &b[i], writable[i], sizes[i], "scan") < 0) goto fail;
    const uint8_t *u8 = b[0].view.buf;
    const int64_t *starts = b[1].view.buf, *ends = b[2].view.buf;
    Py_ssize_t n = b[1].view.len / 8;
    if (b[2].view.len / 8 != n || b[3].view.len != n || n_history < 0 || n_history > n || b[4].view.len != n_history || b[5].view.len / 8 != n_history || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "scan: message arrays differ in length");
        goto fail;
    }
    Py_ssize_t capacity = b[6].view.len / 4;
    if (b[7].view.len / 4 != capacity || b[8].view.len / 16 != capacity || b[9].view.len != capacity || b[10].view.len != capacity || b[11].view.len / 8 != capacity + 1) {
        PyErr_SetString(PyExc_ValueError, "scan: item arrays differ in length");
        goto fail;
    }
    if (check_spans(starts, ends, n, b[0].view.len) < 0) goto fail;
    int64_t history_bytes = 0;
    for (Py_ssize_t m = 0; m < n_history; m++) history_bytes += ends[m] - starts[m];
    if (b[12].view.len < history_bytes) {
        PyErr_SetString(PyExc_ValueError, "scan: the text buffer is smaller than the history messages");
        goto fail;
    }
    names.size = b[0].view.len;
    uint8_t *msg_ok = b[3].view.buf, *has_step = b[4].view.buf, *item_ok = b[9].view.buf, *item_nested = b[10].view.buf;
    int64_t *step_num = b[5].view.buf, *item_values = b[8].view.buf;
    int32_t *item_msg = b[6].view.buf, *item_code = b[7].view.buf;
    int64_t *text_offsets = b[11].view.buf;
    uint8_t *texts = b[12].view.buf;
    int64_t text_end = 0; /* a value is never longer than its message: texts cannot overflow */
    Py_ssize_t count = 0;
    int out_of_memory = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t m = 0; m < n && !out_of_memory; m++) {
        if (m + PREFETCH_MESSAGES < n) prefetch_message(u8, starts[m + PREFETCH_MESSAGES], ends[m + PREFETCH_MESSAGES]);
        int history = m < n_history, ok = 1, steps = 0;
        int64_t p = starts[m], lim = ends[m];
        Py_ssize_t first_item = count;
        int64_t first_text = text_end;
        uint64_t step_value = 0;
        while (p < lim) {
            Field f;
            if (!read_field(u8, p, lim, &f)) {
                ok = 0;
                break;
            }
            if (f.field == num.item && f.wire == WIRE_LEN) {
                if (count < capacity) {
                    int64_t spans[4] = {0, 0, 0, 0};
                    uint8_t nested = 0;
                    int plain = read_item(u8, f.start, f.end, &num, spans, &nested);
                    int64_t code = -1;
                    if (plain && (code = names_code(&names, u8, spans[0], spans[1])) < 0) {
                        out_of_memory = 1;
                        break;
                    }
                    item_msg[count] = (int32_t)m;
                    item_code[count] = (int32_t)code;
                    item_values[2 * count] = spans[2];
                    item_values[2 * count + 1] = spans[3];
                    item_ok[count] = (uint8_t)plain;
                    item_nested[count] = nested;
                    text_offsets[count] = text_end;
                    if (plain && history) {
                        memcpy(texts + text_end, u8 + spans[2], (size_t)(spans[3] - spans[2]));
                        text_end += spans[3] - spans[2];
                    }
                }
                count++;
            } else if (history && f.field == num.step && f.wire == WIRE_LEN) {
                if (++steps > 1 || !read_step(u8, f.start, f.end, num.step_num, &step_value)) ok = 0;
            } else if (f.field != (history ? num.history_info : num.summary_info)) {
                ok = 0;
            }
            if (!ok) break;
            p = f.end;
        }
        msg_ok[m] = (uint8_t)ok;
        if (history) {
            has_step[m] = ok && steps == 1;
            step_num[m] = ok ? (int64_t)step_value : 0;
        }
        if (!ok) { /* a refused message's items are not handed over */
            count = first_item;
            text_end = first_text;
        }
    }
    if (count <= capacity) text_offsets[count] = text_end;
    Py_END_ALLOW_THREADS
    if (out_of_memory) {
        PyErr_NoMemory();
        goto fail;
    }
    release(b, 13);
    PyObject *spans = PyBytes_FromStringAndSize(names.spans ? (const char *)names.spans : "", (Py_ssize_t)(16 * names.count));
    free(names.slots);
    free(names.hashes);
    free(names.spans);
    if (!spans) return NULL;
    return Py_BuildValue("(nN)", count, spans);
fail:
    release(b, 13);
    free(names.slots);
    free(names.hashes);
    free(names.spans);
    return NULL;
}

/* gather(u8, starts, ends, offsets, out): the spans' bytes back to back into `out` (their total
 * length) and their offsets into `offsets` (n + 1 int64, from 0): an Arrow binary array's buffers. */
static PyObject *gather(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *o[5];
    if (!PyArg_ParseTuple(args, "OOOOO", &o[0], &o[1], &o[2], &o[3], &o[4])) return NULL;
    Buf b[5];
    memset(b, 0, sizeof b);
    static const Py_ssize_t sizes[5] = {1, 8, 8, 8, 1};
    static const int writable[5] = {0, 0, 0, 1, 1};
    for (int i = 0; i < 5; i++)
        if (get_buffer(o[i], &b[i], writable[i], sizes[i], "gather") < 0) goto fail;
    const uint8_t *u8 = b[0].view.buf;
    const int64_t *starts = b[1].view.buf, *ends = b[2].view.buf;
    Py_ssize_t n = b[1].view.len / 8;
    if (b[2].view.len / 8 != n || b[3].view.len / 8 != n + 1) {
        PyErr_SetString(PyExc_ValueError, "gather: arrays differ in length");
        goto fail;
    }
    if (check_spans(starts, ends, n, b[0].view.len) < 0) goto fail;
    int64_t *offsets = b[3].view.buf, total = 0;
    for (Py_ssize_t i = 0; i < n; i++) total += ends[i] - starts[i];
    if (total != b[4].view.len) {
        PyErr_SetString(PyExc_ValueError, "gather: the output is not the spans' total length");
        goto fail;
    }
    uint8_t *out = b[4].view.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t at = 0;
    offsets[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t length = ends[i] - starts[i];
        memcpy(out + at, u8 + starts[i], (size_t)length);
        at += length;
        offsets[i + 1] = at;
    }
    Py_END_ALLOW_THREADS
    release(b, 5);
    Py_RETURN_NONE;
fail:
    release(b, 5);
    return NULL;
}

/* frame(data, base, pos, end, origin, block_size, chunk_last, at, length, kind, crc) -> chunks found
 * The chunks of a LevelDB-log stretch, as `WandbLogReader._frame_bulk` finds them: `data` holds the
 * file from offset `base`; from file offset `pos` up to `end`, blocks of `block_size` starting at
 * `origin`, chunk headers of 7 bytes (CRC u32, length u16, type u8). A block's last < 7 bytes are
 * its trailer. The walk stops at the first chunk the reader's loop must treat itself: a header or
 * payload past `end`, a trailer running past `end`, type 0 or above `chunk_last`, a payload past
 * its block. Chunks are written while they fit the arrays given; the count says how many. */
static PyObject *frame(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *o[5];
    long long base, pos, end, origin, block_size;
    int chunk_last;
    if (!PyArg_ParseTuple(args, "OLLLLLiOOOO", &o[0], &base, &pos, &end, &origin, &block_size, &chunk_last, &o[1], &o[2], &o[3], &o[4]))
        return NULL;
    Buf b[5];
    memset(b, 0, sizeof b);
    static const Py_ssize_t sizes[5] = {1, 8, 8, 1, 4};
    static const int writable[5] = {0, 1, 1, 1, 1};
    for (int i = 0; i < 5; i++)
        if (get_buffer(o[i], &b[i], writable[i], sizes[i], "frame") < 0) goto fail;
    const uint8_t *data = b[0].view.buf;
    Py_ssize_t capacity = b[1].view.len / 8;
    if (b[2].view.len / 8 != capacity || b[3].view.len != capacity || b[4].view.len / 4 != capacity) {
        PyErr_SetString(PyExc_ValueError, "frame: chunk arrays differ in length");
        goto fail;
    }
    if (block_size < 8 || origin < 0 || base < 0 || pos < base || pos < origin || end < pos || end - base > b[0].view.len) {
        PyErr_SetString(PyExc_ValueError, "frame: positions outside the data");
        goto fail;
    }
    int64_t *at_out = b[1].view.buf, *length_out = b[2].view.buf;
    uint8_t *kind_out = b[3].view.buf;
    uint32_t *crc_out = b[4].view.buf;
    const int64_t header = 7;
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t at = pos, ahead = pos - base;
    const int64_t data_end = end - base;
    for (;;) {
        /* Each chunk's position depends on the previous one's length: without help every header is a
         * cache (and TLB) miss in turn. Prefetching every line some KiB ahead makes it a stream. */
        for (; ahead < at - base + PREFETCH_BYTES && ahead < data_end; ahead += 64) __builtin_prefetch(data + ahead);
        int64_t block_end = at - (at - origin) % block_size + block_size;
        if (block_end - at < header) { /* the trailer: the next block, unless it runs past end */
            if (block_end > end) break;
            at = block_end;
            continue;
        }
        if (at + header > end) break;
        const uint8_t *h = data + (at - base);
        uint32_t crc = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
        int64_t length = (int64_t)h[4] | (int64_t)h[5] << 8;
        int kind = h[6];
        int64_t next = at + header + length;
        if (kind == 0 || kind > chunk_last || next > block_end || next > end) break;
        if (count < capacity) {
            at_out[count] = at;
            length_out[count] = length;
            kind_out[count] = (uint8_t)kind;
            crc_out[count] = crc;
        }
        count++;
        at = next;
    }
    Py_END_ALLOW_THREADS
    release(b, 5);
    return PyLong_FromSsize_t(count);
fail:
    release(b, 5);
    return NULL;
}

/* assemble(data, base, at, length, kind, records) -> (chunks used, records)
 * The records of chunks whose order is checked (a record opens with FULL or FIRST and goes on with
 * MIDDLE until LAST): each record's continuation payloads are moved down onto the end of its first
 * chunk's payload (`data`, the file from offset `base`, is written in place; only a record's own
 * headers and block trailers are overwritten), and per record (payload start and end in `data`,
 * file offset of its first chunk) goes to `records` (one row per chunk at most). Chunks after the
 * last complete record are left alone; "chunks used" counts the others. As `_frame_bulk` did with
 * numpy. */
static PyObject *assemble(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *o[5];
    long long base;
    if (!PyArg_ParseTuple(args, "OLOOOO", &o[0], &base, &o[1], &o[2], &o[3], &o[4])) return NULL;
    Buf b[5];
    memset(b, 0, sizeof b);
    static const Py_ssize_t sizes[5] = {1, 8, 8, 1, 24};
    static const int writable[5] = {1, 0, 0, 0, 1};
    for (int i = 0; i < 5; i++)
        if (get_buffer(o[i], &b[i], writable[i], sizes[i], "assemble") < 0) goto fail;
    uint8_t *data = b[0].view.buf;
    const int64_t *at = b[1].view.buf, *length = b[2].view.buf;
    const uint8_t *kind = b[3].view.buf;
    int64_t *records = b[4].view.buf;
    Py_ssize_t n = b[1].view.len / 8;
    const int64_t header = 7;
    if (b[2].view.len / 8 != n || b[3].view.len != n || b[4].view.len / 24 < n || base < 0) {
        PyErr_SetString(PyExc_ValueError, "assemble: arrays differ in length");
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (at[i] < base || length[i] < 0 || at[i] - base > b[0].view.len - header - length[i] || (i && at[i] < at[i - 1] + header + length[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "assemble: chunks overlap or lie outside the data");
            goto fail;
        }
        int opens = kind[i] == 1 || kind[i] == 2, open_before = i && (kind[i - 1] == 2 || kind[i - 1] == 3);
        if (kind[i] < 1 || kind[i] > 4 || opens == open_before) {
            PyErr_SetString(PyExc_ValueError, "assemble: chunks out of record order");
            goto fail;
        }
    }
    Py_ssize_t used = 0, count = 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t record_start = 0, record_at = 0, write = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t payload = at[i] + header - base;
        if (kind[i] == 1 || kind[i] == 2) { /* FULL or FIRST: a record starts where its payload is */
            record_start = payload;
            record_at = at[i];
            write = payload + length[i];
        } else { /* MIDDLE or LAST: down onto the record's end (write <= payload: ranges may overlap) */
            memmove(data + write, data + payload, (size_t)length[i]);
            write += length[i];
        }
        if (kind[i] == 1 || kind[i] == 4) { /* FULL or LAST: the record is complete */
            records[3 * count] = record_start;
            records[3 * count + 1] = write;
            records[3 * count + 2] = record_at;
            count++;
            used = i + 1;
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 5);
    return Py_BuildValue("(nn)", used, count);
fail:
    release(b, 5);
    return NULL;
}

/* The CRC-32 register after n (< 32 KiB) zero bytes from `reg`, by the tables of
 * `framing._zero_byte_tables` (low: n % 256, high: n / 256; 1024 entries per n). */
static inline uint32_t after_zeros(const uint32_t *low, const uint32_t *high, int64_t n, uint32_t reg) {
    const uint32_t *t = low + (n & 0xFF) * 1024;
    reg = t[reg & 0xFF] ^ t[256 + ((reg >> 8) & 0xFF)] ^ t[512 + ((reg >> 16) & 0xFF)] ^ t[768 + (reg >> 24)];
    t = high + (n >> 8) * 1024;
    return t[reg & 0xFF] ^ t[256 + ((reg >> 8) & 0xFF)] ^ t[512 + ((reg >> 16) & 0xFF)] ^ t[768 + (reg >> 24)];
}

/* predict_runs(at, length, crc, origin, block_size, low, high, run_first, run_end, predicted) -> runs
 * `framing.first_crc_mismatch`'s prediction: chunks (ascending file offsets, 7-byte headers) split
 * into runs of back-to-back chunks within one block; per run its first chunk, end offset and the
 * CRC-32 its bytes have when every chunk's stored CRC is right. */
static PyObject *predict_runs(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *o[8];
    long long origin, block_size;
    if (!PyArg_ParseTuple(args, "OOOLLOOOOO", &o[0], &o[1], &o[2], &origin, &block_size, &o[3], &o[4], &o[5], &o[6], &o[7])) return NULL;
    Buf b[8];
    memset(b, 0, sizeof b);
    static const Py_ssize_t sizes[8] = {8, 8, 4, 4, 4, 8, 8, 4};
    static const int writable[8] = {0, 0, 0, 0, 0, 1, 1, 1};
    for (int i = 0; i < 8; i++)
        if (get_buffer(o[i], &b[i], writable[i], sizes[i], "predict_runs") < 0) goto fail;
    const int64_t *at = b[0].view.buf, *length = b[1].view.buf;
    const uint32_t *crc = b[2].view.buf, *low = b[3].view.buf, *high = b[4].view.buf;
    Py_ssize_t n = b[0].view.len / 8;
    if (b[1].view.len / 8 != n || b[2].view.len / 4 != n || b[5].view.len / 8 != n || b[6].view.len / 8 != n || b[7].view.len / 4 != n) {
        PyErr_SetString(PyExc_ValueError, "predict_runs: arrays differ in length");
        goto fail;
    }
    if (block_size < 8 || block_size > 32768 || b[3].view.len != 256 * 1024 * 4 || b[4].view.len != (block_size / 256) * 1024 * 4) {
        PyErr_SetString(PyExc_ValueError, "predict_runs: zero-byte tables of the wrong size");
        goto fail;
    }
    const int64_t header = 7;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t block_start = at[i] - (at[i] - origin) % block_size;
        if (at[i] < origin || length[i] < 0 || at[i] + header + length[i] > block_start + block_size || (i && at[i] < at[i - 1] + header + length[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "predict_runs: chunks overlap or leave their block");
            goto fail;
        }
    }
    int64_t *run_first = b[5].view.buf, *run_end = b[6].view.buf;
    uint32_t *predicted = b[7].view.buf;
    Py_ssize_t runs = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t j = i + 1; /* the run: chunks i .. j - 1 */
        while (j < n && at[j] == at[j - 1] + header + length[j - 1] && (at[j] - origin) / block_size == (at[i] - origin) / block_size) j++;
        int64_t end = at[j - 1] + header + length[j - 1];
        uint32_t sum = 0;
        for (Py_ssize_t k = i; k < j; k++) {
            /* Z(n, Z(6, c) ^ Z(2, l) ^ F) ^ Z(after, c ^ F), n = after + 1 + l: see first_crc_mismatch */
            int64_t chunk_end = at[k] + header + length[k], after = end - chunk_end;
            uint32_t lead = after_zeros(low, high, 6, crc[k]) ^ after_zeros(low, high, 2, (uint32_t)length[k]) ^ 0xFFFFFFFFu;
            sum ^= after_zeros(low, high, after + 1 + length[k], lead) ^ after_zeros(low, high, after, crc[k] ^ 0xFFFFFFFFu);
        }
        run_first[runs] = i;
        run_end[runs] = end;
        predicted[runs] = sum;
        runs++;
        i = j;
    }
    Py_END_ALLOW_THREADS
    release(b, 8);
    return PyLong_FromSsize_t(runs);
fail:
    release(b, 8);
    return NULL;
}

/* first_appearance(codes, size, renumbered, entries) -> distinct codes
 * Codes (int32 or int64, into a dictionary of `size` entries) renumbered 0, 1, ... in order of
 * first appearance, as Arrow's dictionary encoding numbers them: `renumbered` (int64, one per
 * code) and `entries` (int64, the entries in that order; its first `distinct` are written). */
static PyObject *first_appearance(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *o[3];
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "OnOO", &o[0], &size, &o[1], &o[2])) return NULL;
    Buf b[3];
    memset(b, 0, sizeof b);
    int64_t *seen = NULL;
    if (get_buffer(o[0], &b[0], 0, 1, "first_appearance") < 0 || get_buffer(o[1], &b[1], 1, 8, "first_appearance") < 0 || get_buffer(o[2], &b[2], 1, 8, "first_appearance") < 0)
        goto fail;
    int wide = b[0].view.itemsize == 8;
    if ((b[0].view.itemsize != 4 && !wide) || b[0].view.len % b[0].view.itemsize) {
        PyErr_SetString(PyExc_ValueError, "first_appearance: codes must be int32 or int64");
        goto fail;
    }
    Py_ssize_t n = b[0].view.len / b[0].view.itemsize;
    if (b[1].view.len / 8 != n || size < 0 || b[2].view.len / 8 != size) {
        PyErr_SetString(PyExc_ValueError, "first_appearance: arrays differ in length");
        goto fail;
    }
    seen = malloc((size_t)(size ? size : 1) * sizeof *seen); /* size: the dictionary's, not the input's */
    if (!seen) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t e = 0; e < size; e++) seen[e] = -1;
    const int32_t *narrow = b[0].view.buf;
    const int64_t *codes = b[0].view.buf;
    int64_t *renumbered = b[1].view.buf, *entries = b[2].view.buf, distinct = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t code = wide ? codes[i] : narrow[i];
        if (code < 0 || code >= size) {
            PyErr_SetString(PyExc_ValueError, "first_appearance: a code outside the dictionary");
            goto fail;
        }
        if (seen[code] < 0) {
            seen[code] = distinct;
            entries[distinct++] = code;
        }
        renumbered[i] = seen[code];
    }
    free(seen);
    release(b, 3);
    return PyLong_FromLongLong(distinct);
fail:
    free(seen);
    release(b, 3);
    return NULL;
}

static PyMethodDef methods[] = {
    {"classify", classify, METH_VARARGS, "Classify `Record`s: kinds, payload spans, may-fold flags (fastpath._top_level)."},
    {"scan", scan, METH_VARARGS, "Walk history/summary messages: message checks, steps, item spans."},
    {"frame", frame, METH_VARARGS, "Walk the chunks of a LevelDB-log stretch up to the first one needing the reader's loop."},
    {"assemble", assemble, METH_VARARGS, "Move records' continuation payloads down and list the complete records."},
    {"predict_runs", predict_runs, METH_VARARGS, "Runs of back-to-back chunks and the CRC-32 each should have."},
    {"first_appearance", first_appearance, METH_VARARGS, "Renumber dictionary codes in order of first appearance."},
    {"gather", gather, METH_VARARGS, "Copy byte spans back to back with their offsets (an Arrow binary array)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wirescan", "Compiled wire-format scans for fastpath.py.", -1, methods};

PyMODINIT_FUNC PyInit__wirescan(void) { return PyModule_Create(&module); }
