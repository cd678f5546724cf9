"""Training data: the TRAIN split's queries and relevant pairs and the corpus documents of each
dataset of the mix, the teacher's embeddings (through the embedding cache) and seeded batches that
depend on (seed, step) only."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from ..pipeline.cache import EmbeddingCache
from ..pipeline.data import Dataset, load_dataset
from ..pipeline.embed import embed_texts
from .config import TrainConfig, TrainError


TRAIN_SPLIT = "train"  # the only split training reads: test queries and test qrels never reach it


@dataclass
class TrainData:
    """Training texts: TRAIN-split queries and corpus documents of every dataset of the mix, as the
    student sees them. Indices run over the whole mix (dataset after dataset)."""
    query_ids: list[str]  # "<dataset>/<query id>"
    queries: list[str]
    doc_ids: list[str]  # "<dataset>/<document id>"
    docs: list[str]
    pairs: np.ndarray  # (n, 2): query index, relevant document index
    relevant: list[set[int]]  # per query: indices of its relevant documents
    sources: list[tuple[list[str], list[dict]]]  # per dataset: raw queries and documents (the teacher's input)
    describe: dict

    def __post_init__(self):
        self.trainable = np.unique(self.pairs[:, 0])  # the queries with a relevant document in the corpus used


def load_train_split(name: str, data_dir) -> Dataset:
    """A dataset's TRAIN split: its train qrels and the queries they judge, and its corpus. The one
    door through which training reads a dataset."""
    ds = load_dataset(name, TRAIN_SPLIT, data_dir)
    if ds.split != TRAIN_SPLIT:  # a guard against a future change of the call above
        raise TrainError(f"training may read only the {TRAIN_SPLIT!r} split, got {ds.split!r} of {name!r}")
    return ds


def load_train_data(cfg: TrainConfig, student) -> TrainData:
    """The training mix: for each dataset its TRAIN queries and qrels and its corpus (the distillation
    text). Test queries and test qrels are never read."""
    query_ids, queries, doc_ids, docs, pairs, relevant, sources, parts = [], [], [], [], [], [], [], []
    for name in cfg.datasets:
        ds = load_train_split(name, cfg.data_dir)
        ids = list(ds.corpus)[:cfg.limit_docs]
        position = {d: len(docs) + i for i, d in enumerate(ids)}
        qids = list(ds.queries)
        rel = [{position[d] for d, s in ds.qrels[q].items() if s > 0 and d in position} for q in qids]
        mine = [(len(queries) + qi, di) for qi, r in enumerate(rel) for di in sorted(r)]
        if not mine:
            raise TrainError(f"no train query of {ds.name!r} has a relevant document in the corpus used")
        raw_queries, raw_docs = [ds.queries[q] for q in qids], [ds.corpus[d] for d in ids]
        query_ids += [f"{ds.name}/{q}" for q in qids]
        doc_ids += [f"{ds.name}/{d}" for d in ids]
        queries += student.query_texts(raw_queries)
        docs += student.corpus_texts(raw_docs)
        pairs += mine
        relevant += rel
        sources.append((raw_queries, raw_docs))
        parts.append(dict(dataset=ds.name, path=str(ds.path), split=ds.split, queries=len(qids), documents=len(ids),
                          pairs=len(mine)))
    digest = hashlib.sha256("\x1e".join(queries + docs).encode()).hexdigest()
    describe = dict(
        mix=parts, dataset="+".join(p["dataset"] for p in parts), split=TRAIN_SPLIT, queries=len(queries),
        documents=len(docs), pairs=len(pairs), texts_digest=digest,
        query_ids_digest=hashlib.sha256("\x1e".join(query_ids).encode()).hexdigest(),
        test_queries_used=False, test_qrels_used=False,
        sampling="per step: batch_pairs train queries (seeded epochs over all queries of the mix), each with "
                 "one of its relevant documents, plus batch_docs random documents of the mix",
        transductive=("the documents are the whole corpora of these datasets, which their test queries are "
                      "searched in: evaluating on those test splits is transductive (every document seen, "
                      "without labels); a dataset outside the mix is zero-shot"),
    )
    return TrainData(query_ids, queries, doc_ids, docs, np.array(pairs, dtype=np.int64), relevant, sources, describe)


def teacher_embeddings(teacher, sources: list[tuple[list[str], list[dict]]], cache: EmbeddingCache):
    """The teacher's (normalised) embeddings of the train queries and the documents of every dataset
    of the mix -> (tq, td), through the embedding cache (keyed by the teacher's fingerprint and the
    exact texts, one entry per dataset: the corpus entry is the one `benchmarks.run` writes for the
    same model and max length)."""
    out = [[], []]
    for queries, docs in sources:
        for i, (texts, what) in enumerate(((teacher.query_texts(queries), "teacher queries"),
                                            (teacher.corpus_texts(docs), "teacher corpus"))):
            emb, _ = embed_texts(teacher, texts, what, cache, measure=False)
            out[i].append(emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12))
    return np.concatenate(out[0]), np.concatenate(out[1])


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
    """(query indices, document indices, target of each query in the document list).

    Queries, not (query, document) pairs, are what an epoch runs over: a query with many judged
    documents (NFCorpus averages 43) would otherwise fill most batches of a mix. Each drawn query
    brings one of its relevant documents, chosen by (seed, step, slot)."""
    q = data.trainable[sample(len(data.trainable), cfg.batch_pairs, step, cfg.seed, 0)]
    rng = np.random.default_rng([cfg.seed, 3, step])
    pos = [int(rng.choice(sorted(data.relevant[i]))) for i in q]
    docs = list(pos)
    if cfg.batch_docs:
        docs += list(sample(len(data.docs), cfg.batch_docs, step, cfg.seed, 1))
    if negatives is not None:
        rng = np.random.default_rng([cfg.seed, 2, step])
        docs += [int(rng.choice(negatives[i])) for i in q if len(negatives[i])]
    docs = list(dict.fromkeys(int(d) for d in docs))  # a document once, even if drawn twice
    where = {d: i for i, d in enumerate(docs)}
    return q, np.array(docs, dtype=np.int64), np.array([where[d] for d in pos])
