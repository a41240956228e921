/* bpe_tokenizer.c - GPT-2 byte-level BPE: loading, pre-tokenisation, merges, decoding.
 * Contract in bpe_tokenizer.h.
 *
 * Legend:  id     token id (int32)          rank  merge priority (line order in merges.txt)
 *          piece  one pre-token (bytes)     sym   a symbol of a piece during merging
 */
#include "io/bpe_tokenizer.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/memory.h"
#include "io/file.h"
#include "io/unicode_table.h"

/* ---------------------------------------------------------------- helpers */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;            /* FNV-1a: short keys, no alignment */
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ull; }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb3f99c1b87d3ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

static int grow(void **data, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *p = realloc(*data, c * elem);
    if (!p) return -1;
    *data = p; *cap = c;
    return 0;
}

static mi_status ids_push(mi_bpe_ids *v, int32_t id)
{
    if (grow((void **)&v->data, &v->cap, v->len + 1, sizeof(int32_t)))
        return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory for %zu ids", v->len + 1);
    v->data[v->len++] = id;
    return MI_OK;
}

void mi_bpe_ids_free(mi_bpe_ids *v) { free(v->data); v->data = NULL; v->len = v->cap = 0; }

/* Decode one UTF-8 code point at s[0..n). Returns its byte length (>= 1); an invalid or
 * truncated sequence yields length 1 and cp 0xFFFFFFFF (class "other"). */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    size_t len; uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else { *cp = 0xFFFFFFFFu; return 1; }
    if (len > n) { *cp = 0xFFFFFFFFu; return 1; }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) { *cp = 0xFFFFFFFFu; return 1; }
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) { *cp = 0xFFFFFFFFu; return 1; }
    *cp = v;
    return len;
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;                                        /* byte-to-unicode code points are < 0x800 */
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes
 * to 256, 257, ... in byte order. */
static void byte_to_unicode_table(uint32_t map[256])
{
    uint32_t extra = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        map[b] = printable ? (uint32_t)b : extra++;
    }
}

/* ---------------------------------------------------------------- tables */

typedef struct {
    uint32_t key_off, key_len;   /* vocab.json string in tok->keys */
    uint32_t raw_off, raw_len;   /* bytes it decodes to in tok->raw */
    uint8_t used, special, added;      /* added: split out of text before BPE */
    uint8_t fallback, fallback_byte;   /* a <0xNN> token (byte fallback) and its byte */
} token_entry;

typedef struct { int32_t id; } str_slot;                     /* key string -> id; -1 empty */
typedef struct { uint64_t pair; int32_t rank, merged; } merge_slot;  /* rank -1 empty */

typedef struct { uint32_t off, len; int32_t id; } special_entry;

struct mi_bpe_tokenizer {
    token_entry *tokens; int32_t n_tokens; size_t tokens_cap;
    char *keys; size_t keys_len, keys_cap;
    char *raw; size_t raw_len, raw_cap;
    str_slot *str_map; size_t str_cap, str_count;
    merge_slot *merges; size_t merge_cap;
    int32_t byte_id[256];
    uint32_t byte_char[256];                     /* bytes_to_unicode */
    special_entry *specials; size_t n_specials, specials_cap;
    char *special_text; size_t special_text_len, special_text_cap;
    uint8_t special_first[256];                  /* first bytes of special tokens */
    /* tokenizer.json pipeline (all zero for vocab.json + merges.txt) */
    mi_bpe_options opt;
    int32_t unk_id;                              /* -1: none */
    int32_t fallback_id[256];                    /* <0xNN> tokens, -1 absent */
    int32_t *tpl; int n_tpl_prefix, n_tpl_suffix;  /* post-processor ids */
};

static mi_status append_bytes(char **buf, size_t *len, size_t *cap, const char *s, size_t n, uint32_t *off)
{
    if (*len + n > UINT32_MAX) return mi_fail(MI_ERR_NOMEM, "tokenizer: vocabulary text over 4 GiB");
    if (grow((void **)buf, cap, *len + n + 1, 1)) return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(*buf + *len, s, n);
    *off = (uint32_t)*len;
    *len += n;
    return MI_OK;
}

static mi_status ensure_tokens(mi_bpe_tokenizer *t, int32_t id)
{
    if (id < t->n_tokens) return MI_OK;
    size_t old = t->tokens_cap;
    if (grow((void **)&t->tokens, &t->tokens_cap, (size_t)id + 1, sizeof(token_entry)))
        return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory for token id %d", id);
    memset(t->tokens + old, 0, (t->tokens_cap - old) * sizeof(token_entry));
    t->n_tokens = id + 1;
    return MI_OK;
}

static int32_t str_lookup(const mi_bpe_tokenizer *t, const char *s, size_t n)
{
    if (!t->str_cap) return -1;
    size_t mask = t->str_cap - 1, i = hash_bytes(s, n) & mask;
    for (;; i = (i + 1) & mask) {
        int32_t id = t->str_map[i].id;
        if (id < 0) return -1;
        const token_entry *e = &t->tokens[id];
        if (e->key_len == n && !memcmp(t->keys + e->key_off, s, n)) return id;
    }
}

/* Insert id under its key; the first id of a key wins (a later duplicate keeps its own entry
 * for decoding but the string maps to the first). Table has room (sized at load). */
static void str_insert(mi_bpe_tokenizer *t, int32_t id)
{
    const token_entry *e = &t->tokens[id];
    const char *s = t->keys + e->key_off;
    size_t mask = t->str_cap - 1, i = hash_bytes(s, e->key_len) & mask;
    for (;; i = (i + 1) & mask) {
        int32_t o = t->str_map[i].id;
        if (o < 0) { t->str_map[i].id = id; t->str_count++; return; }
        const token_entry *f = &t->tokens[o];
        if (f->key_len == e->key_len && !memcmp(t->keys + f->key_off, s, e->key_len)) return;
    }
}

static mi_status str_map_rebuild(mi_bpe_tokenizer *t)
{
    free(t->str_map);
    t->str_cap = pow2_at_least(2 * (size_t)t->n_tokens + 16);
    t->str_map = malloc(t->str_cap * sizeof(str_slot));
    if (!t->str_map) return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory for the vocabulary map");
    for (size_t i = 0; i < t->str_cap; i++) t->str_map[i].id = -1;
    t->str_count = 0;
    for (int32_t id = 0; id < t->n_tokens; id++)
        if (t->tokens[id].used) str_insert(t, id);
    return MI_OK;
}

static const merge_slot *merge_lookup(const mi_bpe_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t pair = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->merge_cap - 1, i = hash_u64(pair) & mask;
    for (;; i = (i + 1) & mask) {
        const merge_slot *m = &t->merges[i];
        if (m->rank < 0) return NULL;
        if (m->pair == pair) return m;
    }
}

/* ---------------------------------------------------------------- loading */

/* The byte of a "<0xNN>" token (upper-case hex, as byte-fallback vocabularies write it), or -1. */
static int fallback_byte_of(const char *key, size_t klen)
{
    static const char hex[] = "0123456789ABCDEF";
    if (klen != 6 || memcmp(key, "<0x", 3) || key[5] != '>') return -1;
    const char *h = strchr(hex, key[3]), *l = strchr(hex, key[4]);
    if (!h || !l || !key[3] || !key[4]) return -1;
    return (int)((h - hex) * 16 + (l - hex));
}

/* Append s[0..n) to buf with every `from` replaced by `to` (from.len 0: a plain copy). */
static mi_status append_replaced(char **buf, size_t *len, size_t *cap, const char *s, size_t n,
                                 const mi_bpe_str *from, const mi_bpe_str *to)
{
    for (size_t i = 0; i < n; ) {
        const char *piece = s + i;
        size_t m = 1;
        if (from->len && from->len <= n - i && !memcmp(s + i, from->text, from->len)) {
            piece = to->text; m = to->len; i += from->len;
        } else {
            i++;
        }
        if (grow((void **)buf, cap, *len + m + 1, 1)) return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory");
        memcpy(*buf + *len, piece, m);
        *len += m;
    }
    return MI_OK;
}

/* SentencePiece-style decoding of token `id` (its key is set): the key's text through
 * the Replace decoder, or its byte for a <0xNN> token when the decoder has ByteFallback.
 * Added tokens decode the same way: the reference runs every token through the decoder. */
static mi_status set_decoded_text(mi_bpe_tokenizer *t, int32_t id, const char *key, size_t klen)
{
    int fb = t->opt.dec_byte_fallback ? fallback_byte_of(key, klen) : -1;
    char byte = (char)fb, *tmp = NULL;
    size_t n = 0, cap = 0;
    token_entry *e = &t->tokens[id];
    mi_status st = fb >= 0 ? MI_OK : append_replaced(&tmp, &n, &cap, key, klen, &t->opt.dec_from, &t->opt.dec_to);
    if (st == MI_OK)
        st = append_bytes(&t->raw, &t->raw_len, &t->raw_cap, fb >= 0 ? &byte : (tmp ? tmp : ""),
                          fb >= 0 ? 1 : n, &e->raw_off);
    free(tmp);
    MI_TRY(st);
    e = &t->tokens[id];
    e->raw_len = fb >= 0 ? 1 : (uint32_t)n;
    e->fallback = fb >= 0;
    e->fallback_byte = fb >= 0 ? (uint8_t)fb : 0;
    e->used = 1;
    return MI_OK;
}

/* Raw bytes a key decodes to. Byte-level (vocab.json, GPT-2): each code point mapped
 * back through bytes_to_unicode; keys with a code point outside that map (added tokens
 * written as text) decode as their own UTF-8. SentencePiece-style (opt.dec_chars): the
 * key's text through the Replace decoder, and a <0xNN> token its byte when the decoder
 * has ByteFallback. */
static mi_status set_token(mi_bpe_tokenizer *t, int32_t id, const char *key, size_t klen,
                           const uint32_t unicode_to_byte[324])
{
    MI_TRY(ensure_tokens(t, id));
    token_entry *e = &t->tokens[id];
    MI_TRY(append_bytes(&t->keys, &t->keys_len, &t->keys_cap, key, klen, &e->key_off));
    e->key_len = (uint32_t)klen;
    if (t->opt.dec_chars) return set_decoded_text(t, id, key, klen);
    char tmp[256];
    char *raw = klen <= sizeof tmp ? tmp : malloc(klen);
    if (!raw) return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory");
    size_t n = 0, i = 0;
    int byte_level = 1;
    while (i < klen) {
        uint32_t cp;
        i += utf8_next((const unsigned char *)key + i, klen - i, &cp);
        if (cp >= 324 || unicode_to_byte[cp] > 255) { byte_level = 0; break; }
        raw[n++] = (char)unicode_to_byte[cp];
    }
    const char *src = byte_level ? raw : key;
    size_t len = byte_level ? n : klen;
    mi_status st = append_bytes(&t->raw, &t->raw_len, &t->raw_cap, src, len, &e->raw_off);
    if (raw != tmp) free(raw);
    e = &t->tokens[id];
    e->raw_len = (uint32_t)len;
    e->used = 1;
    return st;
}

/* The ids of the single bytes / characters and, for tokenizer.json, of the unk and
 * <0xNN> tokens (the vocabulary and its string map are complete). */
static void resolve_symbols(mi_bpe_tokenizer *t, const uint32_t byte_map[256])
{
    memcpy(t->byte_char, byte_map, sizeof t->byte_char);
    for (int b = 0; b < 256; b++) {
        char buf[4];
        size_t n = t->opt.chars ? 1 : utf8_put(byte_map[b], buf);
        if (t->opt.chars) buf[0] = (char)b;
        /* a character symbol is a whole UTF-8 character: bytes >= 0x80 never stand alone */
        t->byte_id[b] = t->opt.chars && b >= 0x80 ? -1 : str_lookup(t, buf, n);
        char fb[7];
        snprintf(fb, sizeof fb, "<0x%02X>", b);
        t->fallback_id[b] = str_lookup(t, fb, 6);
    }
    t->unk_id = t->opt.unk.len ? str_lookup(t, t->opt.unk.text, t->opt.unk.len) : -1;
}

/* {token: id} entries of a parsed vocabulary object. */
static mi_status vocab_from_object(mi_bpe_tokenizer *t, const cJSON *root, const char *name)
{
    uint32_t byte_map[256], unicode_to_byte[324];
    byte_to_unicode_table(byte_map);
    for (int i = 0; i < 324; i++) unicode_to_byte[i] = 256;     /* 256: not a byte */
    for (int b = 0; b < 256; b++) unicode_to_byte[byte_map[b]] = (uint32_t)b;
    if (!cJSON_IsObject(root))
        return mi_fail(MI_ERR_FORMAT, "%s: expected a JSON object {token: id}", name);
    int n_entries = cJSON_GetArraySize(root);
    for (const cJSON *it = root->child; it; it = it->next) {
        double v = it->valuedouble;
        if (!cJSON_IsNumber(it) || v != floor(v) || v < 0 || v > 2147483646.0) {
            char *shown = cJSON_PrintUnformatted(it);
            mi_status st = mi_fail(MI_ERR_FORMAT, "%s: token \"%s\" has id %s, expected a non-negative integer",
                                   name, it->string, shown ? shown : "?");
            free(shown);
            return st;
        }
        int32_t id = (int32_t)v;
        if ((double)id >= 4.0 * n_entries + 65536)     /* the id table is dense: refuse absurd ids */
            return mi_fail(MI_ERR_FORMAT, "%s: token \"%s\" has id %d, far past the %d entries of the vocabulary",
                           name, it->string, id, n_entries);
        if (id < t->n_tokens && t->tokens[id].used) continue;   /* duplicate id: first wins */
        MI_TRY(set_token(t, id, it->string, strlen(it->string), unicode_to_byte));
    }
    MI_TRY(str_map_rebuild(t));
    resolve_symbols(t, byte_map);
    return MI_OK;
}

static mi_status load_vocab(mi_bpe_tokenizer *t, const char *json, size_t len, const char *name)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *where = cJSON_GetErrorPtr();
        size_t off = (where && where >= json && where <= json + len) ? (size_t)(where - json) : 0;
        return mi_fail(MI_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", name, off);
    }
    mi_status st = vocab_from_object(t, root, name);
    cJSON_Delete(root);
    return st;
}

static mi_status merges_reserve(mi_bpe_tokenizer *t, size_t n, const char *name)
{
    t->merge_cap = pow2_at_least(2 * n + 16);
    t->merges = malloc(t->merge_cap * sizeof(merge_slot));
    if (!t->merges) return mi_fail(MI_ERR_NOMEM, "%s: out of memory for %zu merges", name, n);
    for (size_t i = 0; i < t->merge_cap; i++) t->merges[i].rank = -1;
    return MI_OK;
}

/* Merge (a, b) with this rank; `where` names the entry in messages. */
static mi_status add_merge(mi_bpe_tokenizer *t, const char *a, size_t la, const char *b, size_t lb,
                           int32_t rank, const char *name, const char *where)
{
    int32_t ia = str_lookup(t, a, la), ib = str_lookup(t, b, lb);
    if (ia < 0 || ib < 0)
        return mi_fail(MI_ERR_FORMAT, "%s %s: merge of unknown token \"%.*s\" (not in the vocabulary)",
                       name, where, (int)(ia < 0 ? la : lb), ia < 0 ? a : b);
    char small[512];
    char *cat = la + lb <= sizeof small ? small : malloc(la + lb);
    if (!cat) return mi_fail(MI_ERR_NOMEM, "%s: out of memory", name);
    memcpy(cat, a, la); memcpy(cat + la, b, lb);
    int32_t merged = str_lookup(t, cat, la + lb);
    if (cat != small) free(cat);
    if (merged < 0)
        return mi_fail(MI_ERR_FORMAT, "%s %s: merged token \"%.*s%.*s\" is not in the vocabulary",
                       name, where, (int)la, a, (int)lb, b);
    uint64_t pair = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
    size_t mask = t->merge_cap - 1, i = hash_u64(pair) & mask;
    while (t->merges[i].rank >= 0 && t->merges[i].pair != pair) i = (i + 1) & mask;
    t->merges[i].pair = pair;            /* a repeated pair takes its later rank, as HF does */
    t->merges[i].rank = rank;
    t->merges[i].merged = merged;
    return MI_OK;
}

static mi_status load_merges(mi_bpe_tokenizer *t, const char *text, size_t len, const char *name)
{
    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++) n_lines += text[i] == '\n';
    MI_TRY(merges_reserve(t, n_lines, name));
    int32_t rank = 0;
    size_t line_no = 0, pos = 0;
    while (pos < len) {
        size_t end = pos;
        while (end < len && text[end] != '\n') end++;
        const char *line = text + pos;
        size_t n = end - pos;
        pos = end + 1;
        line_no++;
        if (n && line[n - 1] == '\r') n--;
        if (n == 0) continue;
        if (line_no == 1 && n >= 8 && !memcmp(line, "#version", 8)) continue;
        const char *sp = memchr(line, ' ', n);
        if (!sp || sp == line || sp == line + n - 1 || memchr(sp + 1, ' ', (size_t)(line + n - sp - 1)))
            return mi_fail(MI_ERR_FORMAT, "%s line %zu: expected two tokens separated by one space, got \"%.*s\"",
                           name, line_no, (int)(n > 200 ? 200 : n), line);
        char where[32];
        snprintf(where, sizeof where, "line %zu", line_no);
        MI_TRY(add_merge(t, line, (size_t)(sp - line), sp + 1, n - (size_t)(sp - line) - 1, rank++, name, where));
    }
    return MI_OK;
}

mi_status mi_bpe_from_memory(const char *vocab_json, size_t vocab_len,
                             const char *merges, size_t merges_len,
                             const char *vocab_name, const char *merges_name,
                             mi_bpe_tokenizer **out)
{
    *out = NULL;
    mi_bpe_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory");
    mi_status st = load_vocab(t, vocab_json, vocab_len, vocab_name ? vocab_name : "vocab.json");
    if (st == MI_OK) st = load_merges(t, merges, merges_len, merges_name ? merges_name : "merges.txt");
    if (st != MI_OK) { mi_bpe_free(t); return st; }
    *out = t;
    return MI_OK;
}

mi_status mi_bpe_from_json(const cJSON *vocab, const cJSON *merges, const mi_bpe_options *opt,
                           const char *name, mi_bpe_tokenizer **out)
{
    *out = NULL;
    mi_bpe_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory");
    t->opt = *opt;
    char what[512];
    snprintf(what, sizeof what, "%s: model.vocab", name);
    mi_status st = vocab_from_object(t, vocab, what);
    if (st == MI_OK && opt->unk.len && t->unk_id < 0)
        st = mi_fail(MI_ERR_FORMAT, "%s: model.unk_token \"%.*s\" is not in model.vocab", name,
                     (int)opt->unk.len, opt->unk.text);
    if (st == MI_OK && !cJSON_IsArray(merges))
        st = mi_fail(MI_ERR_FORMAT, "%s: model.merges must be an array", name);
    if (st == MI_OK) st = merges_reserve(t, (size_t)cJSON_GetArraySize(merges), name);
    int32_t rank = 0;
    for (const cJSON *m = st == MI_OK ? merges->child : NULL; m && st == MI_OK; m = m->next, rank++) {
        char where[48];
        snprintf(where, sizeof where, "model.merges[%d]", rank);
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (cJSON_IsString(m)) {            /* "a b" */
            const char *sp = strchr(m->valuestring, ' ');
            if (sp && sp != m->valuestring && sp[1] && !strchr(sp + 1, ' ')) {
                a = m->valuestring; la = (size_t)(sp - a); b = sp + 1; lb = strlen(b);
            }
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child)
                   && cJSON_IsString(m->child->next)) {  /* [a, b] */
            a = m->child->valuestring; la = strlen(a);
            b = m->child->next->valuestring; lb = strlen(b);
        }
        if (!a) {
            char *shown = cJSON_PrintUnformatted(m);
            st = mi_fail(MI_ERR_FORMAT, "%s: %s: expected \"a b\" or [\"a\", \"b\"], got %.200s", name,
                         where, shown ? shown : "?");
            free(shown);
            break;
        }
        st = add_merge(t, a, la, b, lb, rank, name, where);
    }
    if (st != MI_OK) { mi_bpe_free(t); return st; }
    *out = t;
    return MI_OK;
}

const mi_bpe_options *mi_bpe_get_options(const mi_bpe_tokenizer *t) { return &t->opt; }

mi_status mi_bpe_set_template(mi_bpe_tokenizer *t, const int32_t *prefix, int n_prefix,
                              const int32_t *suffix, int n_suffix)
{
    int32_t *tpl = malloc(((size_t)n_prefix + (size_t)n_suffix + 1) * sizeof(int32_t));
    if (!tpl) return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory");
    for (int i = 0; i < n_prefix + n_suffix; i++) {
        int32_t id = i < n_prefix ? prefix[i] : suffix[i - n_prefix];
        if (id < 0 || id >= t->n_tokens || !t->tokens[id].used) {
            free(tpl);
            return mi_fail(MI_ERR_FORMAT, "post_processor: token id %d is not in the vocabulary", id);
        }
        tpl[i] = id;
    }
    free(t->tpl);
    t->tpl = tpl;
    t->n_tpl_prefix = n_prefix;
    t->n_tpl_suffix = n_suffix;
    return MI_OK;
}

void mi_bpe_template(const mi_bpe_tokenizer *t, const int32_t **prefix, int *n_prefix,
                     const int32_t **suffix, int *n_suffix)
{
    *prefix = t->tpl; *n_prefix = t->n_tpl_prefix;
    *suffix = t->tpl ? t->tpl + t->n_tpl_prefix : NULL; *n_suffix = t->n_tpl_suffix;
}

mi_status mi_bpe_load(const char *vocab_path, const char *merges_path, mi_bpe_tokenizer **out)
{
    *out = NULL;
    char *vocab = NULL, *merges = NULL;
    size_t vlen, mlen;
    mi_status st = mi_file_read(vocab_path, &vocab, &vlen);
    if (st == MI_OK) st = mi_file_read(merges_path, &merges, &mlen);
    if (st == MI_OK) st = mi_bpe_from_memory(vocab, vlen, merges, mlen, vocab_path, merges_path, out);
    free(vocab); free(merges);
    return st;
}

void mi_bpe_free(mi_bpe_tokenizer *t)
{
    if (!t) return;
    free(t->tokens); free(t->keys); free(t->raw); free(t->str_map); free(t->merges);
    free(t->specials); free(t->special_text); free(t->tpl);
    free(t);
}

mi_status mi_bpe_add_special(mi_bpe_tokenizer *t, const char *text, size_t len, int32_t id)
{
    return mi_bpe_add_token(t, text, len, id, 1);
}

mi_status mi_bpe_add_token(mi_bpe_tokenizer *t, const char *text, size_t len, int32_t id, int special)
{
    if (len == 0) return mi_fail(MI_ERR_VALUE, "special token: empty text");
    if (id < 0) return mi_fail(MI_ERR_VALUE, "special token \"%.*s\": negative id %d", (int)len, text, id);
    if (id >= 2 * t->n_tokens + 65536)
        return mi_fail(MI_ERR_VALUE, "special token \"%.*s\": id %d is far past the vocabulary size %d",
                       (int)len, text, id, t->n_tokens);
    if (id < t->n_tokens && t->tokens[id].used) {
        const token_entry *e = &t->tokens[id];
        if (e->key_len != len || memcmp(t->keys + e->key_off, text, len))
            return mi_fail(MI_ERR_VALUE, "special token \"%.*s\": id %d already names token \"%.*s\"",
                           (int)len, text, id, (int)e->key_len, t->keys + e->key_off);
    }
    int is_new = !(id < t->n_tokens && t->tokens[id].used);
    MI_TRY(ensure_tokens(t, id));
    token_entry *e = &t->tokens[id];
    if (is_new) {
        MI_TRY(append_bytes(&t->keys, &t->keys_len, &t->keys_cap, text, len, &e->key_off));
        e = &t->tokens[id];
        e->key_len = (uint32_t)len;
        e->used = 1;
    }
    if (t->opt.dec_chars) {
        MI_TRY(set_decoded_text(t, id, text, len));
    } else {
        /* a byte-level added token decodes to its literal text, never through bytes_to_unicode */
        MI_TRY(append_bytes(&t->raw, &t->raw_len, &t->raw_cap, text, len, &e->raw_off));
        e = &t->tokens[id];
        e->raw_len = (uint32_t)len;
        e->fallback = 0;
    }
    e = &t->tokens[id];
    if (special) e->special = 1;
    if (!e->added) {
        e->added = 1;
        if (grow((void **)&t->specials, &t->specials_cap, t->n_specials + 1, sizeof(special_entry)))
            return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory");
        special_entry *s = &t->specials[t->n_specials++];
        MI_TRY(append_bytes(&t->special_text, &t->special_text_len, &t->special_text_cap, text, len, &s->off));
        s->len = (uint32_t)len;
        s->id = id;
        t->special_first[(unsigned char)text[0]] = 1;
    }
    if (is_new || t->str_count * 2 + 2 > t->str_cap) return str_map_rebuild(t);
    return MI_OK;
}

int32_t mi_bpe_vocab_size(const mi_bpe_tokenizer *t) { return t->n_tokens; }

int32_t mi_bpe_token_to_id(const mi_bpe_tokenizer *t, const char *token, size_t len)
{
    return str_lookup(t, token, len);
}

const char *mi_bpe_id_to_token(const mi_bpe_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_tokens || !t->tokens[id].used) return NULL;
    *len = t->tokens[id].key_len;
    return t->keys + t->tokens[id].key_off;
}

int mi_bpe_is_special(const mi_bpe_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_tokens && t->tokens[id].used && t->tokens[id].special;
}

/* ---------------------------------------------------------------- scratch and word cache */

#define CACHE_SLOTS      (1u << 17)   /* power of two; 64 bytes each */
#define CACHE_KEY_BYTES  22           /* pieces up to this long are cached ... */
#define CACHE_MAX_IDS    9            /* ... when they merge into at most this many ids */

/* One cache line per entry: a lookup touches one line (key and ids inline). */
typedef struct {
    uint32_t hash;
    uint8_t key_len, n_ids;           /* n_ids 0: empty slot */
    char key[CACHE_KEY_BYTES];
    int32_t ids[CACHE_MAX_IDS];
} cache_slot;

struct mi_bpe_scratch {
    cache_slot *slots; size_t used;
    /* merge work space for one piece */
    int32_t *sym, *prev, *next; size_t sym_cap;
    int64_t *heap; size_t heap_len, heap_cap;   /* (rank << 32) | pos : min first */
};

mi_bpe_scratch *mi_bpe_scratch_new(void)
{
    mi_bpe_scratch *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->slots = mi_calloc(CACHE_SLOTS * sizeof(cache_slot));
    if (!s->slots) { free(s); return NULL; }
    return s;
}

void mi_bpe_scratch_free(mi_bpe_scratch *s)
{
    if (!s) return;
    mi_free(s->slots);
    free(s->sym); free(s->prev); free(s->next); free(s->heap);
    free(s);
}

/* Slot for the piece: a hit (n_ids > 0) or the empty slot where it belongs. */
static cache_slot *cache_find(mi_bpe_scratch *s, const unsigned char *p, size_t n, uint32_t h)
{
    size_t mask = CACHE_SLOTS - 1, i = h & mask;
    for (;; i = (i + 1) & mask) {
        cache_slot *c = &s->slots[i];
        if (c->n_ids == 0) return c;
        if (c->hash == h && c->key_len == n && !memcmp(c->key, p, n)) return c;
    }
}

/* ---------------------------------------------------------------- BPE on one piece */

static void heap_push(mi_bpe_scratch *s, int64_t v)
{
    int64_t *h = s->heap;
    size_t i = s->heap_len++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p]; i = p;
    }
    h[i] = v;
}

static int64_t heap_pop(mi_bpe_scratch *s)
{
    int64_t *h = s->heap, top = h[0], v = h[--s->heap_len];
    size_t i = 0, n = s->heap_len;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c]; i = c;
    }
    if (n) h[i] = v;
    return top;
}

static void push_pair(const mi_bpe_tokenizer *t, mi_bpe_scratch *s, int32_t pos)
{
    const merge_slot *m = merge_lookup(t, s->sym[pos], s->sym[s->next[pos]]);
    if (m) heap_push(s, ((int64_t)m->rank << 32) | (uint32_t)pos);
}

/* The symbols a piece starts from (at most n). Byte-level: one per byte. SentencePiece-
 * style: one per UTF-8 character in the vocabulary; an unknown character becomes its
 * <0xNN> byte tokens (byte fallback), else unk (consecutive ones fused into one with
 * fuse_unk), else nothing, as the reference BPE model does. */
static mi_status initial_symbols(const mi_bpe_tokenizer *t, const unsigned char *p, size_t n,
                                 int32_t *sym, size_t *count)
{
    size_t m = 0;
    if (!t->opt.chars) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = t->byte_id[p[i]];
            if (id < 0)
                return mi_fail(MI_ERR_KEY, "tokenizer: byte 0x%02x has no token in the vocabulary", p[i]);
            sym[m++] = id;
        }
        *count = m;
        return MI_OK;
    }
    int prev_unk = 0;
    for (size_t i = 0; i < n; ) {
        uint32_t cp;
        size_t l = utf8_next(p + i, n - i, &cp);
        int32_t id = l == 1 ? t->byte_id[p[i]] : str_lookup(t, (const char *)p + i, l);
        if (id >= 0) {
            sym[m++] = id;
            prev_unk = 0;
        } else {
            int fallback = t->opt.byte_fallback;
            for (size_t k = 0; k < l && fallback; k++) fallback = t->fallback_id[p[i + k]] >= 0;
            if (fallback) {
                for (size_t k = 0; k < l; k++) sym[m++] = t->fallback_id[p[i + k]];
                prev_unk = 0;
            } else if (t->unk_id >= 0) {
                if (!(t->opt.fuse_unk && prev_unk)) sym[m++] = t->unk_id;
                prev_unk = 1;
            }
        }
        i += l;
    }
    *count = m;
    return MI_OK;
}

/* The id of the whole piece as one vocabulary token, or -1 (ignore_merges). */
static int32_t whole_piece_id(const mi_bpe_tokenizer *t, const unsigned char *p, size_t n)
{
    if (n == 0) return -1;
    if (t->opt.chars) return str_lookup(t, (const char *)p, n);
    char small[256], *key = 2 * n <= sizeof small ? small : malloc(2 * n);
    if (!key) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += utf8_put(t->byte_char[p[i]], key + k);
    int32_t id = str_lookup(t, key, k);
    if (key != small) free(key);
    return id;
}

/* Merge the bytes of one piece; appends its ids to out. Lowest rank first, leftmost
 * first among equal ranks (the order of Hugging Face's BPE). */
static mi_status bpe_piece(const mi_bpe_tokenizer *t, mi_bpe_scratch *s,
                           const unsigned char *p, size_t n, mi_bpe_ids *out)
{
    if (n > INT32_MAX / 4) return mi_fail(MI_ERR_VALUE, "tokenizer: a single word of %zu bytes is too long", n);
    if (n > s->sym_cap) {
        size_t cap = n < 256 ? 256 : 2 * n;
        int32_t *a = realloc(s->sym, cap * sizeof(int32_t));
        if (a) s->sym = a;
        int32_t *b = realloc(s->prev, cap * sizeof(int32_t));
        if (b) s->prev = b;
        int32_t *c = realloc(s->next, cap * sizeof(int32_t));
        if (c) s->next = c;
        if (!a || !b || !c)
            return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory for a word of %zu bytes", n);
        s->sym_cap = cap;
    }
    if (grow((void **)&s->heap, &s->heap_cap, 2 * n + 2, sizeof(int64_t)))
        return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory for a word of %zu bytes", n);
    MI_TRY(initial_symbols(t, p, n, s->sym, &n));
    if (n == 0) return MI_OK;
    for (size_t i = 0; i < n; i++) {
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    s->heap_len = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, s, (int32_t)i);
    /* n-1 initial entries; each merge pops one and pushes at most two, and there are at
     * most n-1 merges, so the heap never holds more than 2n-2 entries */
    while (s->heap_len) {
        int64_t top = heap_pop(s);
        int32_t pos = (int32_t)(uint32_t)top, rank = (int32_t)(top >> 32);
        if (s->sym[pos] < 0 || s->next[pos] < 0) continue;
        int32_t nx = s->next[pos];
        const merge_slot *m = merge_lookup(t, s->sym[pos], s->sym[nx]);
        if (!m || m->rank != rank) continue;                     /* stale entry */
        s->sym[pos] = m->merged;
        s->sym[nx] = -1;
        s->next[pos] = s->next[nx];
        if (s->next[nx] >= 0) s->prev[s->next[nx]] = pos;
        if (s->prev[pos] >= 0) push_pair(t, s, s->prev[pos]);
        if (s->next[pos] >= 0) push_pair(t, s, pos);
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) MI_TRY(ids_push(out, s->sym[i]));
    return MI_OK;
}

/* Reference for bpe_piece: GPT-2's original loop, O(n^2) per piece and uncached. Take the
 * adjacent pair of lowest rank, merge every occurrence of it left to right, repeat.
 * Same result as the heap for merge tables written by BPE training (ranks increase with
 * each token's creation); tests and the fuzz target compare the two. */
static mi_status bpe_piece_reference(const mi_bpe_tokenizer *t, const unsigned char *p, size_t n,
                                     mi_bpe_ids *out)
{
    int32_t *w = malloc((n ? n : 1) * sizeof(int32_t));
    if (!w) return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory for a word of %zu bytes", n);
    size_t len;
    mi_status st0 = initial_symbols(t, p, n, w, &len);
    if (st0 != MI_OK) { free(w); return st0; }
    for (;;) {
        const merge_slot *best = NULL;
        for (size_t i = 0; i + 1 < len; i++) {
            const merge_slot *m = merge_lookup(t, w[i], w[i + 1]);
            if (m && (!best || m->rank < best->rank)) best = m;
        }
        if (!best) break;
        int32_t a = (int32_t)(best->pair >> 32), b = (int32_t)(uint32_t)best->pair;
        size_t k = 0;
        for (size_t i = 0; i < len; ) {
            if (i + 1 < len && w[i] == a && w[i + 1] == b) { w[k++] = best->merged; i += 2; }
            else w[k++] = w[i++];
        }
        len = k;
    }
    mi_status st = MI_OK;
    for (size_t i = 0; i < len && st == MI_OK; i++) st = ids_push(out, w[i]);
    free(w);
    return st;
}

static mi_status encode_piece(const mi_bpe_tokenizer *t, mi_bpe_scratch *s,
                              const unsigned char *p, size_t n, mi_bpe_ids *out)
{
    if (n == 1 && t->byte_id[p[0]] >= 0) return ids_push(out, t->byte_id[p[0]]);
    if (n > CACHE_KEY_BYTES) return bpe_piece(t, s, p, n, out);
    uint32_t h = (uint32_t)hash_bytes((const char *)p, n);
    cache_slot *c = cache_find(s, p, n, h);
    if (c->n_ids) {
        if (out->len + c->n_ids > out->cap &&
            grow((void **)&out->data, &out->cap, out->len + c->n_ids, sizeof(int32_t)))
            return mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory");
        memcpy(out->data + out->len, c->ids, c->n_ids * sizeof(int32_t));
        out->len += c->n_ids;
        return MI_OK;
    }
    size_t before = out->len;
    MI_TRY(bpe_piece(t, s, p, n, out));
    size_t k = out->len - before;
    if (k > CACHE_MAX_IDS) return MI_OK;
    if (s->used * 2 >= CACHE_SLOTS) {                 /* half full: start afresh */
        memset(s->slots, 0, CACHE_SLOTS * sizeof(cache_slot));
        s->used = 0;
        c = cache_find(s, p, n, h);
    }
    c->hash = h; c->key_len = (uint8_t)n; c->n_ids = (uint8_t)k;
    memcpy(c->key, p, n);
    memcpy(c->ids, out->data + before, k * sizeof(int32_t));
    s->used++;
    return MI_OK;
}

/* ---------------------------------------------------------------- pre-tokenisation */

static int class_at(const unsigned char *s, size_t n, size_t *len)
{
    if (s[0] < 0x80) { *len = 1; return mi_uclass(s[0]); }     /* ASCII: no decoding */
    uint32_t cp;
    *len = utf8_next(s, n, &cp);
    return cp == 0xFFFFFFFFu ? MI_UC_OTHER : mi_uclass(cp);
}

/* Length of the run of class k starting at s[0..n). */
static size_t run_of(const unsigned char *s, size_t n, int k)
{
    size_t i = 0, l;
    while (i < n && class_at(s + i, n - i, &l) == k) i += l;
    return i;
}

/* A piece of m bytes at q: BPE it into out, or (ends != NULL, for pre-tokeniser tests)
 * record where it ends, as a byte offset from base. */
static mi_status emit_piece(const mi_bpe_tokenizer *t, mi_bpe_scratch *s, const unsigned char *base,
                            const unsigned char *q, size_t m, mi_bpe_ids *out, mi_bpe_ids *ends)
{
    if (ends) return ids_push(ends, (int32_t)(q + m - base));
    if (t->opt.ignore_merges) {
        int32_t id = whole_piece_id(t, q, m);
        if (id >= 0) return ids_push(out, id);
    }
    if (!s) return bpe_piece_reference(t, q, m, out);           /* MI_BPE_REFERENCE */
    return encode_piece(t, s, q, m, out);
}

/* The GPT-2 pattern, alternative by alternative, over one stretch without special tokens. */
static mi_status encode_gpt2(const mi_bpe_tokenizer *t, mi_bpe_scratch *s, const unsigned char *base,
                              const unsigned char *p, size_t n, mi_bpe_ids *out, mi_bpe_ids *ends)
{
    size_t i = 0;
    while (i < n) {
        const unsigned char *q = p + i;
        size_t rest = n - i, len, m;
        /* 's|'t|'re|'ve|'m|'ll|'d  (lower case only, as in the pattern) */
        if (q[0] == '\'' && rest >= 2) {
            unsigned char a = q[1], b = rest >= 3 ? q[2] : 0;
            m = 0;
            if (a == 's' || a == 't' || a == 'm' || a == 'd') m = 2;
            else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) m = 3;
            if (m) { MI_TRY(emit_piece(t, s, base, q, m, out, ends)); i += m; continue; }
        }
        int k = class_at(q, rest, &len);
        if (q[0] == ' ' && rest > 1) {
            /*  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+  with the optional leading space */
            size_t l2;
            int k2 = class_at(q + 1, rest - 1, &l2);
            if (k2 != MI_UC_SPACE) {
                m = 1 + run_of(q + 1, rest - 1, k2);
                MI_TRY(emit_piece(t, s, base, q, m, out, ends)); i += m; continue;
            }
        }
        if (k != MI_UC_SPACE) {
            m = run_of(q, rest, k);
            MI_TRY(emit_piece(t, s, base, q, m, out, ends)); i += m; continue;
        }
        /* \s+(?!\S) | \s+ : a whitespace run followed by text leaves its last character to
         * start the next piece (so " word" keeps its space); at the end it is taken whole */
        size_t j = 0, last = 0, cps = 0;
        while (j < rest) {
            size_t l;
            if (class_at(q + j, rest - j, &l) != MI_UC_SPACE) break;
            last = j; j += l; cps++;
        }
        m = (j == rest || cps == 1) ? j : last;
        MI_TRY(emit_piece(t, s, base, q, m, out, ends));
        i += m;
    }
    return MI_OK;
}

static int is_newline(unsigned char c) { return c == '\r' || c == '\n'; }

/* The Llama 3 pattern (max_digits 3) or Qwen2's (max_digits 1):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}
 *   | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * alternative by alternative (first match wins, quantifiers greedy), over the same
 * Unicode classes as the GPT-2 pattern. */
static mi_status encode_split_regex(const mi_bpe_tokenizer *t, mi_bpe_scratch *s, const unsigned char *base,
                                    const unsigned char *p, size_t n, int max_digits, mi_bpe_ids *out,
                                    mi_bpe_ids *ends)
{
    size_t i = 0;
    while (i < n) {
        const unsigned char *q = p + i;
        size_t rest = n - i, len, l2, m = 0;
        /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
        if (q[0] == '\'' && rest >= 2) {
            unsigned char a = (unsigned char)(q[1] | 0x20), b = rest >= 3 ? (unsigned char)(q[2] | 0x20) : 0;
            if (a == 's' || a == 't' || a == 'm' || a == 'd') m = 2;
            else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) m = 3;
        }
        int k = class_at(q, rest, &len);
        /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        if (!m && k == MI_UC_LETTER) m = run_of(q, rest, MI_UC_LETTER);
        if (!m && k != MI_UC_NUMBER && !is_newline(q[0]) && len < rest
            && class_at(q + len, rest - len, &l2) == MI_UC_LETTER)
            m = len + run_of(q + len, rest - len, MI_UC_LETTER);
        /* \p{N}{1,max_digits} */
        if (!m && k == MI_UC_NUMBER) {
            int d = 0;
            while (m < rest && d < max_digits && class_at(q + m, rest - m, &l2) == MI_UC_NUMBER) { m += l2; d++; }
        }
        /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
        if (!m) {
            size_t j = (q[0] == ' ' && rest > 1 && class_at(q + 1, rest - 1, &l2) == MI_UC_OTHER) ? 1 : 0;
            if (class_at(q + j, rest - j, &l2) == MI_UC_OTHER) {
                j += run_of(q + j, rest - j, MI_UC_OTHER);
                while (j < rest && is_newline(q[j])) j++;
                m = j;
            }
        }
        if (!m) {   /* k is whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+ */
            size_t j = 0, last = 0, cps = 0, after_nl = 0;
            while (j < rest) {
                size_t l;
                if (class_at(q + j, rest - j, &l) != MI_UC_SPACE) break;
                last = j; j += l; cps++;
                if (is_newline(q[last])) after_nl = j;     /* end of the last newline so far */
            }
            if (after_nl) m = after_nl;
            else m = (j == rest || cps == 1) ? j : last;
        }
        MI_TRY(emit_piece(t, s, base, q, m, out, ends));
        i += m;
    }
    return MI_OK;
}

/* Metaspace split: a piece starts at every replacement character (merged with what follows). */
static mi_status encode_metaspace_split(const mi_bpe_tokenizer *t, mi_bpe_scratch *s, const unsigned char *base,
                                        const unsigned char *p, size_t n, mi_bpe_ids *out, mi_bpe_ids *ends)
{
    const mi_bpe_str *r = &t->opt.meta_repl;
    size_t start = 0;
    for (size_t i = 1; i + r->len <= n; i++)
        if (!memcmp(p + i, r->text, r->len)) {
            MI_TRY(emit_piece(t, s, base, p + start, i - start, out, ends));
            start = i;
        }
    return n > start ? emit_piece(t, s, base, p + start, n - start, out, ends) : MI_OK;
}

/* One stretch, already normalised, through the pre-tokeniser. */
static mi_status encode_plain(const mi_bpe_tokenizer *t, mi_bpe_scratch *s, const unsigned char *base,
                              const unsigned char *p, size_t n, mi_bpe_ids *out, mi_bpe_ids *ends)
{
    switch (t->opt.pretok) {
    case MI_PRETOK_LLAMA3: return encode_split_regex(t, s, base, p, n, 3, out, ends);
    case MI_PRETOK_QWEN2: return encode_split_regex(t, s, base, p, n, 1, out, ends);
    case MI_PRETOK_WHOLE: return n ? emit_piece(t, s, base, p, n, out, ends) : MI_OK;
    case MI_PRETOK_METASPACE: return encode_metaspace_split(t, s, base, p, n, out, ends);
    default: return encode_gpt2(t, s, base, p, n, out, ends);
    }
}

/* A growable byte string for the normalised stretch. */
typedef struct { char *p; size_t n, cap; } text_buf;

static mi_status buf_put(text_buf *b, const char *s, size_t n, const mi_bpe_str *from, const mi_bpe_str *to)
{
    static const mi_bpe_str none = {{0}, 0};
    return append_replaced(&b->p, &b->n, &b->cap, s, n, from ? from : &none, to ? to : &none);
}

/* Every `from` of b replaced by `to` (from NULL: `to` put in front). */
static mi_status buf_rewrite(text_buf *b, const mi_bpe_str *from, const mi_bpe_str *to)
{
    text_buf nb = {0};
    mi_status st = from ? MI_OK : buf_put(&nb, to->text, to->len, NULL, NULL);
    if (st == MI_OK) st = buf_put(&nb, b->p ? b->p : "", b->n, from, to);
    if (st != MI_OK) { free(nb.p); return st; }
    free(b->p);
    *b = nb;
    return MI_OK;
}

/* The stretch after the normalizer steps, Metaspace (spaces to its replacement, and its
 * prefix) and ByteLevel's prefix space, in a new buffer (*out: free it), or *out NULL
 * when the pipeline changes nothing. */
static mi_status normalize_stretch(const mi_bpe_tokenizer *t, const unsigned char *p, size_t n, int first,
                                   int flags, char **out, size_t *out_n)
{
    const mi_bpe_options *o = &t->opt;
    const int prefix_space = o->prefix_space || (flags & MI_BPE_PREFIX_SPACE);
    *out = NULL;
    if (!o->n_norm && !o->meta && !(prefix_space && p[0] != ' ')) return MI_OK;
    text_buf b = {0};
    mi_status st = buf_put(&b, (const char *)p, n, NULL, NULL);
    for (int k = 0; k < o->n_norm && st == MI_OK; k++) {
        const mi_bpe_norm_step *step = &o->norm[k];
        if (step->prepend && b.n == 0) continue;           /* Prepend leaves "" as it is */
        st = buf_rewrite(&b, step->prepend ? NULL : &step->from, &step->to);
    }
    if (st == MI_OK && o->meta) {
        const mi_bpe_str space = {{' '}, 1};
        const int had_text = b.n > 0;
        st = buf_rewrite(&b, &space, &o->meta_repl);
        if (st == MI_OK && had_text && (o->meta_prepend == 2 || (o->meta_prepend == 1 && first))
            && !(b.n >= o->meta_repl.len && !memcmp(b.p, o->meta_repl.text, o->meta_repl.len)))
            st = buf_rewrite(&b, NULL, &o->meta_repl);
    }
    if (st == MI_OK && prefix_space && b.n && b.p[0] != ' ') {
        const mi_bpe_str space = {{' '}, 1};
        st = buf_rewrite(&b, NULL, &space);
    }
    if (st != MI_OK) { free(b.p); return st; }
    *out = b.p ? b.p : calloc(1, 1);
    *out_n = b.n;
    return *out ? MI_OK : mi_fail(MI_ERR_NOMEM, "tokenizer: out of memory");
}

/* One stretch between added tokens: normalised, then pre-tokenised. `first`: the stretch
 * starts the text (Metaspace's prepend_scheme "first"). Pre-tokeniser tests (ends) see
 * the stretch as it is. */
static mi_status encode_stretch(const mi_bpe_tokenizer *t, mi_bpe_scratch *s, const unsigned char *base,
                                const unsigned char *p, size_t n, int flags, mi_bpe_ids *out, mi_bpe_ids *ends)
{
    if (ends || n == 0) return encode_plain(t, s, base, p, n, out, ends);
    char *buf;
    size_t len;
    MI_TRY(normalize_stretch(t, p, n, p == base, flags, &buf, &len));
    if (!buf) return encode_plain(t, s, base, p, n, out, NULL);
    mi_status st = encode_plain(t, s, (const unsigned char *)buf, (const unsigned char *)buf, len, out, NULL);
    free(buf);
    return st;
}

static mi_status encode_or_split(const mi_bpe_tokenizer *t, mi_bpe_scratch *s, const char *text, size_t len,
                                 int flags, mi_bpe_ids *out, mi_bpe_ids *ends)
{
    const unsigned char *p = (const unsigned char *)text;
    if (!(flags & MI_BPE_SPLIT_SPECIAL) || t->n_specials == 0)
        return encode_stretch(t, s, p, p, len, flags, out, ends);
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (!t->special_first[p[i]]) continue;
        const special_entry *best = NULL;           /* leftmost, then longest */
        for (size_t k = 0; k < t->n_specials; k++) {
            const special_entry *e = &t->specials[k];
            if (e->len <= len - i && (!best || e->len > best->len) &&
                !memcmp(t->special_text + e->off, p + i, e->len))
                best = e;
        }
        if (!best) continue;
        MI_TRY(encode_stretch(t, s, p, p + start, i - start, flags, out, ends));
        MI_TRY(ends ? ids_push(ends, (int32_t)(i + best->len)) : ids_push(out, best->id));
        i += best->len;
        start = i;
        i--;                                         /* loop increment */
    }
    return encode_stretch(t, s, p, p + start, len - start, flags, out, ends);
}

mi_status mi_bpe_encode(const mi_bpe_tokenizer *t, mi_bpe_scratch *s,
                        const char *text, size_t len, int flags, mi_bpe_ids *out)
{
    if (flags & MI_BPE_REFERENCE) s = NULL;           /* no scratch: the plain reference path */
    return encode_or_split(t, s, text, len, flags, out, NULL);
}

mi_status mi_bpe_pretokenize(const mi_bpe_tokenizer *t, const char *text, size_t len,
                             int split_special, mi_bpe_ids *ends)
{
    if (len > INT32_MAX) return mi_fail(MI_ERR_VALUE, "pretokenize: text of %zu bytes is too long", len);
    return encode_or_split(t, NULL, text, len, split_special ? MI_BPE_SPLIT_SPECIAL : 0, NULL, ends);
}

/* ---------------------------------------------------------------- decoding */

/* 1 if s[0..n) is valid UTF-8. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; ) {
        uint32_t cp;
        size_t l = utf8_next(s + i, n - i, &cp);
        if (cp == 0xFFFFFFFFu) return 0;
        i += l;
    }
    return 1;
}

/* ByteFallback's rule for the run of <0xNN> bytes at out[from..]: kept when it is valid
 * UTF-8, else one U+FFFD per byte. */
static mi_status flush_fallback(mi_bpe_bytes *out, size_t from)
{
    size_t n = out->len - from;
    if (n == 0 || valid_utf8((const unsigned char *)out->data + from, n)) return MI_OK;
    if (grow((void **)&out->data, &out->cap, from + 3 * n + 1, 1)) return mi_fail(MI_ERR_NOMEM, "decode: out of memory");
    for (size_t i = 0; i < n; i++) memcpy(out->data + from + 3 * i, "\xEF\xBF\xBD", 3);
    out->len = from + 3 * n;
    return MI_OK;
}

mi_status mi_bpe_decode(const mi_bpe_tokenizer *t, const int32_t *ids, size_t n,
                        int skip_special, mi_bpe_bytes *out)
{
    const size_t start = out->len;
    size_t run = SIZE_MAX;                 /* where the pending <0xNN> bytes begin */
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_tokens || !t->tokens[id].used)
            return mi_fail(MI_ERR_INDEX, "decode: token id %d (position %zu) is not in the vocabulary (ids 0..%d)",
                           id, i, t->n_tokens - 1);
        const token_entry *e = &t->tokens[id];
        if (skip_special && e->special) continue;
        if (grow((void **)&out->data, &out->cap, out->len + e->raw_len + 1, 1))
            return mi_fail(MI_ERR_NOMEM, "decode: out of memory");
        if (e->fallback) {
            if (run == SIZE_MAX) run = out->len;
            out->data[out->len++] = (char)e->fallback_byte;
            first = 0;
            continue;
        }
        if (run != SIZE_MAX) { MI_TRY(flush_fallback(out, run)); run = SIZE_MAX; }
        if (first && t->opt.dec_meta_first) {
            /* Metaspace's decoder drops every replacement character of the first token */
            static const mi_bpe_str nothing = {{0}, 0};
            MI_TRY(append_replaced(&out->data, &out->len, &out->cap, t->keys + e->key_off, e->key_len,
                                   &t->opt.dec_from, &nothing));
        } else {
            memcpy(out->data + out->len, t->raw + e->raw_off, e->raw_len);
            out->len += e->raw_len;
        }
        first = 0;
    }
    if (run != SIZE_MAX) MI_TRY(flush_fallback(out, run));
    /* Strip decoder (after Fuse: on the whole text) */
    size_t cut = 0;
    while (cut < (size_t)t->opt.dec_strip_start && start + cut < out->len && out->data[start + cut] == ' ') cut++;
    if (cut) { memmove(out->data + start, out->data + start + cut, out->len - start - cut); out->len -= cut; }
    for (int k = 0; k < t->opt.dec_strip_stop && out->len > start && out->data[out->len - 1] == ' '; k++) out->len--;
    return MI_OK;
}
