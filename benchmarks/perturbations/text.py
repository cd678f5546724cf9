"""Corpus-side input perturbations. Queries are never touched, so their embeddings come from the cache.

Every function maps a corpus {doc_id: {"title", "text"}} to a new one plus a stats dict, and draws its
randomness from `random.Random(f"{seed}:{doc_id}")`: a document's perturbation depends only on the
seed and its own id, not on corpus order or on which other documents are present.
"""

from __future__ import annotations

import functools
import random
import re

from tqdm.auto import tqdm

from encoders.base import title_text

_SEGMENTER = None


@functools.lru_cache(maxsize=100_000)  # pysbd takes ~7 ms a document; a sweep shuffles the same corpus per encoder
def split_sentences(text: str) -> tuple[str, ...]:
    """pysbd (a port of the rule-based Pragmatic Segmenter, which handles abbreviations like "e.g.",
    "Fig. 2" and decimals that a regex splitter breaks on)."""
    global _SEGMENTER
    if _SEGMENTER is None:
        import pysbd

        _SEGMENTER = pysbd.Segmenter(language="en", clean=False)
    return tuple(s.strip() for s in _SEGMENTER.segment(text) if s.strip())


def _words(doc: dict) -> int:
    return len(title_text(doc).split())


def _stats(before: dict, after: dict) -> dict:
    changed = sum(1 for d in before if before[d] != after[d])
    n = max(len(before), 1)
    return dict(documents=len(before), changed_documents=changed,
                mean_words_before=sum(map(_words, before.values())) / n,
                mean_words_after=sum(map(_words, after.values())) / n)


def sentence_shuffle(corpus: dict, seed: int, progress: bool = False) -> tuple[dict, dict]:
    """Shuffle the sentences of each document's text; the title stays first, untouched."""
    out = {}
    sentences = 0
    for did, doc in tqdm(corpus.items(), desc="sentence shuffle", disable=not progress, leave=False):
        parts = list(split_sentences(doc["text"])) if doc["text"].strip() else []
        sentences += len(parts)
        random.Random(f"{seed}:{did}").shuffle(parts)
        out[did] = dict(doc, text=" ".join(parts) if parts else doc["text"])
    return out, dict(_stats(corpus, out), mean_sentences=sentences / max(len(corpus), 1))


def token_shuffle(corpus: dict, seed: int) -> tuple[dict, dict]:
    """Shuffle the whitespace words of each document's text (a bag-of-words control); title kept first."""
    out = {}
    for did, doc in corpus.items():
        words = doc["text"].split()
        random.Random(f"{seed}:{did}").shuffle(words)
        out[did] = dict(doc, text=" ".join(words))
    return out, _stats(corpus, out)


def truncate(corpus: dict, side: str, tokens: int, tokenizer, title_sep: str = " ") -> tuple[dict, dict]:
    """Keep the first (head) or last (tail) `tokens` tokens of title + text, cut in the original text
    at the tokenizer's character offsets (so no detokenisation artefacts). The result is one text
    field: after a tail cut the title is usually gone, which is the point."""
    ids = list(corpus)
    full = [title_text(corpus[d], title_sep) for d in ids]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True,
                    verbose=False)  # no "longer than the maximum" warning: we only want offsets
    out, cut = {}, 0
    for did, text, offsets in zip(ids, full, enc["offset_mapping"]):
        if len(offsets) > tokens:
            cut += 1
            text = text[:offsets[tokens - 1][1]] if side == "head" else text[offsets[-tokens][0]:]
        out[did] = dict(title="", text=text.strip())
    return out, dict(_stats(corpus, out), truncated_documents=cut)


def pad_with_distractors(corpus: dict, side: str, factor: float, seed: int, pool=None) -> tuple[dict, dict]:
    """Lengthen each document to `factor` x its word count with text of randomly drawn other documents
    of `pool` (the whole corpus, of which `corpus` may be a chunk; default `corpus` itself), before
    (prefix) or after (suffix) it: does the encoder still find the relevant part?"""
    from benchmarks.pipeline.corpus import Corpus

    pool = Corpus.from_dict(corpus if pool is None else pool)
    out = {}
    for did, doc in corpus.items():
        full = title_text(doc)
        need = round((factor - 1) * len(full.split()))
        rng = random.Random(f"{seed}:{did}")
        filler: list[str] = []
        for _ in range(1000):  # bounded: a corpus of empty documents cannot loop forever
            if len(filler) >= need or len(pool) < 2:
                break
            other = rng.randrange(len(pool))
            if pool.id_at(other) != did:
                filler.extend(title_text(pool.doc(other)).split())
        filler_text = " ".join(filler[:need])
        text = f"{filler_text} {full}" if side == "prefix" else f"{full} {filler_text}"
        out[did] = dict(title="", text=re.sub(r"\s+", " ", text).strip())
    return out, _stats(corpus, out)


def needle_in_distractors(corpus: dict, position: str, total: int, tokenizer, seed: int,
                          judged: frozenset = frozenset(), title_sep: str = " ") -> tuple[dict, dict]:
    """Each document (title + text, the needle) inside text of other documents, at the start, in the
    middle or at the end, so that the result is `total` tokens of `tokenizer` with its special tokens
    (a needle longer than that is kept whole: it is what is searched for). Distractors are whole
    documents, drawn at random per document (seeded by its id), the last one cut at a token offset;
    documents any qrels judge are never distractors, so that no unjudged document carries a judged
    one's text (with them, a relevant abstract would recur inside ~total/length other documents that
    the qrels call non-relevant). The result is one text field, as `pad_with_distractors` gives.
    Distractors come from `corpus`, the chunk the runner applies the step to: the whole corpus up to
    8,192 documents (corpus.BATCH_ROWS; SciFact and NFCorpus are one chunk), beyond that the chunk."""
    ids = list(corpus)
    full = [title_text(corpus[d], title_sep) for d in ids]
    offsets = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    lengths = [len(o) for o in offsets]
    budget = total - tokenizer.num_special_tokens_to_add()
    pool = [j for j, d in enumerate(ids) if d not in judged and lengths[j] > 0]

    def filler(need: int, rng: random.Random, own: int) -> tuple[list[str], int]:
        parts, got = [], 0
        for _ in range(100_000):  # bounded: a pool holding only the needle itself cannot loop forever
            if got >= need or not pool or pool == [own]:
                break
            j = pool[rng.randrange(len(pool))]
            if j == own:
                continue
            take = min(lengths[j], need - got)
            parts.append(full[j] if take == lengths[j] else full[j][:offsets[j][take - 1][1]])
            got += take
        return parts, got

    out, planned, short, starts = {}, [], 0, []
    for i, did in enumerate(ids):
        rng = random.Random(f"{seed}:{did}")
        need = max(budget - lengths[i], 0)
        before_need = {"start": 0, "middle": need // 2, "end": need}[position]
        before, got_before = filler(before_need, rng, i)
        after, got_after = filler(need - before_need, rng, i)
        out[did] = dict(title="", text=" ".join([*before, full[i], *after]).strip())
        length = got_before + lengths[i] + got_after
        planned.append(length)
        short += length < budget
        starts.append(got_before / max(length, 1))
    return out, dict(_stats(corpus, out), target_tokens=total, mean_tokens=sum(planned) / max(len(ids), 1),
                     documents_short_of_target=short, distractor_pool=len(pool),
                     mean_needle_start=sum(starts) / max(len(ids), 1))
