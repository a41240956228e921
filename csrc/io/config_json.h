/* config_json.h - parse a JSON file (config.json, *.index.json) with cJSON.
 *
 * Contract: mi_json_parse_file reads the whole file, parses it with cJSON and
 * accepts only one JSON value followed by whitespace. A failure names the file
 * and the line:column where parsing stopped. cJSON stores every number as a
 * double and forgets how it was written, so the document also keeps, for each
 * number in document order, where its text is and whether it was written as an
 * integer ("768") or a float ("1e-05", "0.1"): the Python side then builds
 * exactly what Python's json module would (ints exact at any size).
 *
 * No Python headers here; the binding is in python/io_py.c.
 */
#ifndef MI_IO_CONFIG_JSON_H
#define MI_IO_CONFIG_JSON_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "common/status.h"

typedef struct {
    size_t offset, length;  /* the number's text: doc->text[offset, offset + length) */
    int is_integer;         /* written without '.', 'e' or 'E' */
} mi_json_number;

typedef struct {
    char *path;             /* file name or label, for messages */
    char *text;             /* the file contents, NUL-terminated */
    size_t length;
    cJSON *root;
    size_t n_numbers;
    mi_json_number *numbers; /* every number token, in document order (= cJSON pre-order) */
} mi_json_doc;

/* Read and parse `path`. *out is owned by the caller: mi_json_free.
 * Errors: MI_ERR_IO (cannot open/read; errno tells why), MI_ERR_FORMAT
 * ("FILE:LINE:COL: ..."). */
mi_status mi_json_parse_file(const char *path, mi_json_doc **out);

/* Parse `length` bytes of `text` (copied); `label` names it in messages. */
mi_status mi_json_parse_buffer(const char *text, size_t length, const char *label,
                               mi_json_doc **out);

void mi_json_free(mi_json_doc *doc);

/* The byte offset of the first thing in `text` that a reader of C strings
 * cannot take as it is, or `length` when there is none; *what says which:
 *   - bytes that are not UTF-8 ("invalid UTF-8": overlong forms, surrogates,
 *     > U+10FFFF and cut sequences included, as Rust's str::from_utf8 and so
 *     the safetensors reference reader refuse them);
 *   - a NUL inside a string or key, raw or written \u0000: cJSON would end the
 *     C string there and silently drop the rest.
 * Both mi_json_parse_* and the safetensors header reader refuse such text. */
size_t mi_json_check_text(const char *text, size_t length, const char **what);

/* The byte offset of the first byte of `text` that does not start a
 * well-formed UTF-8 sequence (the first rule above), or `length`. */
size_t mi_utf8_check(const char *text, size_t length);

#endif
