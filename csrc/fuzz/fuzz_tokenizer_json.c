/* fuzz_tokenizer_json.c - libFuzzer entry point for the tokenizer.json reader
 * (csrc/io/tokenizer_json.c) and the pipelines it configures.
 *
 * The input is split at its first 0 byte: the part before is a tokenizer.json text,
 * the part after a text to encode. Loading may fail (malformed or unsupported files
 * must give an error, never a crash); if it loads, the text is encoded and the ids
 * decoded, on the fast merge path and the plain reference path, which must agree.
 * Build: the Makefile's `make fuzz` target (clang -fsanitize=fuzzer,address,undefined).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/tokenizer_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *zero = memchr(data, 0, size);
    size_t jlen = zero ? (size_t)(zero - data) : size;
    const char *text = zero ? (const char *)zero + 1 : "";
    size_t tlen = zero ? size - jlen - 1 : 0;
    mi_bpe_tokenizer *tok = NULL;
    if (mi_tokenizer_json_from_memory((const char *)data, jlen, "fuzz tokenizer.json", &tok) != MI_OK) return 0;
    mi_bpe_scratch *scratch = mi_bpe_scratch_new();
    mi_bpe_ids fast = {0}, ref = {0};
    mi_bpe_bytes out = {0};
    mi_status a = mi_bpe_encode(tok, scratch, text, tlen, MI_BPE_SPLIT_SPECIAL, &fast);
    mi_status b = mi_bpe_encode(tok, scratch, text, tlen, MI_BPE_SPLIT_SPECIAL | MI_BPE_REFERENCE, &ref);
    int differ = a == MI_OK && (fast.len != ref.len
                                || (fast.len && memcmp(fast.data, ref.data, fast.len * sizeof(int32_t))));
    if (a != b || differ) {
        fprintf(stderr, "fuzz_tokenizer_json: fast and reference merges disagree\n");
        abort();
    }
    if (a == MI_OK) (void)mi_bpe_decode(tok, fast.data, fast.len, 0, &out);
    mi_bpe_ids_free(&fast);
    mi_bpe_ids_free(&ref);
    free(out.data);
    mi_bpe_scratch_free(scratch);
    mi_bpe_free(tok);
    return 0;
}
