"""Documents longer than an encoder's window (`--long-doc first|maxp|mean`, `--window`, `--stride`).

    first   the document as it is: the encoder truncates it at its max length (the behaviour before
            this option existed; nothing in this module runs)
    maxp    every window is embedded and searched; a document scores as its best window (MaxP, Dai and
            Callan 2019, "Deeper Text Understanding for IR with Contextual Neural Language Modeling")
    mean    a document is the mean of its window embeddings, normalised as the encoder normalises

Windows are cut in tokens of the encoder's own tokenizer: the text (not the title) is tokenized once
with character offsets, and window k takes body tokens [k x stride, k x stride + body), where body is
the window (`--window`, default the encoder's max length) less what the title, the encoder's document
prefix and its special tokens take. Every window repeats the title, joined by the title+text rule of
encoders/base.py (`Encoder.corpus_texts`), so a window of the middle of an abstract still says what
the abstract is about. Cuts are moved back to the start of a word, so a window's text re-tokenizes to
the same tokens (WordPiece splits at whitespace and punctuation, never inside a word it starts); a
single word longer than a window is cut where it must be. The default stride is the body: windows
tile the text without overlap, the cheapest cover; a smaller `--stride` overlaps them.

The runner's dense retriever calls three hooks (pipeline/retrievers.py): `texts` (what to embed),
`fold` (window embeddings -> what is searched) and `search`.
"""

from __future__ import annotations

import math

import numpy as np

from encoders import EncoderError

from . import index
from .embed import Texts

RULES = ("first", "maxp", "mean")


def check_options(cfg, searches_vectors: bool) -> None:
    """The options alone, before anything is loaded (one line naming the option at fault)."""
    if cfg.long_doc not in RULES:
        raise EncoderError(f"--long-doc must be one of {', '.join(RULES)}, got {cfg.long_doc!r}")
    for name in ("window", "stride"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise EncoderError(f"--{name} must be positive, got {value}")
        if value is not None and cfg.long_doc == "first":
            raise EncoderError(f"--{name} applies to --long-doc maxp or mean (first truncates at --max-length)")
    if cfg.long_doc != "first" and not searches_vectors:
        raise EncoderError(f"--long-doc {cfg.long_doc}: {cfg.encoder} does not embed documents (only first applies)")
    if cfg.long_doc == "maxp" and cfg.index != index.EXACT:
        raise EncoderError(f"--long-doc maxp searches windows exactly; --index {cfg.index} applies to first and mean")


class LongDocs:
    """One run's rule; `texts` remembers which document each window came from, for `fold` and `search`."""

    def __init__(self, rule: str = "first", window: int | None = None, stride: int | None = None):
        self.rule, self.window, self.stride = rule, window, stride
        self.owner: np.ndarray | None = None  # document index of each window, ascending
        self.summary: dict = {}

    def texts(self, encoder, docs: list[dict]) -> list[str]:
        if self.rule == "first":
            return encoder.corpus_texts(docs)
        window = self.window or encoder.max_length
        if window > encoder.max_length:
            raise EncoderError(f"--window {window} exceeds --max-length {encoder.max_length}: the encoder would cut it")
        texts, owner, strides = split(encoder, docs, window, self.stride)
        self.owner = owner
        counts = np.bincount(owner, minlength=len(docs))
        self.summary = dict(rule=self.rule, window=window, stride=self.stride, windows=len(texts),
                            windows_per_document_mean=float(counts.mean()) if len(docs) else 0.0,
                            windows_per_document_max=int(counts.max()) if len(docs) else 0,
                            stride_mean=float(np.mean(strides)) if strides else None)
        return texts

    def as_texts(self, encoder, corpus) -> Texts:
        """What the runner embeds: the documents, streamed from the corpus file a chunk at a time (first),
        or their windows, cut and held in memory (maxp, mean: corpora of long documents are small here)."""
        if self.rule == "first":
            return Texts.of_corpus(corpus, encoder)
        return Texts.of_list(self.texts(encoder, list(corpus.values())))

    def fold(self, store, normalize: bool):
        """The embedding store -> what is searched: the store itself (first), its window rows (maxp), or
        each document's mean window (mean)."""
        if self.rule == "first":
            return store
        emb = store if isinstance(store, np.ndarray) else store.array()
        return mean_fold(emb, self.owner, normalize) if self.rule == "mean" else emb

    def search(self, emb: np.ndarray, doc_ids: list[str], query_emb: np.ndarray, query_ids: list[str], top_k: int):
        if self.rule == "maxp":
            return maxp_search(emb, self.owner, doc_ids, query_emb, query_ids, top_k)
        return index.search(emb, doc_ids, query_emb, query_ids, top_k=top_k)

    def stats(self) -> dict:
        return {"long_doc": self.summary} if self.summary else {}


# -- windows --------------------------------------------------------------------------------------
def split(encoder, docs: list[dict], window: int, stride: int | None) -> tuple[list[str], np.ndarray, list[int]]:
    """-> (window texts as the encoder sees them, owner document index per window, stride used per
    document). A document that fits is one window, its own text."""
    tok = encoder.tokenizer
    if not getattr(tok, "is_fast", False):
        raise EncoderError("--long-doc maxp/mean cuts windows at token offsets, which needs a fast tokenizer")
    bodies = [d.get("text", "") or "" for d in docs]
    enc = tok(bodies, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    heads = encoder.corpus_texts([{"title": d.get("title", "") or "", "text": ""} for d in docs])
    head_tokens = [len(x) for x in tok(heads, add_special_tokens=True, verbose=False)["input_ids"]]
    texts, owner, strides = [], [], []
    for i, doc in enumerate(docs):
        offsets = enc["offset_mapping"][i]
        body = max(window - head_tokens[i], window // 2, 1)  # a title longer than half a window is cut by the encoder
        step = min(stride or body, body)  # never a gap: a long title shortens the body, and the stride with it
        spans = cut(word_starts(enc.word_ids(i)), len(offsets), body, step)
        strides.append(step)
        for start, end in spans:
            part = bodies[i][offsets[start][0]:offsets[end - 1][1]] if end > start else bodies[i]
            texts.append(encoder.corpus_texts([dict(doc, text=part)])[0])
            owner.append(i)
    return texts, np.asarray(owner, dtype=np.int64), strides


def word_starts(word_ids: list) -> np.ndarray:
    """Whether each token begins a word (a window may start there without splitting a word)."""
    return np.array([j == 0 or w is None or w != word_ids[j - 1] for j, w in enumerate(word_ids)], dtype=bool)


def cut(starts: np.ndarray, n: int, body: int, stride: int) -> list[tuple[int, int]]:
    """Token spans [start, end) of at most `body` tokens, one every `stride` tokens, each cut moved back
    to a word start (unless that would make no progress), covering all n tokens."""
    if n <= body:
        return [(0, n)]

    def snap(pos: int, floor: int) -> int:
        back = pos
        while back > floor and not starts[back]:
            back -= 1
        return back if back > floor else pos

    spans, start = [], 0
    while True:
        if start + body >= n:
            spans.append((start, n))
            return spans
        end = snap(start + body, start)
        spans.append((start, end))
        start = end if stride == body else snap(start + stride, start)


# -- folding windows to documents -----------------------------------------------------------------
def mean_fold(emb: np.ndarray, owner: np.ndarray, normalize: bool) -> np.ndarray:
    """The mean of each document's window embeddings (windows of one document are contiguous), in float64
    then float32; unit length when the encoder normalises its embeddings."""
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    counts = np.diff(np.r_[starts, len(owner)])
    out = np.add.reduceat(emb.astype(np.float64), starts, axis=0) / counts[:, None]
    if normalize:
        out /= np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)
    return out.astype(np.float32)


def maxp_search(win_emb: np.ndarray, owner: np.ndarray, doc_ids: list[str], query_emb: np.ndarray,
                query_ids: list[str], top_k: int = 100) -> tuple[dict, dict]:
    """Top-k documents per query, a document scoring as its best window -> (run in trec_eval order, stats).

    Windows are searched exactly (IndexFlatIP), k' at a time. With s the k'-th window score, every
    document whose best window scores above s has that window among the k' (all windows above s are),
    so its score is exact and it outranks every document not seen. A query is done once at least top_k
    such documents exist; otherwise k' doubles, up to every window. Ties are then cut by document id,
    descending, as pipeline/index.py does (trec_eval's rule)."""
    import faiss

    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    doc_ids = doc_ids.to_pylist() if hasattr(doc_ids, "to_pylist") else list(doc_ids)  # an Arrow column: str ids
    n_win = len(owner)
    ix = faiss.IndexFlatIP(win_emb.shape[1])
    ix.add(np.ascontiguousarray(win_emb, dtype=np.float32))
    query_emb = np.ascontiguousarray(query_emb, dtype=np.float32)
    want = min(top_k, len(doc_ids))
    k = min(n_win, (want + 1) * math.ceil(n_win / max(len(doc_ids), 1)))  # enough if windows were spread evenly
    found: dict[int, dict[int, float]] = {}
    open_ = list(range(len(query_ids)))
    searches = 0
    while open_:
        scores, idx = ix.search(query_emb[open_], k)
        searches += 1
        still = []
        for row, q in enumerate(open_):
            best: dict[int, float] = {}
            for s, w in zip(scores[row], idx[row]):
                d = int(owner[w])
                if d not in best:  # rows come best first: a document's first window is its best
                    best[d] = float(s)
            if k < n_win:
                best = {d: s for d, s in best.items() if s > float(scores[row][-1])}
            if len(best) >= want or k >= n_win:
                found[q] = best
            else:
                still.append(q)
        open_, k = still, min(n_win, 2 * k)
    run, tied_pairs, pairs = {}, 0, 0
    for q, qid in enumerate(query_ids):
        hits = sorted(((s, doc_ids[d]) for d, s in found[q].items()), reverse=True)[:top_k]
        pairs += max(len(hits) - 1, 0)
        tied_pairs += sum(1 for a, b in zip(hits, hits[1:]) if a[0] == b[0])
        run[qid] = {did: s for s, did in hits}
    return run, dict(top_k=top_k, tie_rate=tied_pairs / pairs if pairs else 0.0, windows_searched=n_win,
                     window_searches=searches)
