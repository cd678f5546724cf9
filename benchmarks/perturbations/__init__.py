"""Perturbations of a run, named by a spec string that appears in the results path and the record.

    clean                      no perturbation
    prune:0.5[:activation]     structured pruning of the model at 50% (magnitude or activation criterion)
    sentence-shuffle           shuffle each document's sentences (title kept first)
    token-shuffle              shuffle each document's words (a stronger control)
    truncate:head:64           keep the first 64 tokens of each document (truncate:tail:64: the last 64)
    pad:prefix:2x              pad each document to 2x its length with other documents' text, before it
                               (pad:suffix:4x: to 4x, after it)
    needle:middle:2048         put each document at the start, middle or end of unjudged other documents'
                               text, 2048 tokens in all (the run's tokenizer, special tokens included)

Compose with "+", e.g. `prune:0.5+sentence-shuffle`: model steps apply to the model, corpus steps to
the corpus in the order given. Randomness comes from the run's seed. A corpus step is applied chunk by
chunk (a chunk is a dict {doc id: doc}), streaming the perturbed corpus to disk; a step that draws on
other documents (pad) reads them from `Context.corpus`, the whole corpus it applies to.

Each kind is one class registered under its spec head (`@register_perturbation("truncate")`): it parses
its arguments, names itself canonically, applies itself (to the retriever's model, or to the corpus)
and names the runs-table columns it contributes. A user's kind registers the same way and composes
with the built-in ones; the runner and the runs table know no kind by name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path


class PerturbationError(Exception):
    """A bad perturbation spec or one that cannot apply (e.g. sparsity outside (0, 1)); printed as one line."""


_KINDS: dict[str, type["PerturbationKind"]] = {}


def register_perturbation(kind: str):
    """Class decorator: make a `PerturbationKind` subclass parse specs that start with `kind`."""
    def decorate(cls):
        cls.kind = kind
        _KINDS[kind] = cls
        return cls
    return decorate


class PerturbationKind:
    """One step of a perturbation. Subclasses set `target` ("model" or "corpus"), parse their spec
    arguments in `__init__(args, spec)`, and implement `apply_model` or `apply_corpus`."""

    kind: str = ""  # set by @register_perturbation
    target: str = "corpus"

    def __init__(self, args: list[str], spec: str):
        if args:
            raise PerturbationError(f"perturbation {spec!r}: {self.kind} takes no arguments (the seed is the run's)")

    def canonical(self) -> str:
        """The step's spec as written in canonical form (numbers normalised, defaults left out)."""
        return self.kind

    def knobs(self) -> dict:
        """The step's settings, recorded in the run record."""
        return {}

    def columns(self, step: dict) -> dict:
        """Runs-table columns this step contributes, from its record (knobs + stats)."""
        return {}

    def apply_model(self, retriever, ctx: "Context") -> dict:
        raise NotImplementedError

    def apply_corpus(self, corpus: dict, ctx: "Context") -> tuple[dict, dict]:
        """One chunk {doc id: doc} -> (perturbed chunk, stats: counts, and means over its `documents`)."""
        raise NotImplementedError


@dataclass
class Context:
    """What a step may use: the run's seed, the retriever's tokenizer and title separator (truncation
    counts that tokenizer's tokens), the clean corpus's texts (pruning calibration), the documents the
    qrels judge (never used as distractor text), progress bars, and (set for each corpus step) the whole
    corpus the step applies to."""
    seed: int
    tokenizer: object = None
    title_sep: str = " "
    clean_texts: list | None = None
    judged: frozenset = frozenset()
    progress: bool = False
    corpus: object = None


@dataclass
class Perturbation:
    name: str  # canonical spec, e.g. "prune:0.5+sentence-shuffle"
    steps: list[PerturbationKind]

    @property
    def slug(self) -> str:
        return self.name.replace(":", "-").replace("+", "_")

    @property
    def needs_model(self) -> bool:
        return any(s.target == "model" for s in self.steps)

    def apply_model(self, retriever, ctx: Context) -> list[dict]:
        """Apply the model steps in place -> their records."""
        if self.needs_model and getattr(retriever, "model", None) is None:
            raise PerturbationError(f"perturbation {self.name!r} changes a model; retriever "
                                    f"{retriever.name!r} has none")
        return [self._record(s, s.apply_model(retriever, ctx)) for s in self.steps if s.target == "model"]

    def apply_corpus(self, corpus, ctx: Context, workdir: Path | None = None) -> tuple[object, list[dict]]:
        """Apply the corpus steps in order, chunk by chunk -> (new corpus, their records). A step's output
        is streamed into an Arrow file in `workdir` when given (pipeline/corpus.py), else held in memory."""
        from ..pipeline.corpus import Corpus

        corpus, records = Corpus.from_dict(corpus), []
        for n, s in enumerate(st for st in self.steps if st.target == "corpus"):
            step_ctx, parts = replace(ctx, corpus=corpus), []

            def apply(chunk, s=s, step_ctx=step_ctx, parts=parts):
                out, stats = s.apply_corpus(chunk, step_ctx)
                parts.append(stats)
                return out
            corpus = corpus.map_chunks(apply, workdir / f"perturbed-{n}.arrow" if workdir else None)
            records.append(self._record(s, merge_chunk_stats(parts)))
        return corpus, records

    @staticmethod
    def _record(step: PerturbationKind, stats: dict) -> dict:
        record = dict(kind=step.kind, target=step.target, **step.knobs(), stats=stats)
        record["columns"] = step.columns(record)
        return record


def merge_chunk_stats(parts: list[dict]) -> dict:
    """A step's stats over all chunks: counts add up, `mean_*` values are weighted by `documents`."""
    if len(parts) == 1:
        return parts[0]
    n = sum(p.get("documents", 0) for p in parts)
    return {k: (sum(p[k] * p.get("documents", 0) for p in parts) / max(n, 1) if k.startswith("mean_")
                else sum(p[k] for p in parts)) for k in parts[0]}


def kinds() -> list[str]:
    return sorted(_KINDS)


def parse_step(part: str, spec: str) -> PerturbationKind:
    kind, *args = part.split(":")
    if kind not in _KINDS:
        raise PerturbationError(f"unknown perturbation {part!r} in {spec!r}; known: clean, prune:S, sentence-shuffle, "
                                "token-shuffle, truncate:head|tail:N, pad:prefix|suffix:Fx, needle:start|middle|end:N"
                                f"{''.join(', ' + k for k in kinds() if k not in BUILT_IN)} (compose with +)")
    return _KINDS[kind](args, spec)


def parse(spec: str | None) -> Perturbation:
    """'prune:0.5+sentence-shuffle' -> Perturbation; raises PerturbationError with one clear line."""
    spec = (spec or "clean").strip()
    if spec in ("", "clean", "none"):
        return Perturbation("clean", [])
    steps = [parse_step(part.strip(), spec) for part in spec.split("+")]
    model_kinds = [s.kind for s in steps if s.target == "model"]
    twice = next((k for k in model_kinds if model_kinds.count(k) > 1), None)
    if twice:
        raise PerturbationError(f"perturbation {spec!r}: at most one {twice} step")
    # Model steps first, whatever the order written: they do not interact with the corpus steps.
    steps.sort(key=lambda s: s.target != "model")
    return Perturbation("+".join(s.canonical() for s in steps), steps)


def step_columns(step: dict) -> dict:
    """Runs-table columns of a recorded step: as recorded, or (records written before steps named their
    columns) recomputed by the step's kind."""
    if "columns" in step:
        return step["columns"]
    cls = _KINDS.get(step.get("kind"))
    return cls.columns(cls.__new__(cls), step) if cls else {}


def step_target(step: dict) -> str:
    if "target" in step:
        return step["target"]
    cls = _KINDS.get(step.get("kind"))
    return cls.target if cls else "corpus"


def number(text: str, what: str, spec: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise PerturbationError(f"perturbation {spec!r}: {what} must be a number, got {text!r}") from None


# -- the built-in kinds ---------------------------------------------------------------------------
CALIBRATION_TEXTS = 64  # corpus texts whose activations rank structures under prune:S:activation


@register_perturbation("prune")
class Prune(PerturbationKind):
    """Structured pruning of the retriever's model (encoders/pruning.py; each architecture's pruner)."""
    target = "model"

    def __init__(self, args, spec):
        from encoders.pruning import CRITERIA

        if not 1 <= len(args) <= 2:
            raise PerturbationError(f"perturbation {spec!r}: write prune:SPARSITY or prune:SPARSITY:CRITERION")
        self.sparsity = number(args[0], "sparsity", spec)
        if not 0 < self.sparsity < 1:
            raise PerturbationError(f"perturbation {spec!r}: pruning sparsity must be in (0, 1), got {self.sparsity:g}")
        self.criterion = args[1] if len(args) == 2 else "magnitude"
        if self.criterion not in CRITERIA:
            raise PerturbationError(f"perturbation {spec!r}: unknown pruning criterion {self.criterion!r}; "
                                    f"criteria: {', '.join(CRITERIA)}")

    def canonical(self):
        return f"prune:{self.sparsity:g}" + ("" if self.criterion == "magnitude" else f":{self.criterion}")

    def knobs(self):
        return dict(sparsity=self.sparsity, criterion=self.criterion)

    def columns(self, step):
        return dict(prune_sparsity=step.get("sparsity"), prune_criterion=step.get("criterion"),
                    prune_realised=(step.get("report") or step.get("stats") or {}).get("realised_sparsity"))

    def apply_model(self, retriever, ctx):
        from encoders.pruning import prune

        calibration = None
        if self.criterion == "activation":
            texts = ctx.clean_texts or []
            calibration = random.Random(ctx.seed).sample(texts, min(CALIBRATION_TEXTS, len(texts)))
        return prune(retriever.model, self.sparsity, self.criterion, calibration)


class Shuffle(PerturbationKind):
    def columns(self, step):
        return dict(shuffle=self.kind.split("-")[0])


@register_perturbation("sentence-shuffle")
class SentenceShuffle(Shuffle):
    def apply_corpus(self, corpus, ctx):
        from .text import sentence_shuffle

        return sentence_shuffle(corpus, ctx.seed, ctx.progress)


@register_perturbation("token-shuffle")
class TokenShuffle(Shuffle):
    def apply_corpus(self, corpus, ctx):
        from .text import token_shuffle

        return token_shuffle(corpus, ctx.seed)


@register_perturbation("truncate")
class Truncate(PerturbationKind):
    def __init__(self, args, spec):
        if len(args) != 2 or args[0] not in ("head", "tail"):
            raise PerturbationError(f"perturbation {spec!r}: write truncate:head:N or truncate:tail:N")
        self.side, self.tokens = args[0], number(args[1], "the token count", spec, int)
        if self.tokens < 1:
            raise PerturbationError(f"perturbation {spec!r}: the token count must be positive, got {self.tokens}")

    def canonical(self):
        return f"truncate:{self.side}:{self.tokens}"

    def knobs(self):
        return dict(side=self.side, tokens=self.tokens)

    def columns(self, step):
        return dict(truncate_side=step.get("side"), truncate_tokens=step.get("tokens"))

    def apply_corpus(self, corpus, ctx):
        from .text import truncate

        return truncate(corpus, self.side, self.tokens, ctx.tokenizer, ctx.title_sep)


@register_perturbation("pad")
class Pad(PerturbationKind):
    def __init__(self, args, spec):
        if len(args) != 2 or args[0] not in ("prefix", "suffix"):
            raise PerturbationError(f"perturbation {spec!r}: write pad:prefix:2x or pad:suffix:4x")
        self.side, self.factor = args[0], number(args[1].rstrip("x"), "the length factor", spec)
        if self.factor <= 1:
            raise PerturbationError(f"perturbation {spec!r}: the length factor must be above 1, got {self.factor:g}")

    def canonical(self):
        return f"pad:{self.side}:{self.factor:g}x"

    def knobs(self):
        return dict(side=self.side, factor=self.factor)

    def columns(self, step):
        return dict(pad_side=step.get("side"), pad_factor=step.get("factor"))

    def apply_corpus(self, corpus, ctx):
        from .text import pad_with_distractors

        return pad_with_distractors(corpus, self.side, self.factor, ctx.seed, ctx.corpus)


@register_perturbation("needle")
class Needle(PerturbationKind):
    """Long documents with a known relevant part: each document (the needle) is placed at the start, in
    the middle or at the end of text drawn from other documents, to a fixed total length in tokens."""

    POSITIONS = ("start", "middle", "end")

    def __init__(self, args, spec):
        if len(args) != 2 or args[0] not in self.POSITIONS:
            raise PerturbationError(f"perturbation {spec!r}: write needle:start|middle|end:TOKENS, e.g. needle:middle:2048")
        self.position, self.tokens = args[0], number(args[1], "the total length in tokens", spec, int)
        if self.tokens < 8:
            raise PerturbationError(f"perturbation {spec!r}: the total length must be at least 8 tokens, got {self.tokens}")

    def canonical(self):
        return f"needle:{self.position}:{self.tokens}"

    def knobs(self):
        return dict(position=self.position, tokens=self.tokens)

    def columns(self, step):
        return dict(needle_position=step.get("position"), needle_tokens=step.get("tokens"))

    def apply_corpus(self, corpus, ctx):
        from .text import needle_in_distractors

        return needle_in_distractors(corpus, self.position, self.tokens, ctx.tokenizer, ctx.seed, ctx.judged,
                                     ctx.title_sep)


BUILT_IN = ("prune", "sentence-shuffle", "token-shuffle", "truncate", "pad", "needle")
