"""The BEIR loader on every bad input: one clear error naming the file (and line), or a counted warning."""

import json

import pytest

from benchmarks.pipeline.data import DataError, find_dataset, load_dataset
from conftest import TINY_CORPUS, TINY_QRELS, TINY_QUERIES, shared_dataset, write_beir


def test_loads_tiny_dataset_with_warnings(tiny_dataset):
    ds = load_dataset(str(tiny_dataset))
    assert len(ds.corpus) == 6 and list(ds.queries) == ["q1", "q2", "q3"]  # only judged queries
    assert ds.qrels["q2"] == {"d2": 2, "d1": 1}
    assert ds.warnings == {"empty_documents": 1, "judged_documents_missing_from_corpus": 1}
    assert "missing-doc" in ds.qrels["q3"]  # kept: it stays in the ideal ranking


def test_found_through_data_dir_and_env(tiny_dataset, monkeypatch):
    assert find_dataset("tiny", data_dir=tiny_dataset.parent) == tiny_dataset
    monkeypatch.setenv("BEIR_DATA_DIR", str(tiny_dataset.parent))
    assert find_dataset("tiny") == tiny_dataset


def test_missing_dataset_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("BEIR_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        find_dataset("nosuch", data_dir=tmp_path / "cli")
    msg = str(e.value)
    for place in ("cli/nosuch", "env/nosuch", "data/nosuch"):
        assert place in msg
    assert "\n" not in msg


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import urllib.request

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BEIR_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"scifact.*not found.*download.*failed"):
        find_dataset("scifact")
    assert not any((tmp_path / "data").glob("**/*.jsonl"))  # nothing half-extracted


def mutate(tmp_path, corpus=None, queries=None, qrels=None, raw_corpus=None, split="test"):
    root = write_beir(tmp_path / "bad", corpus or TINY_CORPUS, queries or TINY_QUERIES, qrels or TINY_QRELS, split)
    if raw_corpus is not None:
        (root / "corpus.jsonl").write_text(raw_corpus)
    return str(root)


def test_malformed_jsonl_reports_file_and_line(tmp_path):
    lines = [json.dumps(d) for d in TINY_CORPUS]
    lines[2] = '{"_id": "d3", "text": "unterminated'
    path = mutate(tmp_path, raw_corpus="\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: malformed JSON"):
        load_dataset(path)


def test_record_without_id(tmp_path):
    path = mutate(tmp_path, raw_corpus=json.dumps({"text": "no id"}) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:1: document has no '_id'"):
        load_dataset(path)


def test_missing_qrels_split_lists_found_splits(tmp_path):
    path = mutate(tmp_path, split="dev")
    with pytest.raises(DataError, match=r"no qrels for split 'test'.*splits found: dev"):
        load_dataset(path, split="test")


def test_qrels_naming_query_without_text(tmp_path):
    path = mutate(tmp_path, qrels=TINY_QRELS + [("q9", "d1", 1)])
    with pytest.raises(DataError, match=r"judges query 'q9', which has no text"):
        load_dataset(path)


def test_duplicate_document_id(tmp_path):
    path = mutate(tmp_path, corpus=TINY_CORPUS + [{"_id": "d2", "title": "", "text": "again"}])
    with pytest.raises(DataError, match=r"corpus\.jsonl:7: duplicate document id 'd2' \(first at line 2\)"):
        load_dataset(path)


def test_duplicate_query_id(tmp_path):
    path = mutate(tmp_path, queries=TINY_QUERIES + [{"_id": "q1", "text": "again"}])
    with pytest.raises(DataError, match=r"queries\.jsonl:5: duplicate query id 'q1'"):
        load_dataset(path)


def test_empty_judged_query(tmp_path):
    queries = [dict(q) for q in TINY_QUERIES]
    queries[1]["text"] = "   "
    path = mutate(tmp_path, queries=queries)
    with pytest.raises(DataError, match=r"queries\.jsonl:2: query 'q2' is empty"):
        load_dataset(path)


def test_conflicting_duplicate_judgment(tmp_path):
    path = mutate(tmp_path, qrels=TINY_QRELS + [("q1", "d1", 2)])
    with pytest.raises(DataError, match=r"test\.tsv:8: query 'q1' judges document 'd1' twice"):
        load_dataset(path)


def test_malformed_qrels_line(tmp_path):
    root = mutate(tmp_path)
    with open(f"{root}/qrels/test.tsv", "a") as f:
        f.write("q1 d1 1\n")  # spaces, not tabs
    with pytest.raises(DataError, match=r"test\.tsv:8: expected 3 tab-separated fields"):
        load_dataset(root)


def test_missing_queries_file(tmp_path):
    root = mutate(tmp_path)
    (tmp_path / "bad" / "queries.jsonl").unlink()
    with pytest.raises(DataError, match=r"missing file .*queries\.jsonl"):
        load_dataset(root)


def test_cranfield_oddities_are_warnings(tmp_path):
    from conftest import shared_dataset

    ds = load_dataset(str(shared_dataset("cranfield")))
    assert len(ds.corpus) == 1400 and len(ds.queries) == 225
    assert ds.warnings.get("empty_documents") == 2


def test_crlf_qrels_as_in_beirs_archives(tmp_path):
    """BEIR's archives end qrels lines with CRLF (nfcorpus's do): no id or score may keep the '\\r'."""
    root = write_beir(tmp_path / "crlf", TINY_CORPUS, TINY_QUERIES, TINY_QRELS)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in TINY_QRELS]
    (root / "qrels" / "test.tsv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    ds = load_dataset(str(root))
    assert ds.qrels == load_dataset(str(write_beir(tmp_path / "lf", TINY_CORPUS, TINY_QUERIES, TINY_QRELS))).qrels
    assert not any("\r" in q or "\r" in d for q, judged in ds.qrels.items() for d in judged)


def test_nfcorpus_crlf_qrels_read_in_full():
    path = shared_dataset("nfcorpus")
    assert (path / "qrels" / "test.tsv").read_bytes().count(b"\r\n") > 12000  # really CRLF
    ds = load_dataset(str(path))
    scores = [s for judged in ds.qrels.values() for s in judged.values()]
    # The counts the shared folder's README gives (BEIR's nfcorpus test split).
    assert (len(ds.queries), len(scores), scores.count(2), scores.count(1)) == (323, 12334, 576, 11758)
    assert ds.warnings == {}


def test_slice_keeps_judged_documents_and_honours_max_judged(tmp_path):
    """benchmarks.slice_dataset on real NFCorpus: seeded, every judged document of the kept queries
    present, others up to --documents, --max-judged bounding each query's judged documents."""
    from benchmarks.slice_dataset import slice_dataset

    source = shared_dataset("nfcorpus")
    full = load_dataset(str(source))
    a = slice_dataset(str(source), "test", None, 12, 150, 0, tmp_path / "a", max_judged=6)
    b = slice_dataset(str(source), "test", None, 12, 150, 0, tmp_path / "b", max_judged=6)
    assert (a / "corpus.jsonl").read_bytes() == (b / "corpus.jsonl").read_bytes()
    part = load_dataset(str(a))
    assert len(part.qrels) == 12 and len(part.corpus) == 150
    for qid, judged in part.qrels.items():
        assert judged == full.qrels[qid] and len(judged) <= 6
        assert set(judged) <= set(part.corpus)
    # The slice says how it was drawn, and a dataset loaded from it carries that into run records.
    rule = json.loads((a / "slice.json").read_text())
    assert rule == dict(source="nfcorpus", split="test", queries=12, documents=150, max_judged=6, seed=0,
                        kept=dict(queries=12, documents=150, judged_documents=rule["kept"]["judged_documents"]),
                        source_size=dict(queries=len(full.qrels), documents=len(full.corpus)))
    assert part.describe()["slice"] == rule and "slice" not in full.describe()
    with pytest.raises(DataError, match="exists"):
        slice_dataset(str(source), "test", None, 12, 150, 0, a)
    with pytest.raises(DataError, match="--max-judged 0"):
        slice_dataset(str(source), "test", None, 12, 150, 0, tmp_path / "c", max_judged=0)
