/* fuzz_config_json.c - libFuzzer target for the JSON reader behind config.json,
 * model.safetensors.index.json and tokenizer files (csrc/io/config_json).
 *
 * Build and run: `make fuzz FUZZ_SECONDS=60` (clang, -fsanitize=fuzzer,address,
 * undefined). The input is taken as a whole config.json. Whatever the bytes,
 * mi_json_parse_buffer must either fail with a message that names the label or
 * return a document whose promises hold, because the Python binding builds its
 * dicts from them without further checks:
 *   - the number table has one entry per cJSON number, in pre-order, each a
 *     slice of the text that reads back (strtod) as the value cJSON stored and
 *     is marked integer exactly when it has no '.', 'e' or 'E';
 *   - every string and key is UTF-8 (no NUL can hide in it: the text had none).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "io/config_json.h"

#define LABEL "<fuzz config.json>"

static void check_string(const char *s)
{
    size_t n = strlen(s);
    if (mi_utf8_check(s, n) != n) abort();
}

/* Walk the tree in pre-order, matching numbers against doc->numbers. */
static void walk(const mi_json_doc *doc, const cJSON *item, size_t *next)
{
    for (; item; item = item->next) {
        if (item->string) check_string(item->string);
        if (cJSON_IsString(item)) check_string(item->valuestring);
        if (cJSON_IsNumber(item)) {
            if (*next >= doc->n_numbers) abort();
            const mi_json_number *num = &doc->numbers[(*next)++];
            if (num->length == 0 || num->offset + num->length > doc->length) abort();
            const char *tok = doc->text + num->offset;
            int has_frac = memchr(tok, '.', num->length) || memchr(tok, 'e', num->length)
                           || memchr(tok, 'E', num->length);
            if (num->is_integer == has_frac) abort();
            char buf[64];
            if (num->length < sizeof buf) {
                memcpy(buf, tok, num->length);
                buf[num->length] = '\0';
                char *end;
                double v = strtod(buf, &end);
                if (*end != '\0') abort();
                if (!(v == item->valuedouble || (isnan(v) && isnan(item->valuedouble)))) abort();
            }
        }
        walk(doc, item->child, next);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mi_json_doc *doc = NULL;
    if (mi_json_parse_buffer((const char *)data, size, LABEL, &doc) != MI_OK) {
        if (strncmp(mi_last_error(), LABEL, sizeof LABEL - 1) != 0) abort();
        return 0;
    }
    size_t next = 0;
    walk(doc, doc->root, &next);
    if (next != doc->n_numbers) abort();
    mi_json_free(doc);
    return 0;
}
