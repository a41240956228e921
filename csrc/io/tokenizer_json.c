/* tokenizer_json.c - tokenizer.json -> mi_bpe_options + vocabulary (contract in
 * tokenizer_json.h). Each section of the file has one reader; every field it
 * does not know is refused by name. */
#include "io/tokenizer_json.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/file.h"

/* The pre-tokeniser regexes the engine implements (bpe_tokenizer.c), as the files write them. */
static const struct { const char *regex; mi_pretok pretok; } known_regexes[] = {
    {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", MI_PRETOK_GPT2},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
     "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", MI_PRETOK_LLAMA3},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
     "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", MI_PRETOK_QWEN2},
};

typedef struct {
    const char *name;        /* the file, for messages */
    mi_bpe_options opt;
    int byte_level;          /* a ByteLevel pre-tokeniser was seen */
    int split_seen;
} reader;

static const char *type_of(const cJSON *node)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(node, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* Optional boolean field: *out keeps its default when absent or null. */
static mi_status get_bool(const reader *r, const cJSON *node, const char *field, const char *where, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(node, field);
    if (!v || cJSON_IsNull(v)) return MI_OK;
    if (!cJSON_IsBool(v))
        return mi_fail(MI_ERR_FORMAT, "%s: %s.%s must be true or false", r->name, where, field);
    *out = cJSON_IsTrue(v);
    return MI_OK;
}

static mi_status put_str(const reader *r, const char *s, const char *where, mi_bpe_str *out)
{
    size_t n = strlen(s);
    if (n >= MI_BPE_STR)
        return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s \"%s\" is longer than %d bytes", r->name, where, s, MI_BPE_STR - 1);
    memcpy(out->text, s, n);
    out->len = (uint8_t)n;
    return MI_OK;
}

/* A required string field. */
static mi_status get_str(const reader *r, const cJSON *node, const char *field, const char *where, mi_bpe_str *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(node, field);
    if (!cJSON_IsString(v))
        return mi_fail(MI_ERR_FORMAT, "%s: %s.%s must be a string", r->name, where, field);
    char what[96];
    snprintf(what, sizeof what, "%s.%s", where, field);
    return put_str(r, v->valuestring, what, out);
}

/* {"String": s} patterns only; regex patterns are refused. */
static mi_status get_pattern(const reader *r, const cJSON *node, const char *where, mi_bpe_str *out)
{
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(node, "pattern");
    const cJSON *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
    if (cJSON_IsString(str)) {
        char what[96];
        snprintf(what, sizeof what, "%s.pattern", where);
        return put_str(r, str->valuestring, what, out);
    }
    if (cJSON_GetObjectItemCaseSensitive(pat, "Regex"))
        return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: Replace with a regex pattern is not supported", r->name, where);
    return mi_fail(MI_ERR_FORMAT, "%s: %s.pattern must be {\"String\": ...}", r->name, where);
}

/* ---- normalizer --------------------------------------------------------- */

static mi_status read_normalizer(reader *r, const cJSON *n, const char *where)
{
    if (!n || cJSON_IsNull(n)) return MI_OK;
    const char *type = type_of(n);
    if (!type) return mi_fail(MI_ERR_FORMAT, "%s: %s has no \"type\"", r->name, where);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list)) return mi_fail(MI_ERR_FORMAT, "%s: %s.normalizers must be an array", r->name, where);
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            char sub[64];
            snprintf(sub, sizeof sub, "%s.normalizers[%d]", where, i);
            MI_TRY(read_normalizer(r, c, sub));
        }
        return MI_OK;
    }
    if (!strcmp(type, "NFC")) {
        if (r->opt.n_norm)
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: NFC after other normalizer steps is not supported",
                           r->name, where);
        r->opt.nfc = 1;
        return MI_OK;
    }
    if (!strcmp(type, "Prepend") || !strcmp(type, "Replace")) {
        if (r->opt.n_norm == (int)(sizeof r->opt.norm / sizeof r->opt.norm[0]))
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: too many normalizer steps", r->name, where);
        mi_bpe_norm_step *step = &r->opt.norm[r->opt.n_norm++];
        memset(step, 0, sizeof *step);
        if (!strcmp(type, "Prepend")) {
            step->prepend = 1;
            return get_str(r, n, "prepend", where, &step->to);
        }
        MI_TRY(get_pattern(r, n, where, &step->from));
        if (step->from.len == 0) return mi_fail(MI_ERR_FORMAT, "%s: %s.pattern is empty", r->name, where);
        return get_str(r, n, "content", where, &step->to);
    }
    return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: normalizer type \"%s\" is not supported (NFC, Prepend, "
                   "Replace, Sequence are)", r->name, where, type);
}

/* ---- pre-tokenizer ------------------------------------------------------ */

static mi_status read_pre_tokenizer(reader *r, const cJSON *p, const char *where)
{
    if (!p || cJSON_IsNull(p)) return MI_OK;
    const char *type = type_of(p);
    if (!type) return mi_fail(MI_ERR_FORMAT, "%s: %s has no \"type\"", r->name, where);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return mi_fail(MI_ERR_FORMAT, "%s: %s.pretokenizers must be an array", r->name, where);
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            char sub[64];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", where, i);
            MI_TRY(read_pre_tokenizer(r, c, sub));
        }
        return MI_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        int use_regex = 1;
        MI_TRY(get_bool(r, p, "add_prefix_space", where, &r->opt.prefix_space));
        MI_TRY(get_bool(r, p, "use_regex", where, &use_regex));
        if (use_regex) {
            if (r->split_seen)
                return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: a regex ByteLevel after a Split is not supported",
                               r->name, where);
            r->opt.pretok = MI_PRETOK_GPT2;
            r->split_seen = 1;
        }
        r->byte_level = 1;
        return MI_OK;
    }
    if (!strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        int invert = 0;
        MI_TRY(get_bool(r, p, "invert", where, &invert));
        if (!cJSON_IsString(re))
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: Split needs a {\"Regex\": ...} pattern", r->name, where);
        if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated") || invert)
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: only Split with behavior \"Isolated\" and invert false "
                           "is supported", r->name, where);
        if (r->split_seen || r->byte_level)
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: a second splitting pre-tokenizer is not supported",
                           r->name, where);
        for (size_t i = 0; i < sizeof known_regexes / sizeof known_regexes[0]; i++)
            if (!strcmp(re->valuestring, known_regexes[i].regex)) {
                r->opt.pretok = known_regexes[i].pretok;
                r->split_seen = 1;
                return MI_OK;
            }
        return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: Split regex %.300s is not one of the GPT-2, Llama 3 or Qwen2 "
                       "patterns this tokenizer implements", r->name, where, re->valuestring);
    }
    if (!strcmp(type, "Metaspace")) {
        if (r->split_seen || r->byte_level)
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: Metaspace after another pre-tokenizer is not supported",
                           r->name, where);
        MI_TRY(get_str(r, p, "replacement", where, &r->opt.meta_repl));
        const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(p, "prepend_scheme");
        int add_prefix = 1, split = 1;
        MI_TRY(get_bool(r, p, "add_prefix_space", where, &add_prefix));   /* files before prepend_scheme */
        MI_TRY(get_bool(r, p, "split", where, &split));
        if (cJSON_IsString(scheme)) {
            const char *s = scheme->valuestring;
            r->opt.meta_prepend = !strcmp(s, "always") ? 2 : !strcmp(s, "first") ? 1 : !strcmp(s, "never") ? 0 : -1;
            if (r->opt.meta_prepend < 0)
                return mi_fail(MI_ERR_FORMAT, "%s: %s.prepend_scheme \"%s\" is not always, first or never",
                               r->name, where, s);
        } else {
            r->opt.meta_prepend = add_prefix ? 2 : 0;
        }
        r->opt.meta = 1;
        r->opt.pretok = split ? MI_PRETOK_METASPACE : MI_PRETOK_WHOLE;
        r->split_seen = 1;
        return MI_OK;
    }
    return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: pre_tokenizer type \"%s\" is not supported (ByteLevel, Split, "
                   "Metaspace, Sequence are)", r->name, where, type);
}

/* ---- decoder ------------------------------------------------------------ */

static mi_status read_decoder(reader *r, const cJSON *d, const char *where, int *fused)
{
    if (!d || cJSON_IsNull(d)) return MI_OK;
    const char *type = type_of(d);
    if (!type) return mi_fail(MI_ERR_FORMAT, "%s: %s has no \"type\"", r->name, where);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        if (!cJSON_IsArray(list)) return mi_fail(MI_ERR_FORMAT, "%s: %s.decoders must be an array", r->name, where);
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            char sub[64];
            snprintf(sub, sizeof sub, "%s.decoders[%d]", where, i);
            MI_TRY(read_decoder(r, c, sub, fused));
        }
        return MI_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        if (!r->byte_level)
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: a ByteLevel decoder without a ByteLevel pre-tokenizer is "
                           "not supported", r->name, where);
        return MI_OK;
    }
    if (r->byte_level)
        return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: decoder \"%s\" on a ByteLevel tokenizer is not supported",
                       r->name, where, type);
    if (!strcmp(type, "Replace")) {
        if (r->opt.dec_from.len)
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: a second Replace decoder is not supported", r->name, where);
        MI_TRY(get_pattern(r, d, where, &r->opt.dec_from));
        return get_str(r, d, "content", where, &r->opt.dec_to);
    }
    if (!strcmp(type, "ByteFallback")) { r->opt.dec_byte_fallback = 1; return MI_OK; }
    if (!strcmp(type, "Fuse")) { *fused = 1; return MI_OK; }
    if (!strcmp(type, "Strip")) {
        mi_bpe_str content;
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(d, "start");
        const cJSON *stop = cJSON_GetObjectItemCaseSensitive(d, "stop");
        MI_TRY(get_str(r, d, "content", where, &content));
        if (content.len != 1 || content.text[0] != ' ' || !*fused)
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: only Strip of \" \" after Fuse is supported", r->name, where);
        if (!cJSON_IsNumber(start) || !cJSON_IsNumber(stop) || start->valuedouble < 0 || stop->valuedouble < 0
            || start->valuedouble > 1e6 || stop->valuedouble > 1e6)
            return mi_fail(MI_ERR_FORMAT, "%s: %s.start and .stop must be non-negative integers", r->name, where);
        r->opt.dec_strip_start = (int)start->valuedouble;
        r->opt.dec_strip_stop = (int)stop->valuedouble;
        return MI_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        MI_TRY(get_str(r, d, "replacement", where, &r->opt.dec_from));
        r->opt.dec_to.text[0] = ' ';
        r->opt.dec_to.len = 1;
        const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(d, "prepend_scheme");
        int add_prefix = 1;
        MI_TRY(get_bool(r, d, "add_prefix_space", where, &add_prefix));
        r->opt.dec_meta_first = cJSON_IsString(scheme) ? strcmp(scheme->valuestring, "never") != 0 : add_prefix;
        return MI_OK;
    }
    return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: decoder type \"%s\" is not supported", r->name, where, type);
}

/* ---- post-processor ----------------------------------------------------- */

static mi_status read_template(const reader *r, const cJSON *p, const char *where, int32_t *ids, int *n_prefix,
                               int *n_suffix)
{
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
    if (!cJSON_IsArray(single)) return mi_fail(MI_ERR_FORMAT, "%s: %s.single must be an array", r->name, where);
    int seen_a = 0, n = 0;
    for (const cJSON *it = single->child; it; it = it->next) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
        if (seq) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(seq, "id");
            if (seen_a || !cJSON_IsString(id) || strcmp(id->valuestring, "A"))
                return mi_fail(MI_ERR_FORMAT, "%s: %s.single must hold the sequence $A once", r->name, where);
            seen_a = 1;
            continue;
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(sp, "id");
        if (!cJSON_IsString(name))
            return mi_fail(MI_ERR_FORMAT, "%s: %s.single: expected SpecialToken or Sequence items", r->name, where);
        const cJSON *entry = cJSON_GetObjectItemCaseSensitive(specials, name->valuestring);
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(entry, "ids");
        if (!cJSON_IsArray(list))
            return mi_fail(MI_ERR_FORMAT, "%s: %s.special_tokens has no ids for \"%s\"", r->name, where,
                           name->valuestring);
        for (const cJSON *v = list->child; v; v = v->next) {
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 2147483647.0)
                return mi_fail(MI_ERR_FORMAT, "%s: %s.special_tokens[\"%s\"].ids must be token ids", r->name, where,
                               name->valuestring);
            if (n == 64)
                return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: more than 64 template tokens", r->name, where);
            ids[n++] = (int32_t)v->valuedouble;      /* prefix ids, then suffix ids */
            if (!seen_a) (*n_prefix)++; else (*n_suffix)++;
        }
    }
    if (!seen_a) return mi_fail(MI_ERR_FORMAT, "%s: %s.single has no $A", r->name, where);
    return MI_OK;
}

static mi_status read_post_processor(const reader *r, const cJSON *p, const char *where, int32_t *ids,
                                     int *n_prefix, int *n_suffix)
{
    if (!p || cJSON_IsNull(p)) return MI_OK;
    const char *type = type_of(p);
    if (!type) return mi_fail(MI_ERR_FORMAT, "%s: %s has no \"type\"", r->name, where);
    if (!strcmp(type, "ByteLevel")) return MI_OK;       /* offsets only */
    if (!strcmp(type, "TemplateProcessing")) {
        if (*n_prefix || *n_suffix)
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: a second TemplateProcessing is not supported", r->name, where);
        return read_template(r, p, where, ids, n_prefix, n_suffix);
    }
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
        if (!cJSON_IsArray(list)) return mi_fail(MI_ERR_FORMAT, "%s: %s.processors must be an array", r->name, where);
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            char sub[64];
            snprintf(sub, sizeof sub, "%s.processors[%d]", where, i);
            MI_TRY(read_post_processor(r, c, sub, ids, n_prefix, n_suffix));
        }
        return MI_OK;
    }
    return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s: post_processor type \"%s\" is not supported", r->name, where, type);
}

/* ---- model -------------------------------------------------------------- */

static mi_status read_model(reader *r, const cJSON *m)
{
    if (!cJSON_IsObject(m)) return mi_fail(MI_ERR_FORMAT, "%s: \"model\" must be an object", r->name);
    const char *type = type_of(m);
    if (type && strcmp(type, "BPE"))
        return mi_fail(MI_ERR_UNSUPPORTED, "%s: model.type \"%s\" is not supported (only BPE is)", r->name, type);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0.0))
        return mi_fail(MI_ERR_UNSUPPORTED, "%s: model.dropout is not supported (inference tokenizes "
                       "deterministically)", r->name);
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, affixes[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: model.%s is not supported", r->name, affixes[i]);
    }
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(m, "unk_token");
    if (cJSON_IsString(unk)) MI_TRY(put_str(r, unk->valuestring, "model.unk_token", &r->opt.unk));
    else if (unk && !cJSON_IsNull(unk)) return mi_fail(MI_ERR_FORMAT, "%s: model.unk_token must be a string", r->name);
    MI_TRY(get_bool(r, m, "fuse_unk", "model", &r->opt.fuse_unk));
    MI_TRY(get_bool(r, m, "byte_fallback", "model", &r->opt.byte_fallback));
    MI_TRY(get_bool(r, m, "ignore_merges", "model", &r->opt.ignore_merges));
    return MI_OK;
}

static mi_status add_tokens(const reader *r, mi_bpe_tokenizer *t, const cJSON *list)
{
    if (!list || cJSON_IsNull(list)) return MI_OK;
    if (!cJSON_IsArray(list)) return mi_fail(MI_ERR_FORMAT, "%s: added_tokens must be an array", r->name);
    int i = 0;
    for (const cJSON *a = list->child; a; a = a->next, i++) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 2147483646.0
            || id->valuedouble != (double)(int32_t)id->valuedouble || !cJSON_IsString(content)
            || !content->valuestring[0])
            return mi_fail(MI_ERR_FORMAT, "%s: added_tokens[%d] needs an integer \"id\" and a non-empty "
                           "\"content\"", r->name, i);
        int special = 0, normalized = 0;
        char where[48];
        snprintf(where, sizeof where, "added_tokens[%d]", i);
        MI_TRY(get_bool(r, a, "special", where, &special));
        MI_TRY(get_bool(r, a, "normalized", where, &normalized));
        static const char *const unsupported[] = {"single_word", "lstrip", "rstrip"};
        for (int k = 0; k < 3; k++) {
            int v = 0;
            MI_TRY(get_bool(r, a, unsupported[k], where, &v));
            if (v)
                return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s (\"%s\"): %s true is not supported", r->name, where,
                               content->valuestring, unsupported[k]);
        }
        if (normalized && r->opt.n_norm)
            return mi_fail(MI_ERR_UNSUPPORTED, "%s: %s (\"%s\"): a normalized added token with a normalizer "
                           "that changes text is not supported", r->name, where, content->valuestring);
        mi_status st = mi_bpe_add_token(t, content->valuestring, strlen(content->valuestring),
                                        (int32_t)id->valuedouble, special);
        if (st != MI_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mi_last_error());
            return mi_fail(st, "%s: %s: %s", r->name, where, msg);
        }
    }
    return MI_OK;
}

mi_status mi_tokenizer_json_from_memory(const char *json, size_t len, const char *name, mi_bpe_tokenizer **out)
{
    *out = NULL;
    reader r;
    memset(&r, 0, sizeof r);
    r.name = name ? name : "tokenizer.json";
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = (at && at >= json && at <= json + len) ? (size_t)(at - json) : 0;
        return mi_fail(MI_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", r.name, off);
    }
    mi_bpe_tokenizer *t = NULL;
    int32_t tpl[64];
    int n_prefix = 0, n_suffix = 0, fused = 0;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    mi_status st = cJSON_IsObject(root) ? MI_OK : mi_fail(MI_ERR_FORMAT, "%s: expected a JSON object", r.name);
    if (st == MI_OK && !model) st = mi_fail(MI_ERR_FORMAT, "%s: no \"model\" section", r.name);
    if (st == MI_OK) st = read_model(&r, model);
    if (st == MI_OK) st = read_normalizer(&r, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "normalizer");
    if (st == MI_OK) st = read_pre_tokenizer(&r, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                                             "pre_tokenizer");
    if (st == MI_OK) {
        r.opt.chars = !r.byte_level;
        r.opt.dec_chars = !r.byte_level;
        if (!r.split_seen) r.opt.pretok = MI_PRETOK_WHOLE;
        st = read_decoder(&r, cJSON_GetObjectItemCaseSensitive(root, "decoder"), "decoder", &fused);
    }
    if (st == MI_OK) st = read_post_processor(&r, cJSON_GetObjectItemCaseSensitive(root, "post_processor"),
                                              "post_processor", tpl, &n_prefix, &n_suffix);
    if (st == MI_OK) st = mi_bpe_from_json(cJSON_GetObjectItemCaseSensitive(model, "vocab"),
                                           cJSON_GetObjectItemCaseSensitive(model, "merges"), &r.opt, r.name, &t);
    if (st == MI_OK) st = add_tokens(&r, t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"));
    if (st == MI_OK && (n_prefix || n_suffix)) {
        st = mi_bpe_set_template(t, tpl, n_prefix, tpl + n_prefix, n_suffix);
        if (st != MI_OK) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s", mi_last_error());
            st = mi_fail(st, "%s: %s", r.name, msg);
        }
    }
    cJSON_Delete(root);
    if (st != MI_OK) { mi_bpe_free(t); return st; }
    *out = t;
    return MI_OK;
}

mi_status mi_tokenizer_json_load(const char *path, mi_bpe_tokenizer **out)
{
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    MI_TRY(mi_file_read(path, &data, &len));
    mi_status st = mi_tokenizer_json_from_memory(data, len, path, out);
    free(data);
    return st;
}
