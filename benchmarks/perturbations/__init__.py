"""Perturbations of a run, named by a spec string that appears in the results path and the summary.

    clean                      no perturbation
    prune:0.5[:activation]     structured pruning of the model at 50% (magnitude or activation criterion)
    sentence-shuffle           shuffle each document's sentences (title kept first)
    token-shuffle              shuffle each document's words (a stronger control)
    truncate:head:64           keep the first 64 tokens of each document (truncate:tail:64: the last 64)
    pad:prefix:2x              pad each document to 2x its length with other documents' text, before it
                               (pad:suffix:4x: to 4x, after it)

Compose with "+", e.g. `prune:0.5+sentence-shuffle`: the model step applies to the model, the text
steps apply to the corpus in the order given. Randomness comes from the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass


class PerturbationError(Exception):
    """A bad perturbation spec or one that cannot apply (e.g. sparsity outside (0, 1)); printed as one line."""


CRITERIA = ("magnitude", "activation")
KINDS = ("prune", "sentence-shuffle", "token-shuffle", "truncate", "pad")
CALIBRATION_TEXTS = 64  # corpus texts whose activations rank structures under prune:S:activation


@dataclass
class Perturbation:
    name: str  # canonical spec, e.g. "prune:0.5+sentence-shuffle"
    steps: list[dict]  # {"kind": ..., knobs...}

    @property
    def slug(self) -> str:
        return self.name.replace(":", "-").replace("+", "_")

    @property
    def prune_step(self) -> dict | None:
        return next((s for s in self.steps if s["kind"] == "prune"), None)

    @property
    def text_steps(self) -> list[dict]:
        return [s for s in self.steps if s["kind"] != "prune"]


def _number(text: str, what: str, spec: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise PerturbationError(f"perturbation {spec!r}: {what} must be a number, got {text!r}") from None


def _parse_step(part: str, spec: str) -> dict:
    kind, *args = part.split(":")
    if kind == "prune":
        if not 1 <= len(args) <= 2:
            raise PerturbationError(f"perturbation {spec!r}: write prune:SPARSITY or prune:SPARSITY:CRITERION")
        sparsity = _number(args[0], "sparsity", spec)
        if not 0 < sparsity < 1:
            raise PerturbationError(f"perturbation {spec!r}: pruning sparsity must be in (0, 1), got {sparsity:g}")
        criterion = args[1] if len(args) == 2 else "magnitude"
        if criterion not in CRITERIA:
            raise PerturbationError(f"perturbation {spec!r}: unknown pruning criterion {criterion!r}; "
                                    f"criteria: {', '.join(CRITERIA)}")
        return dict(kind="prune", sparsity=sparsity, criterion=criterion)
    if kind in ("sentence-shuffle", "token-shuffle"):
        if args:
            raise PerturbationError(f"perturbation {spec!r}: {kind} takes no arguments (the seed is the run's)")
        return dict(kind=kind)
    if kind == "truncate":
        if len(args) != 2 or args[0] not in ("head", "tail"):
            raise PerturbationError(f"perturbation {spec!r}: write truncate:head:N or truncate:tail:N")
        tokens = _number(args[1], "the token count", spec, int)
        if tokens < 1:
            raise PerturbationError(f"perturbation {spec!r}: the token count must be positive, got {tokens}")
        return dict(kind="truncate", side=args[0], tokens=tokens)
    if kind == "pad":
        if len(args) != 2 or args[0] not in ("prefix", "suffix"):
            raise PerturbationError(f"perturbation {spec!r}: write pad:prefix:2x or pad:suffix:4x")
        factor = _number(args[1].rstrip("x"), "the length factor", spec)
        if factor <= 1:
            raise PerturbationError(f"perturbation {spec!r}: the length factor must be above 1, got {factor:g}")
        return dict(kind="pad", side=args[0], factor=factor)
    raise PerturbationError(f"unknown perturbation {part!r} in {spec!r}; known: clean, prune:S, sentence-shuffle, "
                            "token-shuffle, truncate:head|tail:N, pad:prefix|suffix:Fx (compose with +)")


def _canonical(step: dict) -> str:
    k = step["kind"]
    if k == "prune":
        return f"prune:{step['sparsity']:g}" + ("" if step["criterion"] == "magnitude" else f":{step['criterion']}")
    if k == "truncate":
        return f"truncate:{step['side']}:{step['tokens']}"
    if k == "pad":
        return f"pad:{step['side']}:{step['factor']:g}x"
    return k


def parse(spec: str | None) -> Perturbation:
    """'prune:0.5+sentence-shuffle' -> Perturbation; raises PerturbationError with one clear line."""
    spec = (spec or "clean").strip()
    if spec in ("", "clean", "none"):
        return Perturbation("clean", [])
    steps = [_parse_step(part.strip(), spec) for part in spec.split("+")]
    if sum(s["kind"] == "prune" for s in steps) > 1:
        raise PerturbationError(f"perturbation {spec!r}: at most one prune step")
    # The model step first, whatever the order written: it does not interact with the text steps.
    steps.sort(key=lambda s: s["kind"] != "prune")
    return Perturbation("+".join(map(_canonical, steps)), steps)


def perturb_corpus(corpus: dict, perturbation: Perturbation, seed: int, tokenizer, title_sep: str = " ",
                   progress: bool = False) -> tuple[dict, list[dict]]:
    """Apply the text steps in order -> (new corpus, steps annotated with seed and stats)."""
    from . import text

    done = []
    for step in perturbation.text_steps:
        k = step["kind"]
        if k == "sentence-shuffle":
            corpus, stats = text.sentence_shuffle(corpus, seed, progress)
        elif k == "token-shuffle":
            corpus, stats = text.token_shuffle(corpus, seed)
        elif k == "truncate":
            corpus, stats = text.truncate(corpus, step["side"], step["tokens"], tokenizer, title_sep)
        else:
            corpus, stats = text.pad_with_distractors(corpus, step["side"], step["factor"], seed)
        done.append(dict(step, **({} if k == "truncate" else {"seed": seed}), stats=stats))
    return corpus, done


def prune_model(encoder, step: dict, corpus_texts: list[str], seed: int) -> dict:
    """Prune `encoder` in place -> the step annotated with the pruning report."""
    import random

    from encoders.pruning import prune

    calibration = None
    if step["criterion"] == "activation":
        rng = random.Random(seed)
        calibration = rng.sample(corpus_texts, min(CALIBRATION_TEXTS, len(corpus_texts)))
    report = prune(encoder, step["sparsity"], step["criterion"], calibration)
    return dict(step, report=report)
