/* fuzz_safetensors.c - libFuzzer target for the safetensors header parser and
 * the JSON file parser, on memory buffers.
 *
 * Build and run: `make fuzz FUZZ_SECONDS=60` (clang, -fsanitize=fuzzer,address,
 * undefined). The input is taken as a whole .safetensors file. Whatever the
 * bytes, mi_st_parse must either fail with a message or return tensors whose
 * byte ranges lie inside the buffer: every byte of every accepted tensor is
 * read (so ASan catches any range the validation let through) and converted
 * to float32. The same bytes are also parsed as a config.json.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/config_json.h"
#include "io/safetensors.h"

/* libFuzzer hands out a buffer of exactly `size` bytes: copy it so ASan sees
 * the true end (the parser must not read past it). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);

    mi_safetensors *st = NULL;
    if (mi_st_parse(buf, size, "<fuzz>", &st) == MI_OK) {
        volatile uint8_t sink = 0;
        for (int i = 0; i < st->n_tensors; i++) {
            const mi_st_tensor *t = &st->tensors[i];
            const uint8_t *p = t->data;
            size_t nbytes = (size_t)(t->end - t->begin);
            /* the invariants the reader promises */
            if (p < st->buf || p + nbytes > st->buf + st->size) abort();
            if ((uint64_t)nbytes != t->numel * mi_dtype_size(t->dtype)) abort();
            if (mi_st_find(st, t->name) != t) abort();
            for (size_t j = 0; j < nbytes; j++) sink ^= p[j];
            if (t->numel <= (1u << 20)) {
                float *dst = malloc(t->numel * sizeof(float) + 1);
                if (dst) {
                    mi_st_to_float32(t, dst);
                    /* the fast F16/BF16 loop against the plain reference, bitwise */
                    for (uint64_t j = 0; j < t->numel && (t->dtype == MI_DT_F16 ||
                                                          t->dtype == MI_DT_BF16); j++) {
                        uint16_t h;
                        memcpy(&h, p + 2 * j, 2);
                        float want = t->dtype == MI_DT_F16 ? mi_f16_to_f32(h) : mi_bf16_to_f32(h);
                        if (memcmp(&want, &dst[j], 4) != 0) abort();
                    }
                    free(dst);
                }
            }
        }
        (void)sink;
        mi_st_close(st);
    }

    mi_json_doc *doc = NULL;
    if (mi_json_parse_buffer((const char *)buf, size, "<fuzz>", &doc) == MI_OK) {
        for (size_t i = 0; i < doc->n_numbers; i++)
            if (doc->numbers[i].offset + doc->numbers[i].length > doc->length) abort();
        mi_json_free(doc);
    }
    free(buf);
    return 0;
}
