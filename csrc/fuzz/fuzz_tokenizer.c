/* fuzz_tokenizer.c - libFuzzer entry point for the BPE tokenizer (csrc/io/bpe_tokenizer).
 *
 * Two modes, picked by the first input byte:
 *   even: a fixed small byte-level vocabulary (all 256 byte tokens + a few merges and a
 *         special token) encodes the rest of the input; the ids must decode back to the
 *         exact input bytes (byte-level BPE is lossless, special tokens included), and
 *         the fast merge (heap + word cache) must equal the plain reference loop.
 *   odd:  the input itself is split at the first 0 byte into vocab.json and merges.txt
 *         texts and loaded; loading may fail (that is the point: malformed files must give
 *         an error, never a crash); if it loads, encode/decode a fixed text.
 * Build: clang -fsanitize=fuzzer,address,undefined -Icsrc csrc/fuzz/fuzz_tokenizer.c
 *        csrc/io/\*.c csrc/common/\*.c -lcjson   (the Makefile's `make fuzz` target).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/bpe_tokenizer.h"

static mi_bpe_tokenizer *fixed_tok;
static mi_bpe_scratch *scratch;

/* vocab.json of the 256 GPT-2 byte-to-unicode characters plus merged tokens. */
static char *fixed_vocab(size_t *len)
{
    size_t cap = 1 << 14, n = 0;
    char *s = malloc(cap);
    uint32_t extra = 256;
    n += (size_t)snprintf(s + n, cap - n, "{");
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = printable ? (uint32_t)b : extra++;
        char u[4]; int k;
        if (cp < 0x80) { u[0] = (char)cp; k = 1; }
        else { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); k = 2; }
        if (cp == '"' || cp == '\\') n += (size_t)snprintf(s + n, cap - n, "\"\\%c\": %d,", (char)cp, b);
        else n += (size_t)snprintf(s + n, cap - n, "\"%.*s\": %d,", k, u, b);
    }
    n += (size_t)snprintf(s + n, cap - n,
                          "\"\xc4\xa0t\": 256, \"he\": 257, \"\xc4\xa0the\": 258, \"ll\": 259, \"\xc4\xa0\xc4\xa0\": 260,"
                          "\"aa\": 261, \"aaaa\": 262, \"<|endoftext|>\": 263}");
    *len = n;
    return s;
}

static const char fixed_merges[] = "#version: 0.2\n\xc4\xa0 t\nh e\n\xc4\xa0t he\nl l\n\xc4\xa0 \xc4\xa0\na a\naa aa\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fixed_tok) {
        size_t vlen;
        char *v = fixed_vocab(&vlen);
        if (mi_bpe_from_memory(v, vlen, fixed_merges, sizeof fixed_merges - 1, "fuzz vocab", "fuzz merges",
                               &fixed_tok) != MI_OK ||
            mi_bpe_add_special(fixed_tok, "<|endoftext|>", 13, 263) != MI_OK) {
            fprintf(stderr, "fuzz_tokenizer: fixed tokenizer failed to load: %s\n", mi_last_error());
            abort();
        }
        free(v);
        scratch = mi_bpe_scratch_new();
    }
    if (size == 0) return 0;
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    if ((data[0] & 1) == 0) {
        mi_bpe_ids ids = {0};
        mi_bpe_bytes back = {0};
        if (mi_bpe_encode(fixed_tok, scratch, text, n, (data[0] & 2) ? MI_BPE_SPLIT_SPECIAL : 0, &ids) != MI_OK) abort();
        if (mi_bpe_decode(fixed_tok, ids.data, ids.len, 0, &back) != MI_OK) abort();
        if (back.len != n || (n && memcmp(back.data, text, n))) abort();   /* lossless */
        /* the heap merge + cache agree with the plain GPT-2 loop (a trained merge table) */
        mi_bpe_ids ref = {0};
        int flags = ((data[0] & 2) ? MI_BPE_SPLIT_SPECIAL : 0) | MI_BPE_REFERENCE;
        if (mi_bpe_encode(fixed_tok, NULL, text, n, flags, &ref) != MI_OK) abort();
        if (ref.len != ids.len || (ids.len && memcmp(ref.data, ids.data, ids.len * sizeof(int32_t)))) abort();
        mi_bpe_ids_free(&ref);
        mi_bpe_ids_free(&ids);
        free(back.data);
        return 0;
    }
    const char *zero = memchr(text, 0, n);
    size_t vlen = zero ? (size_t)(zero - text) : n;
    const char *merges = zero ? zero + 1 : "";
    size_t mlen = zero ? n - vlen - 1 : 0;
    mi_bpe_tokenizer *tok = NULL;
    if (mi_bpe_from_memory(text, vlen, merges, mlen, "vocab", "merges", &tok) != MI_OK) return 0;
    mi_bpe_add_special(tok, "<s>", 3, 5);           /* may fail (id taken): fine */
    static const char sample[] = "Hello world, it's 3.14 <s> caf\xc3\xa9   \n\n \xe6\x97\xa5\xff";
    mi_bpe_scratch *s = mi_bpe_scratch_new();
    mi_bpe_ids ids = {0};
    if (mi_bpe_encode(tok, s, sample, sizeof sample - 1, MI_BPE_SPLIT_SPECIAL | MI_BPE_PREFIX_SPACE, &ids) == MI_OK) {
        mi_bpe_bytes back = {0};
        mi_bpe_decode(tok, ids.data, ids.len, 1, &back);
        free(back.data);
    }
    mi_bpe_ids_free(&ids);
    mi_bpe_scratch_free(s);
    mi_bpe_free(tok);
    return 0;
}
