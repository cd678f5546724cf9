"""BEIR-format datasets: find, (download,) load and validate.

Layout: `<dataset>/corpus.jsonl`, `<dataset>/queries.jsonl`, `<dataset>/qrels/<split>.tsv`.
Searched in --data-dir, then $BEIR_DATA_DIR, then ./data. When absent and the network is reachable,
the official BEIR archive is downloaded into the first of those and its md5 checked.

Real corpora have oddities that are warnings with counts, not errors: empty documents (still
indexed) and judged documents missing from the corpus (kept in the ideal ranking, as trec_eval
does). Everything else that is malformed is a `DataError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


class DataError(Exception):
    """Missing or malformed dataset files; the CLI prints it as one line."""


BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# md5 of the official archives, from the dataset table in BEIR's README.
BEIR_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4", "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d", "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114", "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99", "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78", "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c", "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03", "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}


@dataclass
class Dataset:
    name: str
    path: Path
    split: str
    corpus: dict[str, dict]  # doc id -> {"title": str, "text": str}
    queries: dict[str, str]  # judged queries of this split only, qrels order
    qrels: dict[str, dict[str, int]]
    warnings: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict:
        return dict(name=self.name, path=str(self.path), split=self.split, documents=len(self.corpus),
                    queries=len(self.queries), judgments=sum(len(v) for v in self.qrels.values()),
                    warnings=self.warnings)


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("BEIR_DATA_DIR"):
        dirs.append(Path(os.environ["BEIR_DATA_DIR"]))
    dirs.append(Path("data"))
    return dirs


def find_dataset(name: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding dataset `name` (a name, or a path to a BEIR folder)."""
    direct = Path(name)
    if (direct / "corpus.jsonl").is_file():
        return direct
    dirs = search_dirs(data_dir)
    for d in dirs:
        if (d / name / "corpus.jsonl").is_file():
            return d / name
    looked = ", ".join(str(d / name) for d in dirs)
    if download and name in BEIR_MD5:
        try:
            return download_beir(name, dirs[0])
        except OSError as e:  # e.g. a read-only data directory
            raise DataError(f"dataset {name!r} not found (looked in {looked}) and it cannot be downloaded into "
                            f"{dirs[0]}: {e.strerror or e}") from None
        except DataError as e:
            raise DataError(f"dataset {name!r} not found (looked in {looked}) and {e}; put the BEIR folder "
                            "in one of those places or pass --data-dir") from None
    hint = "" if name in BEIR_MD5 else f" ({name!r} is not an official BEIR dataset, so it cannot be downloaded)"
    raise DataError(f"dataset {name!r} not found (looked in {looked}){hint}; put the BEIR folder "
                    "(corpus.jsonl, queries.jsonl, qrels/) in one of those places or pass --data-dir")


def download_beir(name: str, into: Path, timeout: float = 15.0) -> Path:
    url = BEIR_URL.format(name=name)
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as e:
            raise DataError(f"the download from {url} failed ({getattr(e, 'reason', e)})") from None
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        if md5 != BEIR_MD5[name]:
            raise DataError(f"the archive from {url} has md5 {md5}, expected {BEIR_MD5[name]}")
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        os.replace(Path(tmp) / name, into / name)  # atomic: no half-extracted dataset is ever visible
    return into / name


def read_jsonl(path: Path, kind: str) -> list[tuple[int, dict]]:
    """(line number, record) pairs; `kind` names what a record is, for messages."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    rows = []
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
            rows.append((lineno, record))
    return rows


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
                 download: bool = True) -> Dataset:
    path = find_dataset(name, data_dir, download)
    qrels_path = path / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
        raise DataError(f"no qrels for split {split!r}: {qrels_path} is missing "
                        f"(splits found: {', '.join(found) or 'none'})")

    corpus: dict[str, dict] = {}
    seen_at: dict[str, int] = {}
    corpus_file = path / "corpus.jsonl"
    for lineno, rec in read_jsonl(corpus_file, "document"):
        did = str(rec["_id"])
        if did in corpus:
            raise DataError(f"{corpus_file}:{lineno}: duplicate document id {did!r} (first at line {seen_at[did]})")
        seen_at[did] = lineno
        corpus[did] = {"title": rec.get("title") or "", "text": rec.get("text") or ""}
    if not corpus:
        raise DataError(f"{corpus_file}: no documents")

    all_queries: dict[str, tuple[int, str]] = {}
    queries_file = path / "queries.jsonl"
    for lineno, rec in read_jsonl(queries_file, "query"):
        qid = str(rec["_id"])
        if qid in all_queries:
            raise DataError(f"{queries_file}:{lineno}: duplicate query id {qid!r} (first at line {all_queries[qid][0]})")
        all_queries[qid] = (lineno, rec.get("text") or "")

    qrels, duplicate_judgments = read_qrels(qrels_path)
    if not qrels:
        raise DataError(f"{qrels_path}: no judgments")
    queries = {}
    for qid in qrels:
        if qid not in all_queries:
            raise DataError(f"{qrels_path}: judges query {qid!r}, which has no text in {queries_file}")
        lineno, text = all_queries[qid]
        if not text.strip():
            raise DataError(f"{queries_file}:{lineno}: query {qid!r} is empty (it is judged in {qrels_path.name})")
        queries[qid] = text

    warnings = {
        "empty_documents": sum(1 for d in corpus.values() if not (d["title"].strip() or d["text"].strip())),
        "judged_documents_missing_from_corpus": sum(1 for j in qrels.values() for d in j if d not in corpus),
        "duplicate_judgments": duplicate_judgments,
    }
    return Dataset(name=path.name if Path(name) == path else name, path=path, split=split, corpus=corpus,
                   queries=queries, qrels=qrels, warnings={k: v for k, v in warnings.items() if v})
