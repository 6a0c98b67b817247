"""Offline tokenizers for the tiny pipelines (``tiny.py``) and the testbed: every word is one token.

* ``build_clip_tokenizer``: a byte-level BPE ``CLIPTokenizer`` (vocab.json + merges.txt) in which
  every word of a given list is a single token. The vocabulary is the 256 byte symbols, the same
  with ``</w>``, one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` as the *last*
  ids: ``CLIPTextModel`` pools at ``argmax(input_ids)`` when its config keeps the legacy
  ``eos_token_id == 2``, which is only the end-of-text position if that token has the largest id.
  Any other text still encodes (it falls back to byte symbols).
* ``build_t5_tokenizer``: a ``tokenizers`` Unigram model (Metaspace pre-tokenizer, ``</s>``
  appended by the post-processor) wrapped in ``PreTrainedTokenizerFast``; unknown characters map
  to ``<unk>``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

DEFAULT_WORDS: list[str] = (
    # colours, shapes, counts, relations and fillers of the shapes world, plus a few common words
    ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "gray", "cyan", "magenta"]
    + ["circle", "circles", "square", "squares", "triangle", "triangles", "star", "stars", "rectangle", "rectangles"]
    + ["ellipse", "cross", "heart", "hexagon", "shape", "shapes"]
    + ["a", "an", "one", "two", "three", "four", "five", "six", "many", "no"]
    + ["left", "right", "of", "above", "below", "on", "under", "the", "top", "bottom", "next", "to", "and", "with"]
    + ["in", "middle", "center"]
    + ["big", "small", "large", "tiny", "photo", "image", "picture", "background", "of", "a", "cat", "dog", "painting"]
)

START, END = "<|startoftext|>", "<|endoftext|>"
_WORD = re.compile(r"[a-z]+")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode symbol table (256 entries)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges by rank (lowest first) to a list of symbols."""
    while len(symbols) > 1:
        pairs = [(ranks.get(p, 1 << 62), i, p) for i, p in enumerate(zip(symbols[:-1], symbols[1:]))]
        rank, i, pair = min(pairs)
        if rank == 1 << 62:
            break
        symbols = symbols[:i] + [pair[0] + pair[1]] + symbols[i + 2 :]
    return symbols


def _split_words(words: Iterable[str]) -> list[str]:
    if isinstance(words, str):
        words = [words]
    out: list[str] = []
    for w in words:
        for piece in _WORD.findall(str(w).lower()):
            if piece not in out:
                out.append(piece)
    return out


@contextmanager
def _tmp_or(save_dir: str | None) -> Iterator[str]:
    if save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)
        yield save_dir
    else:
        with tempfile.TemporaryDirectory() as d:
            yield d


def build_clip_tokenizer(words: Iterable[str] | None = None, save_dir: str | None = None, model_max_length: int = 77):
    """A ``CLIPTokenizer`` in which each (lower-case, alphabetic) word of ``words`` is one token.

    Merges are added greedily: a word is first tokenized with the merges so far, then its remaining
    symbols are merged left to right with new (lowest-priority) merges. New merges never change how
    earlier words tokenize, since BPE always prefers the existing lower-rank merge while one applies.
    """
    from transformers import CLIPTokenizer

    byte_syms = list(_bytes_to_unicode().values())
    vocab = byte_syms + [s + "</w>" for s in byte_syms]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in _split_words(DEFAULT_WORDS if words is None else words):
        while True:
            symbols = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
            if len(symbols) == 1:
                break
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.append(pair[0] + pair[1])
    vocab = list(dict.fromkeys(vocab)) + [START, END]
    with _tmp_or(save_dir) as d:
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        tok = CLIPTokenizer.from_pretrained(d, model_max_length=model_max_length)
        if save_dir is not None:
            tok.save_pretrained(d)
    return tok


def build_t5_tokenizer(words: Iterable[str] | None = None, save_dir: str | None = None, model_max_length: int = 512):
    """A T5-style Unigram tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, "▁" + each word, then
    single characters (a-z, 0-9, punctuation) as low-score fallbacks; lower-cases its input."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in _split_words(DEFAULT_WORDS if words is None else words)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()"]
    model = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    model.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    if save_dir is not None:
        tok.save_pretrained(save_dir)
    return tok
