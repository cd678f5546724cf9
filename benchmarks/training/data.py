"""Training data: the TRAIN split's queries and relevant pairs, corpus documents, the teacher's
embeddings (through the embedding cache) and seeded batches that depend on (seed, step) only."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from ..pipeline.cache import EmbeddingCache
from ..pipeline.data import load_dataset
from ..pipeline.embed import embed_texts
from .config import TrainConfig, TrainError


@dataclass
class TrainData:
    """Training texts: TRAIN-split queries and corpus documents, as the student sees them."""
    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    docs: list[str]
    pairs: np.ndarray  # (n, 2): query index, relevant document index
    relevant: list[set[int]]  # per query: indices of its relevant documents
    describe: dict


def load_train_data(cfg: TrainConfig, student):
    """-> (TrainData, the train split's Dataset)."""
    ds = load_dataset(cfg.dataset, "train", cfg.data_dir)  # the train split only: no test query is read
    doc_ids = list(ds.corpus)[:cfg.limit_docs]
    position = {d: i for i, d in enumerate(doc_ids)}
    query_ids = list(ds.queries)
    relevant = [{position[d] for d, s in ds.qrels[q].items() if s > 0 and d in position} for q in query_ids]
    pairs = np.array([(qi, di) for qi, rel in enumerate(relevant) for di in sorted(rel)], dtype=np.int64)
    if len(pairs) == 0:
        raise TrainError(f"no train query of {ds.name!r} has a relevant document in the corpus used")
    queries = student.query_texts([ds.queries[q] for q in query_ids])
    docs = student.corpus_texts([ds.corpus[d] for d in doc_ids])
    digest = hashlib.sha256("\x1e".join(queries + docs).encode()).hexdigest()
    describe = dict(
        dataset=ds.name, path=str(ds.path), split="train", queries=len(queries), documents=len(docs),
        pairs=len(pairs), texts_digest=digest, query_ids_digest=hashlib.sha256("\x1e".join(query_ids).encode()).hexdigest(),
        test_queries_used=False,
        transductive=("the documents are the whole corpus, which the test queries are searched in: distilling "
                      "on them is transductive (the model has seen every document it will retrieve)"),
    )
    return TrainData(query_ids, queries, doc_ids, docs, pairs, relevant, describe), ds


def teacher_embeddings(teacher, queries: list[str], docs: list[dict], cache: EmbeddingCache):
    """The teacher's (normalised) embeddings of the train queries and the documents -> (tq, td), from
    the embedding cache when an entry exists (keyed by the teacher's fingerprint and the exact texts;
    the corpus entry is the one `benchmarks.run` writes for the same model and max length)."""
    out = []
    for texts, what in ((teacher.query_texts(queries), "teacher queries"), (teacher.corpus_texts(docs), "teacher corpus")):
        emb, _ = embed_texts(teacher, texts, what, cache, measure=False)
        out.append(emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12))
    return out[0], out[1]


def mine_hard_negatives(tq: np.ndarray, td: np.ndarray, relevant: list[set[int]], k: int) -> list[np.ndarray]:
    """Per train query: the teacher's top-k documents that are not judged relevant."""
    out = []
    for qi in range(len(tq)):
        top = np.argsort(-(td @ tq[qi]), kind="stable")[:k + len(relevant[qi])]
        out.append(np.array([d for d in top if d not in relevant[qi]][:k], dtype=np.int64))
    return out


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, stream, epoch]).permutation(n)


def sample(n: int, per_step: int, step: int, seed: int, stream: int) -> np.ndarray:
    """Items [step * per_step, (step + 1) * per_step) of an endless sequence of seeded epochs
    (permutations of range(n)): the batch of a step depends on (seed, step) only, so a resumed run
    sees exactly the data an uninterrupted one would."""
    i = np.arange(step * per_step, (step + 1) * per_step)
    return np.array([_permutation(n, seed, stream, int(e))[p] for e, p in zip(i // n, i % n)], dtype=np.int64)


def make_batch(data: TrainData, cfg: TrainConfig, step: int, negatives: list[np.ndarray] | None):
    """(query indices, document indices, target of each query in the document list)."""
    pairs = data.pairs[sample(len(data.pairs), cfg.batch_pairs, step, cfg.seed, 0)]
    docs = list(pairs[:, 1])
    if cfg.batch_docs:
        docs += list(sample(len(data.docs), cfg.batch_docs, step, cfg.seed, 1))
    if negatives is not None:
        rng = np.random.default_rng([cfg.seed, 2, step])
        docs += [int(rng.choice(negatives[q])) for q in pairs[:, 0] if len(negatives[q])]
    docs = list(dict.fromkeys(int(d) for d in docs))  # a document once, even if drawn twice
    where = {d: i for i, d in enumerate(docs)}
    return pairs[:, 0], np.array(docs, dtype=np.int64), np.array([where[int(d)] for d in pairs[:, 1]])
