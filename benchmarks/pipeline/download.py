"""Getting an official BEIR dataset onto disk when no local copy exists.

Sources, in order: BEIR's own archive server (the zip, md5-checked), then BEIR's Hugging Face mirrors
`BeIR/<name>` (configs `corpus` and `queries`) and `BeIR/<name>-qrels` (one file per split), fetched
with `huggingface_hub.snapshot_download`, so its cache, `HF_ENDPOINT` and `HF_HUB_OFFLINE` apply and a
copy already in the Hugging Face cache is used without network. The mirrors have held their files as
`corpus.jsonl.gz` and later as parquet; both are read. Either way the result is the BEIR layout
(`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`), checked, and moved into place in one rename,
so no half-written dataset is ever visible.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from benchmarks.pipeline.data import DataError

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
HF_REPOS = ("BeIR/{name}", "BeIR/{name}-qrels")
HF_PATTERNS = ["*.jsonl", "*.jsonl.gz", "*.parquet", "*.tsv", "README.md"]


def fetch(name: str, into: Path) -> Path:
    """`into/name` from the first source that works; a DataError naming every source tried and why it failed."""
    existed = into.exists()
    failures = []
    for get in (download_beir, download_hf):
        try:
            return get(name, into)
        except DataError as e:
            failures.append(str(e))
    if not existed and into.is_dir() and not any(into.iterdir()):
        into.rmdir()  # leave no trace of a failed attempt
    raise DataError("; ".join(failures))


def by_hand(name: str, into: Path) -> str:
    """How to provide dataset `name` without this module's help (for error messages)."""
    corpus_repo, qrels_repo = (r.format(name=name) for r in HF_REPOS)
    return (f"to provide it by hand, unzip {BEIR_URL.format(name=name)} into {into} (giving {into / name}/corpus.jsonl), "
            f"or on a machine with network run `hf download {corpus_repo} --repo-type dataset` and "
            f"`hf download {qrels_repo} --repo-type dataset` and copy its Hugging Face cache folder "
            "($HF_HUB_CACHE, by default ~/.cache/huggingface/hub) to the same place here")


# -- BEIR's archive server -----------------------------------------------------------------------
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


# -- BEIR's Hugging Face mirrors ------------------------------------------------------------------
def download_hf(name: str, into: Path) -> Path:
    corpus_repo, qrels_repo = (r.format(name=name) for r in HF_REPOS)
    try:
        docs_dir, qrels_dir = hf_snapshot(corpus_repo), hf_snapshot(qrels_repo)
    except DataError as e:
        raise DataError(f"the Hugging Face mirrors {corpus_repo} and {qrels_repo} failed ({e})") from None
    corpus, queries = (config_rows(docs_dir, config, corpus_repo) for config in ("corpus", "queries"))
    qrels = qrels_rows(qrels_dir, qrels_repo)
    check_counts(docs_dir, corpus_repo, {"corpus": len(corpus), "queries": len(queries)})
    check_counts(qrels_dir, qrels_repo, {split: len(rows) for split, rows in qrels.items()})

    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into) as tmp:
        folder = Path(tmp) / name
        (folder / "qrels").mkdir(parents=True)
        write_jsonl(folder / "corpus.jsonl", corpus)
        write_jsonl(folder / "queries.jsonl", queries)
        for split, rows in qrels.items():
            with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
                f.write("query-id\tcorpus-id\tscore\n")
                f.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in rows)
        from benchmarks.pipeline.data import load_dataset

        for split in qrels:  # the loader's own checks (ids, judged queries have text, ...) before it is visible
            try:
                load_dataset(str(folder), split, download=False)
            except DataError as e:
                raise DataError(f"the Hugging Face mirrors {corpus_repo} + {qrels_repo} give an invalid dataset: {e}") from None
        os.replace(folder, into / name)
    return into / name


def hf_snapshot(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DataError("huggingface_hub is not installed (pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=HF_PATTERNS))
    except Exception as e:  # huggingface_hub raises LocalEntryNotFoundError, HfHubHTTPError, OSError, ...
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise DataError(f"{repo}: {type(e).__name__}: {reason}") from None


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz", ".parquet", ".tsv")))


def file_key(root: Path, path: Path) -> str:
    """The config or split a mirror file belongs to: `corpus.jsonl.gz` -> corpus, `corpus/corpus-0000-of-0001.parquet`
    -> corpus, `test.tsv` -> test, `data/test-00000-of-00001.parquet` -> test."""
    rel = path.relative_to(root)
    first = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] not in ("data", "qrels") else rel.name
    return first.split(".")[0].split("-")[0]


def read_rows(path: Path) -> list[dict]:
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.name.endswith(".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def config_rows(root: Path, config: str, repo: str) -> list[dict]:
    files = [p for p in data_files(root) if file_key(root, p) == config]
    if not files:
        raise DataError(f"the Hugging Face mirror {repo} has no {config} files (found: "
                        f"{', '.join(str(p.relative_to(root)) for p in data_files(root)) or 'none'})")
    return [row for p in files for row in read_rows(p)]


def qrels_rows(root: Path, repo: str) -> dict[str, list[tuple[str, str, str]]]:
    splits: dict[str, list[tuple[str, str, str]]] = {}
    for path in data_files(root):
        rows = read_rows(path)
        if rows and not {"query-id", "corpus-id", "score"} <= set(rows[0]):
            raise DataError(f"the Hugging Face mirror {repo}: {path.name} has columns {sorted(rows[0])}, "
                            "expected query-id, corpus-id, score")
        # Strings as the mirror holds them: an id like "00123" must not become 123.
        splits.setdefault(file_key(root, path), []).extend((str(r["query-id"]), str(r["corpus-id"]), str(r["score"]))
                                                           for r in rows)
    if not splits:
        raise DataError(f"the Hugging Face mirror {repo} has no qrels files")
    return splits


def card_counts(root: Path) -> dict[str, int]:
    """Row counts the mirror's dataset card declares (`dataset_info` in README.md), per config or split."""
    readme = root / "README.md"
    if not readme.is_file():
        return {}
    import yaml

    parts = readme.read_text(encoding="utf-8").split("---")
    try:
        meta = yaml.safe_load(parts[1]) if len(parts) > 2 else None
    except yaml.YAMLError:
        return {}
    info = (meta or {}).get("dataset_info") or []
    counts = {}
    for entry in info if isinstance(info, list) else [info]:
        for split in entry.get("splits") or []:
            if "num_examples" in split:
                # BeIR/<name>: config `corpus` has one split, `corpus`; BeIR/<name>-qrels: splits test, dev, ...
                counts[entry.get("config_name") if entry.get("config_name") in ("corpus", "queries") else split["name"]] \
                    = int(split["num_examples"])
    return counts


def check_counts(root: Path, repo: str, got: dict[str, int]) -> None:
    for key, expected in card_counts(root).items():
        if key in got and got[key] != expected:
            raise DataError(f"the Hugging Face mirror {repo} gave {got[key]} {key} rows; its dataset card declares {expected}")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
