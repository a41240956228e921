/* config_json.c - JSON files through cJSON, with positions in errors and the
 * integer/float spelling of every number kept (contract in config_json.h). */
#include "io/config_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/file.h"

/* 1-based line and column of byte `at` in text. */
static void line_col(const char *text, size_t at, size_t *line, size_t *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < at; i++) {
        if (text[i] == '\n') { (*line)++; *col = 1; }
        else (*col)++;
    }
}

static mi_status fail_at(const mi_json_doc *doc, size_t at, const char *what)
{
    size_t line, col;
    line_col(doc->text, at, &line, &col);
    return mi_fail(MI_ERR_FORMAT, "%s:%zu:%zu: invalid JSON: %s", doc->path, line, col, what);
}

/* Record every number token outside strings, in text order. Runs on text that
 * cJSON accepted, so tokens are well formed; strings are skipped with their
 * escapes so that digits inside them are not taken for numbers. */
static mi_status scan_numbers(mi_json_doc *doc, size_t start)
{
    const char *s = doc->text;
    size_t n = doc->length, cap = 0;
    for (size_t i = start; i < n;) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\') i++;
            i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t j = i;
            int is_int = 1;
            while (j < n && (strchr("0123456789+-.eE", s[j]) && s[j] != '\0')) {
                if (s[j] == '.' || s[j] == 'e' || s[j] == 'E') is_int = 0;
                j++;
            }
            if (doc->n_numbers == cap) {
                cap = cap ? 2 * cap : 64;
                mi_json_number *grown = realloc(doc->numbers, cap * sizeof *grown);
                if (!grown) return mi_fail(MI_ERR_NOMEM, "%s: out of memory", doc->path);
                doc->numbers = grown;
            }
            doc->numbers[doc->n_numbers++] = (mi_json_number){ i, j - i, is_int };
            i = j;
        } else {
            i++;
        }
    }
    return MI_OK;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0 when it is not one. */
static size_t utf8_sequence(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;          /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;                /* overlong */
        if (c == 0xED) hi = 0x9F;                /* UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;                /* overlong */
        if (c == 0xF4) hi = 0x8F;                /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

size_t mi_utf8_check(const char *text, size_t length)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, k;
    while (i < length && (k = utf8_sequence(s + i, length - i)) != 0) i += k;
    return i;
}

size_t mi_json_check_text(const char *text, size_t length, const char **what)
{
    const unsigned char *s = (const unsigned char *)text;
    int in_string = 0;
    for (size_t i = 0; i < length;) {
        size_t k = utf8_sequence(s + i, length - i);
        if (k == 0) {
            *what = in_string ? "invalid UTF-8 in a string or key" : "invalid UTF-8";
            return i;
        }
        if (in_string) {
            if (s[i] == 0) { *what = "a NUL byte inside a string or key"; return i; }
            if (s[i] == '"') in_string = 0;
            if (s[i] == '\\' && i + 1 < length) {
                if (s[i + 1] == 'u' && i + 6 <= length && !memcmp(s + i + 2, "0000", 4)) {
                    *what = "a NUL character (\\u0000) inside a string or key";
                    return i;
                }
                k = 2;                           /* the escaped character is not a quote */
            }
        } else if (s[i] == '"') {
            in_string = 1;
        }
        i += k;
    }
    return length;
}

static mi_status parse_text(mi_json_doc *doc)
{
    const char *bad_what;
    size_t bad = mi_json_check_text(doc->text, doc->length, &bad_what);
    if (bad < doc->length) {
        size_t line, col;
        line_col(doc->text, bad, &line, &col);
        return mi_fail(MI_ERR_FORMAT, "%s:%zu:%zu: %s (strings and keys must be UTF-8 "
                       "without NUL: they would be garbled or cut short)",
                       doc->path, line, col, bad_what);
    }

    /* A UTF-8 byte-order mark is not JSON, but editors write it: skip it. */
    size_t start = doc->length >= 3 && !memcmp(doc->text, "\xEF\xBB\xBF", 3) ? 3 : 0;
    const char *begin = doc->text + start, *end = NULL;
    size_t n = doc->length - start;
    size_t ws = 0;
    while (ws < n && strchr(" \t\r\n", begin[ws]) && begin[ws]) ws++;
    if (ws == n) return fail_at(doc, doc->length, "the file is empty");

    doc->root = cJSON_ParseWithLengthOpts(begin, n, &end, 0);
    if (!doc->root) {
        size_t at = end && end >= begin ? (size_t)(end - begin) + start : start;
        if (at > doc->length) at = doc->length;
        /* cJSON reports running off the end as the last byte: say what it means */
        size_t rest = at;
        while (rest < doc->length && strchr(" \t\r\n", doc->text[rest]) && doc->text[rest]) rest++;
        if (rest == doc->length) return fail_at(doc, doc->length, "unexpected end of file");
        /* ... which makes an error at the last character ambiguous */
        while (++rest < doc->length && strchr(" \t\r\n", doc->text[rest]) && doc->text[rest]) {}
        if (rest == doc->length)
            return fail_at(doc, at, "syntax error at the end of the file (incomplete JSON?)");
        return fail_at(doc, at, "syntax error here");
    }
    for (const char *p = end; p < doc->text + doc->length; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
            return fail_at(doc, (size_t)(p - doc->text), "extra data after the JSON value");
    return scan_numbers(doc, start);
}

mi_status mi_json_parse_buffer(const char *text, size_t length, const char *label,
                               mi_json_doc **out)
{
    *out = NULL;
    mi_json_doc *doc = calloc(1, sizeof *doc);
    if (!doc) return mi_fail(MI_ERR_NOMEM, "out of memory");
    doc->path = strdup(label ? label : "<string>");
    doc->text = malloc(length + 1);
    if (!doc->path || !doc->text) {
        mi_json_free(doc);
        return mi_fail(MI_ERR_NOMEM, "out of memory");
    }
    if (length) memcpy(doc->text, text, length);
    doc->text[length] = '\0';
    doc->length = length;
    mi_status s = parse_text(doc);
    if (s != MI_OK) { mi_json_free(doc); return s; }
    *out = doc;
    return MI_OK;
}

mi_status mi_json_parse_file(const char *path, mi_json_doc **out)
{
    *out = NULL;
    char *buf;
    size_t size;
    MI_TRY(mi_file_read(path, &buf, &size));
    mi_json_doc *doc = calloc(1, sizeof *doc);
    if (!doc || !(doc->path = strdup(path))) {
        free(buf);
        free(doc);
        return mi_fail(MI_ERR_NOMEM, "%s: out of memory", path);
    }
    doc->text = buf;
    doc->length = size;
    mi_status s = parse_text(doc);
    if (s != MI_OK) { mi_json_free(doc); return s; }
    *out = doc;
    return MI_OK;
}

void mi_json_free(mi_json_doc *doc)
{
    if (!doc) return;
    cJSON_Delete(doc->root);
    free(doc->numbers);
    free(doc->text);
    free(doc->path);
    free(doc);
}
