/* config_json.c - JSON files through cJSON, with positions in errors and the
 * integer/float spelling of every number kept (contract in config_json.h). */
#include "io/config_json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

static mi_status parse_text(mi_json_doc *doc)
{
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
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        mi_fail(MI_ERR_IO, "%s: cannot open: %s", path, strerror(e));
        errno = e;
        return MI_ERR_IO;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        int e = S_ISDIR(sb.st_mode) ? EISDIR : EINVAL;
        fclose(f);
        mi_fail(MI_ERR_IO, "%s: not a regular file", path);
        errno = e;
        return MI_ERR_IO;
    }
    size_t size = (size_t)sb.st_size;
    char *buf = malloc(size + 1);
    if (!buf) { fclose(f); return mi_fail(MI_ERR_NOMEM, "%s: out of memory (%zu bytes)", path, size); }
    size_t got = size ? fread(buf, 1, size, f) : 0;
    int err = ferror(f);
    fclose(f);
    if (got != size || err) {
        free(buf);
        return mi_fail(MI_ERR_IO, "%s: short read (%zu of %zu bytes)", path, got, size);
    }
    mi_json_doc *doc = calloc(1, sizeof *doc);
    if (!doc || !(doc->path = strdup(path))) {
        free(buf);
        free(doc);
        return mi_fail(MI_ERR_NOMEM, "%s: out of memory", path);
    }
    buf[size] = '\0';
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
