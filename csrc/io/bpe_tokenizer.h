/* bpe_tokenizer.h - GPT-2 byte-level BPE tokenizer (vocab.json + merges.txt).
 *
 * Contract (matches Hugging Face's GPT2Tokenizer / tokenizers ByteLevel BPE):
 *   encode(text):
 *     1. split out special tokens (leftmost, longest match) - they become their id as is;
 *     2. pre-tokenise every other stretch with the GPT-2 pattern
 *          's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *        implemented directly over a Unicode class table (io/unicode_table.h);
 *     3. each piece's UTF-8 bytes start as one symbol per byte (the vocab's byte-to-unicode
 *        tokens) and are merged pairwise by merge rank, lowest first (leftmost on ties);
 *        results for short pieces are cached.
 *   decode(ids): the tokens' raw bytes concatenated (special tokens as their text); the
 *     caller turns them into str with UTF-8 errors="replace".
 * The tokenizer is immutable after loading except for mi_bpe_add_special; encoding state
 * (the word cache, scratch) lives in an mi_bpe_scratch owned by the caller, so one loaded
 * tokenizer can serve several threads, each with its own scratch.
 * Input text is UTF-8; invalid bytes are not an error (they go through as "other" bytes).
 * Errors: mi_status with a message naming the file and line or the token (common/status.h).
 */
#ifndef MI_BPE_TOKENIZER_H
#define MI_BPE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

struct cJSON;

typedef struct mi_bpe_tokenizer mi_bpe_tokenizer;
typedef struct mi_bpe_scratch mi_bpe_scratch;

/* A growable int32 array (token ids) or byte string; free with mi_bpe_ids_free / free(data). */
typedef struct { int32_t *data; size_t len, cap; } mi_bpe_ids;
typedef struct { char *data; size_t len, cap; } mi_bpe_bytes;

/* Load from files. */
mi_status mi_bpe_load(const char *vocab_path, const char *merges_path, mi_bpe_tokenizer **out);

/* Load from memory: vocab_json is the text of vocab.json, merges that of merges.txt;
 * the names are used in error messages only. */
mi_status mi_bpe_from_memory(const char *vocab_json, size_t vocab_len,
                             const char *merges, size_t merges_len,
                             const char *vocab_name, const char *merges_name,
                             mi_bpe_tokenizer **out);

void mi_bpe_free(mi_bpe_tokenizer *tok);

/* ---- Hugging Face tokenizer.json pipelines (tokenizer_json.c fills these) ----
 * A text is split on added tokens first; every other stretch then goes through
 *   normalizer steps (in order) -> Metaspace (spaces to `meta`, its prefix) ->
 *   ByteLevel's prefix space -> the pre-tokeniser -> BPE on each piece,
 * and decoding runs the decoder the file names. Options not listed here are
 * refused by the loader, never ignored. */
typedef enum {
    MI_PRETOK_GPT2 = 0,   /* ByteLevel's regex (GPT-2, GPT-NeoX) */
    MI_PRETOK_LLAMA3,     /* Split on the Llama 3 regex (\p{N}{1,3}) */
    MI_PRETOK_QWEN2,      /* Split on the Qwen2 regex (single \p{N}) */
    MI_PRETOK_WHOLE,      /* none: each stretch is one piece */
    MI_PRETOK_METASPACE,  /* Metaspace split: a piece starts at each replacement character */
} mi_pretok;

#define MI_BPE_STR 16
typedef struct { char text[MI_BPE_STR]; uint8_t len; } mi_bpe_str;
typedef struct { int prepend; mi_bpe_str from, to; } mi_bpe_norm_step;  /* prepend `to`, or replace `from` by `to` */

typedef struct {
    int nfc;              /* NFC normalizer: the caller normalises the text first (Python's unicodedata) */
    int chars;            /* SentencePiece-style: symbols are the text's UTF-8 characters; 0: byte-level */
    int byte_fallback;    /* an unknown character becomes its <0xNN> byte tokens */
    int fuse_unk;         /* consecutive unknown characters give one unk */
    int ignore_merges;    /* a piece that is itself a token is not merged (Llama 3) */
    int prefix_space;     /* ByteLevel add_prefix_space */
    mi_bpe_str unk;       /* unk token text, len 0: none */
    mi_pretok pretok;
    int n_norm;
    mi_bpe_norm_step norm[8];
    int meta;             /* Metaspace pre-tokeniser: spaces become meta_repl */
    mi_bpe_str meta_repl;
    int meta_prepend;     /* 0 never, 1 first stretch of the text, 2 always */
    /* decoder */
    int dec_chars;        /* tokens decode as their text (SentencePiece); 0: through bytes_to_unicode */
    mi_bpe_str dec_from, dec_to;   /* Replace decoder (len 0: none) */
    int dec_byte_fallback;          /* <0xNN> tokens decode to their byte; invalid UTF-8 runs to U+FFFD per byte */
    int dec_strip_start, dec_strip_stop;   /* Strip decoder: leading / trailing spaces removed */
    int dec_meta_first;   /* Metaspace decoder: the first token's leading space removed */
} mi_bpe_options;

/* A tokenizer from tokenizer.json parts: model.vocab (object), model.merges
 * (array of "a b" strings or [a, b] pairs), options; `name` for messages. */
mi_status mi_bpe_from_json(const struct cJSON *vocab, const struct cJSON *merges,
                           const mi_bpe_options *opt, const char *name, mi_bpe_tokenizer **out);

/* Declare an added token (special or not): split out of text before anything else. */
mi_status mi_bpe_add_token(mi_bpe_tokenizer *tok, const char *text, size_t len, int32_t id, int special);

const mi_bpe_options *mi_bpe_get_options(const mi_bpe_tokenizer *tok);

/* The post-processor's ids around a single sequence (TemplateProcessing): set / read. */
mi_status mi_bpe_set_template(mi_bpe_tokenizer *tok, const int32_t *prefix, int n_prefix,
                              const int32_t *suffix, int n_suffix);
void mi_bpe_template(const mi_bpe_tokenizer *tok, const int32_t **prefix, int *n_prefix,
                     const int32_t **suffix, int *n_suffix);

/* Declare `text` (UTF-8, len bytes) a special token with this id: it is split out of the
 * text before pre-tokenisation and decodes to its literal text. An id past the vocabulary
 * grows it (added tokens). Fails if the id already names a different token. */
mi_status mi_bpe_add_special(mi_bpe_tokenizer *tok, const char *text, size_t len, int32_t id);

/* Number of ids (max id + 1). */
int32_t mi_bpe_vocab_size(const mi_bpe_tokenizer *tok);

/* Id of a token given as its vocab.json string (byte-to-unicode form), or -1. */
int32_t mi_bpe_token_to_id(const mi_bpe_tokenizer *tok, const char *token, size_t len);

/* The vocab.json string of id (not NUL-terminated), NULL if id is unused. */
const char *mi_bpe_id_to_token(const mi_bpe_tokenizer *tok, int32_t id, size_t *len);

/* 1 if id is a special token, 0 otherwise. */
int mi_bpe_is_special(const mi_bpe_tokenizer *tok, int32_t id);

mi_bpe_scratch *mi_bpe_scratch_new(void);
void mi_bpe_scratch_free(mi_bpe_scratch *s);

enum {
    MI_BPE_SPLIT_SPECIAL = 1,   /* split special tokens out (else their text is plain text) */
    MI_BPE_PREFIX_SPACE = 2,    /* add_prefix_space: a stretch between special tokens that does
                                   not start with ' ' is encoded as if it did */
    MI_BPE_REFERENCE = 4,       /* merge with the plain O(n^2) GPT-2 loop, no cache (tests) */
};

/* Append the ids of `text` to out; flags: MI_BPE_* above. */
mi_status mi_bpe_encode(const mi_bpe_tokenizer *tok, mi_bpe_scratch *scratch,
                        const char *text, size_t len, int flags, mi_bpe_ids *out);

/* The pre-tokeniser alone: append the end offset (bytes) of every piece of `text` (special
 * tokens are pieces of their own). For tests against the reference pre-tokeniser. */
mi_status mi_bpe_pretokenize(const mi_bpe_tokenizer *tok, const char *text, size_t len,
                             int split_special, mi_bpe_ids *ends);

/* Append the bytes of ids to out; skip_special drops special tokens. Unknown id: MI_ERR_INDEX. */
mi_status mi_bpe_decode(const mi_bpe_tokenizer *tok, const int32_t *ids, size_t n,
                        int skip_special, mi_bpe_bytes *out);

void mi_bpe_ids_free(mi_bpe_ids *v);

#endif
