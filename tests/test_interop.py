"""A registered encoder inside BEIR's and MTEB's own pipelines, on a slice of real SciFact, against this
harness's runner on the same slice."""

import numpy as np
import pytest

import encoders
from benchmarks.pipeline.data import load_dataset
from benchmarks.run import RunConfig, run_benchmark
from conftest import write_scifact_slice

N_QUERIES, N_DISTRACTORS = 20, 60


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    return write_scifact_slice(tmp_path_factory.mktemp("data") / "scifact-slice", N_QUERIES, N_DISTRACTORS)


@pytest.fixture(scope="module")
def ours(scifact_slice, tmp_path_factory):
    return run_benchmark(RunConfig(encoder="bert", dataset=str(scifact_slice), cache=False, show_progress=False,
                                   output_dir=str(tmp_path_factory.mktemp("results")), latency_queries=5))


@pytest.fixture(scope="module")
def minilm():
    return encoders.load("bert", show_progress=False)  # the packaged all-MiniLM-L6-v2, offline


def test_beirs_search_and_evaluation_through_an_encoder(scifact_slice, ours, minilm):
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    corpus, queries, qrels = GenericDataLoader(str(scifact_slice)).load(split="test")
    # BEIR calls encode_queries/encode_corpus with batch_size, show_progress_bar and convert_to_tensor.
    retriever = EvaluateRetrieval(DenseRetrievalExactSearch(minilm, batch_size=64, show_progress_bar=False),
                                  score_function="cos_sim", k_values=[1, 10, 100])
    results = retriever.retrieve(corpus, queries)
    ndcg, _map, recall, _ = retriever.evaluate(qrels, results, retriever.k_values)
    # Same model and texts, so the same embeddings up to fp32 summation order (other batch
    # compositions); BEIR rounds its means to 5 decimals.
    assert ndcg["NDCG@10"] == pytest.approx(ours.summary["metrics"]["ndcg@10"], abs=1e-4)
    assert recall["Recall@100"] == pytest.approx(ours.summary["metrics"]["recall@100"], abs=1e-4)
    for q in queries:  # the same best document with the same cosine
        (d1, s1), (d2, s2) = max(results[q].items(), key=lambda x: x[1]), next(iter(ours.run[q].items()))
        assert d1 == d2 and s1 == pytest.approx(s2, abs=1e-5)


def test_encode_corpus_takes_every_corpus_form_beir_passes(minilm):
    import torch

    docs = [{"title": "Mitochondria", "text": "The mitochondrion produces most of the cell's ATP."},
            {"title": "", "text": "Shock waves form when an aircraft exceeds the speed of sound."}]
    as_list = minilm.encode_corpus(docs, batch_size=8, show_progress_bar=False)
    as_columns = minilm.encode_corpus({"title": [d["title"] for d in docs], "text": [d["text"] for d in docs]},
                                      batch_size=8, convert_to_tensor=True)
    assert isinstance(as_columns, torch.Tensor) and torch.equal(as_columns, torch.from_numpy(as_list))
    as_strings = minilm.encode_corpus([d["title"] + " " + d["text"] for d in docs])
    np.testing.assert_array_equal(as_strings[1], as_list[1])  # an empty title: the same text
    with pytest.raises(TypeError, match="does not support prompt"):
        minilm.encode_queries(["q"], prompt="query: ")  # would change the embeddings: refused, not ignored


def local_mteb_task(folder):
    """An MTEB retrieval task over a BEIR folder, loaded from disk (no hub)."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    ds = load_dataset(str(folder))

    class SciFactSlice(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="SciFactSlice", type="Retrieval", main_score="ndcg_at_10", description="A slice of SciFact.",
            reference="https://github.com/allenai/scifact", dataset={"path": "NA", "revision": "NA"},
            category="t2t", eval_splits=["test"], eval_langs=["eng-Latn"], date=("2020-01-01", "2020-12-31"),
            dialect=[], domains=["Academic"], task_subtypes=[], license="https://creativecommons.org/licenses/by-nc/2.0/",
            annotations_creators="expert-annotated", modalities=["text"], sample_creation="found",
            bibtex_citation="")

        def load_data(self, num_proc=None, **kwargs):
            split = RetrievalSplitData(
                queries=Dataset.from_list([{"id": q, "text": t} for q, t in ds.queries.items()]),
                corpus=Dataset.from_list([{"id": d, **doc} for d, doc in ds.corpus.items()]),
                relevant_docs=ds.qrels, top_ranked=None)
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return SciFactSlice()


def test_mtebs_retrieval_evaluation_through_an_encoder(scifact_slice, ours, minilm):
    mteb = pytest.importorskip("mteb")
    from encoders.mteb_model import MTEBModel

    result = mteb.evaluate(MTEBModel(minilm), local_mteb_task(scifact_slice), cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    assert scores["main_score"] == scores["ndcg_at_10"]
    assert scores["ndcg_at_10"] == pytest.approx(ours.summary["metrics"]["ndcg@10"], abs=1e-4)
    assert scores["recall_at_100"] == pytest.approx(ours.summary["metrics"]["recall@100"], abs=1e-4)
