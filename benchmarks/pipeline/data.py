"""BEIR-format datasets: find, (download,) load and validate.

Layout: `<dataset>/corpus.jsonl`, `<dataset>/queries.jsonl`, `<dataset>/qrels/<split>.tsv`.
Searched in --data-dir, then $BEIR_DATA_DIR, then ./data. An official BEIR dataset found in none of
them is downloaded into the first (`download.py`: BEIR's archive, then its Hugging Face mirrors).

Real corpora have oddities that are warnings with counts, not errors: empty documents (still
indexed) and judged documents missing from the corpus (kept in the ideal ranking, as trec_eval
does). Everything else that is malformed is a `DataError` naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import Corpus, duplicate


SLICE_RECORD = "slice.json"  # written by benchmarks.slice_dataset into the folders it makes


class DataError(Exception):
    """Missing or malformed dataset files; the CLI prints it as one line."""


@dataclass
class Dataset:
    name: str
    path: Path
    split: str
    corpus: Corpus  # doc id -> {"title": str, "text": str}, held once (pipeline/corpus.py)
    queries: dict[str, str]  # judged queries of this split only, qrels order
    qrels: dict[str, dict[str, int]]
    warnings: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict:
        out = dict(name=self.name, path=str(self.path), split=self.split, documents=len(self.corpus),
                   queries=len(self.queries), judgments=sum(len(v) for v in self.qrels.values()),
                   warnings=self.warnings)
        rule = Path(self.path) / SLICE_RECORD
        if rule.is_file():  # a slice (benchmarks.slice_dataset): how it was drawn goes with every score on it
            out["slice"] = json.loads(rule.read_text())
        return out


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("BEIR_DATA_DIR"):
        dirs.append(Path(os.environ["BEIR_DATA_DIR"]))
    dirs.append(Path("data"))
    return dirs


def find_dataset(name: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding dataset `name` (a name, or a path to a BEIR folder); an official BEIR dataset
    found nowhere is downloaded (`download.fetch`) unless `download` is False."""
    direct = Path(name)
    if (direct / "corpus.jsonl").is_file():
        return direct
    dirs = search_dirs(data_dir)
    for d in dirs:
        if (d / name / "corpus.jsonl").is_file():
            return d / name
    looked = ", ".join(str(d / name) for d in dirs)
    from benchmarks.pipeline.download import BEIR_MD5, by_hand, fetch  # here: it imports DataError from this module

    if download and name in BEIR_MD5:
        try:
            return fetch(name, dirs[0])
        except OSError as e:  # e.g. a read-only data directory
            raise DataError(f"dataset {name!r} not found (looked in {looked}) and it cannot be downloaded into "
                            f"{dirs[0]}: {e.strerror or e}") from None
        except DataError as e:
            raise DataError(f"dataset {name!r} not found (looked in {looked}); tried {e}; "
                            f"{by_hand(name, dirs[0])}, or pass --data-dir") from None
    hint = "" if name in BEIR_MD5 else f" ({name!r} is not an official BEIR dataset, so it cannot be downloaded)"
    raise DataError(f"dataset {name!r} not found (looked in {looked}){hint}; put the BEIR folder "
                    "(corpus.jsonl, queries.jsonl, qrels/) in one of those places or pass --data-dir")


def read_jsonl(path: Path, kind: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) pairs, streamed; `kind` names what a record is, for messages."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            if "_id" not in record:
                raise DataError(f"{path}:{lineno}: {kind} has no '_id' field")
            for key in ("text", "title"):
                if key in record and record[key] is not None and not isinstance(record[key], str):
                    raise DataError(f"{path}:{lineno}: {kind} field {key!r} is {type(record[key]).__name__}, not a string")
            yield lineno, record


def read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], int]:
    """BEIR qrels TSV (query-id, corpus-id, score; header optional) -> (qrels, duplicate rows)."""
    qrels: dict[str, dict[str, int]] = {}
    duplicates = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n\r").split("\t")
            if len(parts) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                                f"got {len(parts)}")
            qid, did, score = (p.strip() for p in parts)
            try:
                value = int(score)
            except ValueError:
                if lineno == 1:  # the header line
                    continue
                raise DataError(f"{path}:{lineno}: relevance score {score!r} is not an integer") from None
            judged = qrels.setdefault(qid, {})
            if did in judged:
                if judged[did] != value:
                    raise DataError(f"{path}:{lineno}: query {qid!r} judges document {did!r} twice, "
                                    f"with scores {judged[did]} and {value}")
                duplicates += 1
            judged[did] = value
    return qrels, duplicates


def load_dataset(name: str, split: str = "test", data_dir: str | Path | None = None,
                 download: bool = True, store: Path | None = None) -> Dataset:
    """The dataset; its corpus streamed into an Arrow file at `store` (memory-mapped), else held in memory."""
    path = find_dataset(name, data_dir, download)
    qrels_path = path / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
        raise DataError(f"no qrels for split {split!r}: {qrels_path} is missing "
                        f"(splits found: {', '.join(found) or 'none'})")
    corpus, empty = read_corpus(path / "corpus.jsonl", store)
    all_queries = read_queries(path / "queries.jsonl")
    qrels, duplicate_judgments = read_qrels(qrels_path)
    if not qrels:
        raise DataError(f"{qrels_path}: no judgments")
    queries = judged_queries(all_queries, qrels, path / "queries.jsonl", qrels_path)
    judged = [d for j in qrels.values() for d in j]
    warnings = {
        "empty_documents": empty,
        "judged_documents_missing_from_corpus": int((corpus.rows(judged) < 0).sum()) if judged else 0,
        "duplicate_judgments": duplicate_judgments,
    }
    return Dataset(name=path.name if Path(name) == path else name, path=path, split=split, corpus=corpus,
                   queries=queries, qrels=qrels, warnings={k: v for k, v in warnings.items() if v})


def read_corpus(corpus_file: Path, store: Path | None) -> tuple[Corpus, int]:
    """-> (corpus, number of empty documents). A duplicate id is found after the pass, by Arrow."""
    empty = 0

    def docs():
        nonlocal empty
        for _, rec in read_jsonl(corpus_file, "document"):
            title, text = rec.get("title") or "", rec.get("text") or ""
            empty += not (title.strip() or text.strip())
            yield str(rec["_id"]), title, text

    corpus = Corpus.write(docs(), store)
    if not len(corpus):
        raise DataError(f"{corpus_file}: no documents")
    if (did := duplicate(corpus.ids)) is not None:
        first, again = [n for n, rec in read_jsonl(corpus_file, "document") if str(rec["_id"]) == did][:2]
        raise DataError(f"{corpus_file}:{again}: duplicate document id {did!r} (first at line {first})")
    return corpus, empty


def read_queries(queries_file: Path) -> dict[str, tuple[int, str]]:
    """Every query -> (line number, text)."""
    all_queries: dict[str, tuple[int, str]] = {}
    for lineno, rec in read_jsonl(queries_file, "query"):
        qid = str(rec["_id"])
        if qid in all_queries:
            raise DataError(f"{queries_file}:{lineno}: duplicate query id {qid!r} (first at line {all_queries[qid][0]})")
        all_queries[qid] = (lineno, rec.get("text") or "")
    return all_queries


def judged_queries(all_queries: dict, qrels: dict, queries_file: Path, qrels_path: Path) -> dict[str, str]:
    """The judged queries' texts, in qrels order."""
    out = {}
    for qid in qrels:
        if qid not in all_queries:
            raise DataError(f"{qrels_path}: judges query {qid!r}, which has no text in {queries_file}")
        lineno, text = all_queries[qid]
        if not text.strip():
            raise DataError(f"{queries_file}:{lineno}: query {qid!r} is empty (it is judged in {qrels_path.name})")
        out[qid] = text
    return out
