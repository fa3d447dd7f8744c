/*
 * Veil guest SDK for C: ABI version 1 (docs/guests.md) in one header, with no libc.
 *
 * Define `void veil_map(const veil_unit *unit, veil_emitter *out)` in one .c file that includes
 * this header, then build a core module:
 *
 *   clang --target=wasm32-unknown-unknown -O2 -nostdlib -fno-builtin-memset \
 *     -Wl,--no-entry -Wl,-z,stack-size=16384 -o guest.wasm guest.c
 *
 * The header provides the `veil_abi_v1_alloc` and `veil_abi_v1_map` exports, decodes the unit's
 * rows (`veil_unit`, `veil_cell`), encodes contributions (`veil_emit`), and offers `veil_log` for
 * the holder-only log. Memory comes from a bump allocator: each privacy unit runs in a fresh
 * instance that is thrown away afterwards, so nothing is freed. Input is treated as well-formed
 * (the host produced it); a malformed unit makes the map return an error.
 */
#ifndef VEIL_GUEST_H
#define VEIL_GUEST_H

#include <stddef.h>
#include <stdint.h>

enum veil_column_type { VEIL_COL_INT = 0, VEIL_COL_FLOAT = 1, VEIL_COL_TEXT = 2, VEIL_COL_BOOL = 3 };
enum veil_tag { VEIL_NULL = 0, VEIL_INT = 1, VEIL_FLOAT = 2, VEIL_TEXT = 3, VEIL_BOOL = 4 };

typedef struct {
    uint8_t tag; /* enum veil_tag */
    int64_t i;   /* VEIL_INT, VEIL_BOOL (0 or 1) */
    double f;    /* VEIL_FLOAT */
    const char *text; /* VEIL_TEXT: UTF-8, not NUL-terminated */
    uint32_t text_len;
} veil_cell;

typedef struct {
    uint32_t columns;
    const uint8_t *types;      /* enum veil_column_type per column */
    const char **names;        /* not NUL-terminated; see name_lens */
    const uint32_t *name_lens;
    uint32_t rows;
    const veil_cell *cells;    /* rows × columns, row-major */
} veil_unit;

typedef struct {
    uint8_t *buf;
    uint32_t len, cap, count;
} veil_emitter;

void veil_map(const veil_unit *unit, veil_emitter *out);

/* ---- memory ---------------------------------------------------------------------------- */

extern unsigned char __heap_base;
static uintptr_t veil_heap_next;

static void *veil_alloc(size_t size, size_t align) {
    if (veil_heap_next == 0) veil_heap_next = (uintptr_t)&__heap_base;
    uintptr_t start = (veil_heap_next + (align - 1)) & ~(uintptr_t)(align - 1);
    uintptr_t end = start + size;
    if (end < start) return 0;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        size_t need = (end - have + 65535u) / 65536u;
        size_t now = __builtin_wasm_memory_size(0);
        /* Grow geometrically: every growth is a host system call. */
        if (__builtin_wasm_memory_grow(0, need > now ? need : now) == (size_t)-1 &&
            __builtin_wasm_memory_grow(0, need) == (size_t)-1)
            return 0;
    }
    veil_heap_next = end;
    return (void *)start;
}

static void veil_copy(uint8_t *dst, const uint8_t *src, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) dst[i] = src[i];
}

/* ---- the holder-only log ---------------------------------------------------------------- */

__attribute__((import_module("veil_abi_v1"), import_name("log")))
void veil_abi_v1_log(const char *ptr, int32_t len);

static void veil_log(const char *message) {
    int32_t n = 0;
    while (message[n]) n++;
    veil_abi_v1_log(message, n);
}

/* ---- output ----------------------------------------------------------------------------- */

static int veil_reserve(veil_emitter *out, uint32_t more) {
    if (out->len + more <= out->cap) return 1;
    uint32_t cap = out->cap ? out->cap * 2 : 256;
    while (cap < out->len + more) cap *= 2;
    uint8_t *buf = (uint8_t *)veil_alloc(cap, 8);
    if (!buf) return 0;
    if (out->buf) veil_copy(buf, out->buf, out->len);
    out->buf = buf;
    out->cap = cap;
    return 1;
}

static void veil_put_u32(veil_emitter *out, uint32_t v) {
    for (int i = 0; i < 4; i++) out->buf[out->len++] = (uint8_t)(v >> (8 * i));
}

static uint32_t veil_strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Emits one contribution: `nkeys` NUL-terminated key parts and `nvalues` numbers. */
static void veil_emit(veil_emitter *out, const char *const *keys, uint32_t nkeys,
                      const double *values, uint32_t nvalues) {
    uint32_t size = 8 + 8 * nvalues;
    for (uint32_t k = 0; k < nkeys; k++) size += 4 + veil_strlen(keys[k]);
    if (!veil_reserve(out, size)) return;
    veil_put_u32(out, nkeys);
    for (uint32_t k = 0; k < nkeys; k++) {
        uint32_t n = veil_strlen(keys[k]);
        veil_put_u32(out, n);
        veil_copy(out->buf + out->len, (const uint8_t *)keys[k], n);
        out->len += n;
    }
    veil_put_u32(out, nvalues);
    for (uint32_t v = 0; v < nvalues; v++) {
        uint64_t bits;
        __builtin_memcpy(&bits, &values[v], 8);
        for (int i = 0; i < 8; i++) out->buf[out->len++] = (uint8_t)(bits >> (8 * i));
    }
    out->count++;
}

/* ---- input ------------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *p, *end;
    int ok;
} veil_reader;

static const uint8_t *veil_take(veil_reader *r, uint32_t n) {
    if (!r->ok || (uint32_t)(r->end - r->p) < n) {
        r->ok = 0;
        return 0;
    }
    const uint8_t *at = r->p;
    r->p += n;
    return at;
}

static uint64_t veil_read_le(veil_reader *r, uint32_t n) {
    const uint8_t *b = veil_take(r, n);
    uint64_t v = 0;
    if (b)
        for (uint32_t i = 0; i < n; i++) v |= (uint64_t)b[i] << (8 * i);
    return v;
}

/* Index of the column called `name`, or -1. */
static int veil_column(const veil_unit *unit, const char *name) {
    uint32_t n = veil_strlen(name);
    for (uint32_t c = 0; c < unit->columns; c++) {
        if (unit->name_lens[c] != n) continue;
        uint32_t i = 0;
        while (i < n && unit->names[c][i] == name[i]) i++;
        if (i == n) return (int)c;
    }
    return -1;
}

/* The cell as a number: 1 and *out set for int, float and bool cells; 0 otherwise. */
static int veil_number(const veil_cell *cell, double *out) {
    switch (cell->tag) {
    case VEIL_INT: case VEIL_BOOL: *out = (double)cell->i; return 1;
    case VEIL_FLOAT: *out = cell->f; return 1;
    default: return 0;
    }
}

static int veil_decode(const uint8_t *bytes, uint32_t len, veil_unit *unit) {
    veil_reader r = {bytes, bytes + len, 1};
    const uint8_t *magic = veil_take(&r, 4);
    if (!magic || magic[0] != 'V' || magic[1] != 'U' || magic[2] != 'N' || magic[3] != '1') return 0;
    uint32_t ncols = (uint32_t)veil_read_le(&r, 4);
    if (!r.ok || ncols > 1024) return 0;
    uint8_t *types = (uint8_t *)veil_alloc(ncols + 1, 1);
    const char **names = (const char **)veil_alloc(sizeof(char *) * (ncols + 1), 4);
    uint32_t *lens = (uint32_t *)veil_alloc(4 * (ncols + 1), 4);
    if (!types || !names || !lens) return 0;
    for (uint32_t c = 0; c < ncols; c++) {
        types[c] = (uint8_t)veil_read_le(&r, 1);
        lens[c] = (uint32_t)veil_read_le(&r, 4);
        names[c] = (const char *)veil_take(&r, lens[c]);
    }
    uint32_t nrows = (uint32_t)veil_read_le(&r, 4);
    if (!r.ok || (ncols && nrows > (uint32_t)(r.end - r.p))) return 0; /* each cell takes ≥ 1 byte */
    veil_cell *cells = (veil_cell *)veil_alloc(sizeof(veil_cell) * ((size_t)nrows * ncols + 1), 8);
    if (!cells) return 0;
    for (uint32_t i = 0; i < nrows * ncols && r.ok; i++) {
        veil_cell *cell = &cells[i];
        cell->tag = (uint8_t)veil_read_le(&r, 1);
        switch (cell->tag) {
        case VEIL_NULL: break;
        case VEIL_INT: cell->i = (int64_t)veil_read_le(&r, 8); break;
        case VEIL_FLOAT: {
            uint64_t bits = veil_read_le(&r, 8);
            __builtin_memcpy(&cell->f, &bits, 8);
            break;
        }
        case VEIL_TEXT:
            cell->text_len = (uint32_t)veil_read_le(&r, 4);
            cell->text = (const char *)veil_take(&r, cell->text_len);
            break;
        case VEIL_BOOL: cell->i = veil_read_le(&r, 1) != 0; break;
        default: r.ok = 0;
        }
    }
    unit->columns = ncols;
    unit->types = types;
    unit->names = names;
    unit->name_lens = lens;
    unit->rows = nrows;
    unit->cells = cells;
    return r.ok;
}

/* ---- the exports ------------------------------------------------------------------------ */

__attribute__((export_name("veil_abi_v1_alloc")))
int32_t veil_abi_v1_alloc(int32_t len) {
    if (len < 0) return 0;
    return (int32_t)(uintptr_t)veil_alloc((size_t)len, 8);
}

__attribute__((export_name("veil_abi_v1_map")))
int64_t veil_abi_v1_map(int32_t ptr, int32_t len) {
    veil_unit unit;
    if (!veil_decode((const uint8_t *)(uintptr_t)ptr, (uint32_t)len, &unit)) {
        veil_log("veil_guest.h: bad unit encoding");
        return -1;
    }
    veil_emitter out = {0, 0, 0, 0};
    if (!veil_reserve(&out, 4)) return -1;
    out.len = 4; /* the count, patched below */
    veil_map(&unit, &out);
    for (int i = 0; i < 4; i++) out.buf[i] = (uint8_t)(out.count >> (8 * i));
    return ((int64_t)(uintptr_t)out.buf << 32) | out.len;
}

#endif /* VEIL_GUEST_H */
