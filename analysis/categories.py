"""Failure modes by query category: where an architecture wins and loses against a reference.

Each judged query gets categories from its text, its qrels and its relevant documents (the dataset's
test split, read through benchmarks/pipeline/data.py):

    query_words       words in the query (1-3, 4-7, 8-15, 16+)
    lexical_overlap   share of the query's content terms (lowercased, stopwords removed, Snowball-
                      stemmed) found in the union of its relevant documents' terms (title + text)
    num_relevant      relevant documents (grade > 0): 1, 2-3, 4-10, 11+
    top_grade         the highest grade among them (SciFact: all 1; NFCorpus: 1 or 2; Cranfield here:
                      1 = minimum interest .. 4 = complete answer); grades mean different things in
                      different datasets, so compare this within a dataset
    relevant_doc_words  mean length of the relevant documents in words (<100, 100-199, 200-299, 300+)
    query_type        question / claim / keyword phrase, by the rules of `query_type`

The edges are fixed rather than quantiles so that a bucket means the same on every dataset and the
pooled table (all datasets' queries together) lines up with the per-dataset ones.

For each model against the reference, per bucket: queries, mean ΔNDCG@10 (model − reference, each
side's per-query score averaged over its seeds), wins / losses / ties, and the model's biggest win
and loss in the bucket as examples.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

STOPWORDS = frozenset(
    "a an and are as at be been being by can could did do does for from had has have how i in into is it its "
    "of on or our should that the their there these this those to was we were what when where which who whom "
    "why will with would you your".split())
AUX = frozenset("is are was were be been am has have had do does did can could may might will would shall should "
                "must cannot not no".split())
# Words after which a following "-s" word is a noun (a plural), not a verb.
NOUN_CONTEXT = frozenset("the a an of on in for with to and or by from at under over between its their these those "
                         "some all many other several both each".split())
QUESTION_WORDS = frozenset("what how why which who whom whose when where".split())
TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’-]*")

ORDER = {  # feature -> bucket labels in display order
    "query_words": ["1-3", "4-7", "8-15", "16+"],
    "lexical_overlap": ["<0.25", "0.25 to <0.5", "0.5 to <0.75", ">=0.75"],
    "num_relevant": ["1", "2-3", "4-10", "11+"],
    "top_grade": ["1", "2", "3", "4"],
    "relevant_doc_words": ["<100", "100-199", "200-299", "300+"],
    "query_type": ["question", "claim", "keyword phrase"],
}
TITLES = {
    "query_words": "query length (words)",
    "lexical_overlap": "share of query terms (stemmed) in its relevant documents",
    "num_relevant": "relevant documents per query",
    "top_grade": "highest relevance grade among its relevant documents",
    "relevant_doc_words": "mean length of its relevant documents (words)",
    "query_type": "query type (rule-based)",
}


def query_type(text: str) -> str:
    """question / claim / keyword phrase, by rules on the text alone (no tagger):

    1. question: ends with '?'; or starts with a question word (what, how, why, which, who, whom,
       whose, when, where; not 'how to', a headline) or an auxiliary (is, are, does, can, can't, has,
       ...); or a later clause (after '.', ',', ';' or ':') starts with what / how / why; or an
       auxiliary is followed by there / it / anyone anywhere ('... is it possible to ...').
    2. claim: a sentence (starts with a capital letter or a digit, or ends with a period attached to
       its last word) of 4+ words, not in Title Case (every word of 4+ letters but 'with', 'from', ... capitalised:
       a headline), with a finite-verb cue: an auxiliary, modal or negation (is, are, has, can, not,
       ...), or a word ending in 's' (not 'ss') or 'ed' that is not the first word and does not
       follow an article, preposition or conjunction (the, of, in, and, ...): 'treatment
       increases', 'failure decreased', not 'effects of' or 'the cells'.
    3. keyword phrase: everything else: topics, headlines, and requests such as Cranfield's
       lower-cased 'papers on shock-sound wave interaction .'.
    """
    t = text.strip()
    words = TOKEN.findall(t)
    low = [_uncontract(w.lower()) for w in words]
    if not low:
        return "keyword phrase"
    if t.rstrip(" .").endswith("?") or _opens_question(low, first=True) or any(
            a in AUX and b in ("there", "it", "anyone") for a, b in zip(low, low[1:])):
        return "question"
    for clause in re.split(r"[.,;:]\s+", t)[1:]:
        if _opens_question([w.lower() for w in TOKEN.findall(clause)], first=False):
            return "question"
    long_words = [w for w in words if len(w) >= 4 and w.isalpha() and w.lower() not in NOUN_CONTEXT | STOPWORDS]
    title_case = len(long_words) >= 2 and all(w[0].isupper() for w in long_words)
    sentence = t[0].isupper() or t[0].isdigit() or bool(re.search(r"\w\.$", t))  # "mTORC2 regulates ... inhibition."
    if sentence and len(words) >= 4 and not title_case and _verb_cue(low):
        return "claim"
    return "keyword phrase"


def _uncontract(w: str) -> str:
    return {"can't": "can", "can’t": "can", "won't": "will", "won’t": "will"}.get(w, w.removesuffix("n't").removesuffix("n’t"))


def _opens_question(low: list[str], first: bool) -> bool:
    if not low:
        return False
    w, nxt = low[0], low[1] if len(low) > 1 else ""
    if w == "how" and nxt == "to":  # "How to Help Prevent ...": a headline
        return False
    if w == "to" and nxt == "what":  # "to what extent can ..."
        return True
    if first:
        return w in QUESTION_WORDS or (w in AUX and w not in ("not", "no"))
    return w in ("what", "how", "why")


def _verb_cue(low: list[str]) -> bool:
    for i, w in enumerate(low):
        if w in AUX:
            return True
        if i > 0 and (w.endswith("s") and not w.endswith("ss") or w.endswith("ed")) and len(w) > 3 \
                and low[i - 1] not in NOUN_CONTEXT:
            return True
    return False


def stemmer():
    import Stemmer  # PyStemmer: the Snowball stemmer bm25s uses too

    return Stemmer.Stemmer("english")


def terms(text: str, stem) -> set[str]:
    return set(stem.stemWords([w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]))


def _bucket(value: float, edges: list[float], labels: list[str]) -> str | None:
    if value is None or not np.isfinite(value):
        return None
    return labels[int(np.searchsorted(edges, value, side="right"))]


def features(dataset) -> pd.DataFrame:
    """One row per judged query of a loaded `Dataset` (index qid): the raw features and their buckets
    (columns `<feature>` and `<feature>_bucket`), plus the query text."""
    from encoders.base import title_text  # the title + text rule (a function; no model is loaded)

    stem = stemmer()
    rows = {}
    for qid, text in dataset.queries.items():
        judged = {d: g for d, g in dataset.qrels.get(qid, {}).items() if g > 0}
        docs = [title_text(dataset.corpus[d]) for d in judged if d in dataset.corpus]
        q_terms = terms(text, stem)
        doc_terms = set().union(*(terms(d, stem) for d in docs)) if docs else set()
        rows[qid] = dict(
            query=text, query_words=len(TOKEN.findall(text)),
            lexical_overlap=len(q_terms & doc_terms) / len(q_terms) if q_terms and docs else np.nan,
            num_relevant=len(judged), top_grade=max(judged.values()) if judged else np.nan,
            relevant_doc_words=float(np.mean([len(d.split()) for d in docs])) if docs else np.nan,
            query_type=query_type(text))
    f = pd.DataFrame.from_dict(rows, orient="index")
    f.index.name = "qid"
    f["query_words_bucket"] = [_bucket(v, [3.5, 7.5, 15.5], ORDER["query_words"]) for v in f["query_words"]]
    f["lexical_overlap_bucket"] = [_bucket(v, [0.25, 0.5, 0.75], ORDER["lexical_overlap"]) for v in f["lexical_overlap"]]
    f["num_relevant_bucket"] = [_bucket(v, [1.5, 3.5, 10.5], ORDER["num_relevant"]) for v in f["num_relevant"]]
    f["top_grade_bucket"] = [None if pd.isna(v) else str(int(v)) for v in f["top_grade"]]
    f["relevant_doc_words_bucket"] = [_bucket(v, [100, 200, 300], ORDER["relevant_doc_words"])
                                      for v in f["relevant_doc_words"]]
    f["query_type_bucket"] = f["query_type"]
    return f


def by_category(diffs: pd.DataFrame, feats: pd.DataFrame, examples: int = 1) -> pd.DataFrame:
    """Per (dataset or 'pooled', model, feature, bucket): queries, mean Δ, wins, losses, ties and the
    model's biggest win / loss queries in the bucket. diffs: columns dataset, model, qid, diff;
    feats: index (dataset, qid), the columns of `features`."""
    joined = diffs.join(feats, on=["dataset", "qid"])
    rows = []
    for scope, part in [*joined.groupby("dataset", sort=True), ("pooled", joined)]:
        for feature, labels in ORDER.items():
            col = f"{feature}_bucket"
            for (model, bucket), g in part.dropna(subset=[col]).groupby(["model", col], sort=True):
                g = g.sort_values(["diff", "qid"])
                win, loss = g[g["diff"] > 0].tail(examples), g[g["diff"] < 0].head(examples)
                rows.append(dict(scope=scope, model=model, feature=feature, bucket=bucket,
                                 rank=labels.index(bucket) if bucket in labels else len(labels),
                                 queries=len(g), mean_diff=g["diff"].mean(), wins=int((g["diff"] > 0).sum()),
                                 losses=int((g["diff"] < 0).sum()), ties=int((g["diff"] == 0).sum()),
                                 datasets=", ".join(f"{d} {n}" for d, n in g["dataset"].value_counts().sort_index().items()),
                                 best_win=_example(win.iloc[::-1]), worst_loss=_example(loss)))
    return pd.DataFrame(rows)


def _example(g: pd.DataFrame, width: int = 70) -> str:
    return "; ".join(f"{q[:width]}{'…' if len(q) > width else ''} ({d:+.2f})" for q, d in zip(g["query"], g["diff"]))
