"""Batch-1 latency in repeats (benchmarks/pipeline/measure.py), on a fake clock."""

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.pipeline import measure
from benchmarks.pipeline.corpus import Corpus


def fake_clock(monkeypatch, durations_ms):
    """Each call advances measure's clock by the next duration; returns the queries seen."""
    now, seen, it = [0.0], [], iter(durations_ms)
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def call(query):
        seen.append(query)
        now[0] += next(it) / 1e3
    return call, seen


def test_warmup_then_repeats_over_the_same_queries(monkeypatch):
    # 2 warm-up calls (untimed: 1000 ms), then 3 rounds of 4 calls; round 2 is twice as slow.
    call, seen = fake_clock(monkeypatch, [1000, 1000] + [1, 2, 3, 4] + [2, 4, 6, 8] + [1, 2, 3, 4])
    lat = measure.time_calls(call, ["a", "b", "c"], n=4, repeats=3, warmup=2)
    assert seen == ["a", "b"] + ["a", "b", "c", "a"] * 3
    assert lat["n"] == 12 and lat["repeats"] == 3 and lat["queries_per_repeat"] == 4 and lat["warmup"] == 2
    assert lat["p50_ms_repeats"] == pytest.approx([2.5, 5.0, 2.5])
    all_ms = [1, 2, 3, 4, 2, 4, 6, 8, 1, 2, 3, 4]
    assert lat["p50_ms"] == pytest.approx(np.percentile(all_ms, 50)) and lat["mean_ms"] == pytest.approx(np.mean(all_ms))
    assert lat["p95_ms"] == pytest.approx(np.percentile(all_ms, 95))
    assert lat["cv"] == pytest.approx(np.std([2.5, 5.0, 2.5], ddof=1) / np.mean([2.5, 5.0, 2.5]))
    assert lat["unstable"] is True and "CV 43%" in measure.latency_warning(lat)


def test_rounds_that_agree_are_stable(monkeypatch):
    # p50s 10.0, 10.5, 11.0: CV 4.8%, under the 10% line.
    call, _ = fake_clock(monkeypatch, [10.0, 10.0, 10.5, 10.5, 11.0, 11.0])
    lat = measure.time_calls(call, ["q"], n=2, repeats=3, warmup=0)
    assert lat["cv"] == pytest.approx(0.5 / 10.5) and lat["unstable"] is False
    assert measure.latency_warning(lat) is None


def test_single_round_has_no_cv():
    lat = measure.latency_summary(np.array([[3.0, 5.0]]))
    assert lat["cv"] is None and lat["unstable"] is False and lat["n"] == 2


def test_no_queries_no_record_and_bad_counts():
    assert measure.time_calls(lambda q: None, []) == {}
    with pytest.raises(ValueError, match="repeats"):
        measure.time_calls(lambda q: None, ["q"], repeats=0)


def test_bm25_latency_uses_the_same_record():
    from benchmarks.pipeline.bm25 import BM25Retriever

    bm25 = BM25Retriever()
    bm25.index(Corpus.from_dict({"d1": {"title": "", "text": "plants make sugar from light"}, "d2": {"title": "", "text": "cells produce energy"}}))
    lat = bm25.query_latency(["sugar", "energy"], n=5, warmup=1)
    assert lat["n"] == 15 and lat["repeats"] == 3 and len(lat["p50_ms_repeats"]) == 3 and lat["cv"] is not None
