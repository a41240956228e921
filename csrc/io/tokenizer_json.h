/* tokenizer_json.h - Hugging Face tokenizer.json (the `tokenizers` library's format)
 * into the BPE engine of bpe_tokenizer.h.
 *
 * Read: model (BPE: vocab, merges as "a b" or [a, b], unk_token, fuse_unk,
 * byte_fallback, ignore_merges), added_tokens, normalizer (NFC, Prepend, Replace
 * with a plain string, Sequence), pre_tokenizer (ByteLevel, Split on the GPT-2 /
 * Llama 3 / Qwen2 regexes, Metaspace, Sequence), decoder (ByteLevel, Metaspace,
 * Replace, ByteFallback, Fuse, Strip, Sequence) and post_processor
 * (TemplateProcessing, ByteLevel, Sequence). These cover the byte-level BPE files of
 * GPT-NeoX / Pythia, Llama 3 and Qwen2 and the SentencePiece-style files with byte
 * fallback of Llama 2, Mistral and Gemma. Anything else (another model type, regex,
 * normalizer, option) is refused with MI_ERR_UNSUPPORTED naming the field and the
 * file, never ignored; malformed files get MI_ERR_FORMAT naming the field.
 * NFC: the loader only records it (mi_bpe_get_options()->nfc); the caller
 * normalises text before encoding.
 */
#ifndef MI_TOKENIZER_JSON_H
#define MI_TOKENIZER_JSON_H

#include <stddef.h>

#include "io/bpe_tokenizer.h"

mi_status mi_tokenizer_json_from_memory(const char *json, size_t len, const char *name,
                                        mi_bpe_tokenizer **out);
mi_status mi_tokenizer_json_load(const char *path, mi_bpe_tokenizer **out);

#endif
