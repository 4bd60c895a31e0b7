"""The deployment gate: the suite's report decides whether the new model replaces the one serving.

By default the candidate must beat the popularity baseline and the deployed model on MRR@20 by a
relative margin, and no slice may collapse: on every slice with enough cases, the candidate keeps at
least half of the best reference's hit rate. A blocked deployment is a verdict with reasons, not an
exception: the flow goes on, the card and the logs say why, and the previous model keeps serving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from postmodern.config import Settings
from postmodern.evaluation.deployed import load_deployed_model
from postmodern.evaluation.metrics import NextItemRanker
from postmodern.evaluation.session_suite import SessionRecSuite, SuiteConfig, item_attributes
from postmodern.evaluation.suite import SuiteReport
from postmodern.model.bundle import ModelBundle
from postmodern.model.champion import Selection
from postmodern.model.dataset import SessionSplits

SLICE_TESTS = ("hr_by_popularity", "hr_by_session_length", "hr_by_category", "hr_by_price_bucket")
SLICE_NAMES = {
    "hr_by_popularity": "popularity",
    "hr_by_session_length": "items seen",
    "hr_by_category": "category",
    "hr_by_price_bucket": "price bucket",
}


@dataclass(frozen=True)
class GateConfig:
    metric: str = "mrr@20"
    margin: float = 0.01  # relative: the candidate needs more than reference * (1 + margin); negative tolerates
    must_beat: tuple[str, ...] = ("popularity", "deployed")  # references not evaluated (no deployed model) are skipped
    slice_tests: tuple[str, ...] = SLICE_TESTS
    slice_min_ratio: float = 0.5  # a slice collapses below this share of the best reference's value there
    slice_min_cases: int = 50  # thinner slices are too noisy to block a deployment
    max_latency_p99_ms: float | None = None  # no latency limit unless set


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateVerdict:
    candidate: str
    checks: list[GateCheck] = field(default_factory=list)
    note: str = ""  # how the candidate was chosen: its family, by how much it won, on which slices

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def summary(self) -> str:
        if self.passed:
            return f"gate passed: {self.candidate} passed all {len(self.checks)} checks"
        return f"gate blocked {self.candidate}: " + "; ".join(check.detail for check in self.failures)

    def describe(self) -> str:
        lines = [self.summary(), *([f"  {self.note}"] if self.note else [])]
        lines += [f"  [{'pass' if check.passed else 'FAIL'}] {check.name}: {check.detail}" for check in self.checks]
        return "\n".join(lines)


def _beats(report: SuiteReport, config: GateConfig, reference: str) -> GateCheck:
    name = f"beats {reference} on {config.metric.upper()}"
    if reference not in report.rankers:
        return GateCheck(name, True, f"no {reference} model evaluated: nothing to beat")
    candidate = report.metrics(report.candidate)[config.metric]
    baseline = report.metrics(reference)[config.metric]
    needed = baseline * (1 + config.margin)
    passed = math.isfinite(candidate) and candidate > needed
    verb = "beats" if passed else "does not beat"
    return GateCheck(
        name,
        passed,
        f"{report.candidate} {config.metric.upper()} {candidate:.4f} {verb} {reference} {baseline:.4f} "
        f"(margin {config.margin:+.0%}: needs more than {needed:.4f})",
    )


def _no_collapse(report: SuiteReport, config: GateConfig, test_name: str) -> GateCheck:
    result = report.test(test_name)
    references = [name for name in config.must_beat if name in report.rankers]
    candidate = result.values[report.candidate]
    collapsed = []
    for label, value in candidate.items():
        if result.support.get(label, 0) < config.slice_min_cases:
            continue
        best_name = max(references, key=lambda name: result.values[name].get(label, 0.0), default=None)
        best = result.values[best_name].get(label, 0.0) if best_name else 0.0
        if not value >= config.slice_min_ratio * best:  # also catches a NaN
            collapsed.append(f"{label} ({value:.3f} vs {best_name} {best:.3f}, {result.support[label]} cases)")
    name = f"no {test_name} slice collapses"
    if collapsed:
        return GateCheck(
            name, False, f"{test_name} below {config.slice_min_ratio:.0%} of the best reference: {', '.join(collapsed)}"
        )
    return GateCheck(
        name, True, f"every {test_name} slice of {config.slice_min_cases}+ cases keeps {config.slice_min_ratio:.0%}+"
    )


def _latency(report: SuiteReport, limit_ms: float) -> GateCheck:
    p99 = report.metrics(report.candidate)["latency_ms/p99"]
    passed = p99 <= limit_ms
    return GateCheck(
        "latency p99", passed, f"p99 {p99:.2f} ms per session {'within' if passed else 'over'} {limit_ms:.2f} ms"
    )


def check_gate(report: SuiteReport, config: GateConfig = GateConfig(), note: str = "") -> GateVerdict:
    """Every check of the gate on the suite's report; the candidate is the report's."""
    checks = [_beats(report, config, reference) for reference in config.must_beat]
    checks += [_no_collapse(report, config, test_name) for test_name in config.slice_tests]
    if config.max_latency_p99_ms is not None:
        checks.append(_latency(report, config.max_latency_p99_ms))
    return GateVerdict(report.candidate, checks, note)


def describe_params(params: dict) -> str:
    """A blend as its weighted parts (`lstm 0.7 + vsknn 0.3`), any other configuration as knob=value."""
    if "parts" in params and "weights" in params:
        return " + ".join(f"{part} {weight:g}" for part, weight in zip(params["parts"], params["weights"], strict=True))
    return ", ".join(f"{knob}={value}" for knob, value in params.items())


def slice_comparison(report: SuiteReport, config: GateConfig, other: str) -> tuple[list[str], list[str]]:
    """The slices (of enough cases) where the candidate's value is above, and below, `other`'s."""
    ahead, behind = [], []
    for test_name in config.slice_tests:
        result = report.test(test_name)
        for label, value in result.values[report.candidate].items():
            if result.support.get(label, 0) < config.slice_min_cases or label not in result.values[other]:
                continue
            theirs = result.values[other][label]
            if value != theirs:
                (ahead if value > theirs else behind).append(f"{SLICE_NAMES.get(test_name, test_name)} {label}")
    return ahead, behind


def champion_note(selection: Selection, report: SuiteReport, config: GateConfig) -> str:
    """Which family won on validation, with what, by how much over the runner-up, and on test: its lead over the
    runner-up on the gate's metric and on which slices."""
    champion = selection.champion_fit
    text = (
        f"champion: {champion.family} ({describe_params(champion.params)}), validation MRR@20 "
        f"{champion.validation_mrr:.4f}"
    )
    runner_up, lead = selection.margin()
    if runner_up is None:
        return text + ", the only family fitted"
    text += f", {lead:+.4f} over {runner_up} ({selection.finalists[runner_up].validation_mrr:.4f})"
    if runner_up not in report.rankers:
        return text
    metric = config.metric
    ours, theirs = report.metrics(report.candidate)[metric], report.metrics(runner_up)[metric]
    ahead, behind = slice_comparison(report, config, runner_up)
    return (
        f"{text}; on test {metric.upper()} {ours:.4f} against {theirs:.4f} ({ours - theirs:+.4f}); "
        f"ahead on {len(ahead)} slice(s) ({', '.join(ahead) or 'none'}), behind on {len(behind)} "
        f"({', '.join(behind) or 'none'})"
    )


@dataclass(frozen=True)
class Deployment:
    deployed: bool
    target: str | None  # where the model now serves from, when deployed
    message: str


def deploy_if_passed(
    bundle: ModelBundle, verdict: GateVerdict, settings: Settings, serving_now: str | None
) -> Deployment:
    """Deploy the bundle when the gate passed; otherwise leave the registry (or endpoint) as it is.
    `serving_now` names the model serving before this run (None: none)."""
    if not verdict.passed:
        previous = f"{serving_now} keeps serving" if serving_now else "no model was serving, and none serves now"
        return Deployment(
            False,
            None,
            f"deployment blocked: {verdict.summary()}. Nothing was deployed: {previous}. "
            "This run's bundle is kept as the Metaflow artifact `model_bundle` and in the tracker.",
        )
    from postmodern.serving.deploy import deploy_bundle

    target = deploy_bundle(bundle, settings)
    return Deployment(True, target, f"model {bundle.version} deployed to {target}")


@dataclass(frozen=True)
class DeploymentEvaluation:
    report: SuiteReport
    verdict: GateVerdict
    gate: GateConfig
    serving_before: str | None  # version of the model deployed before this run, if any
    deployed_note: str  # what was found in the registry, for the card
    selection: Selection | None = None  # how the candidate was chosen


def evaluate_for_deployment(
    rankers: list[NextItemRanker],
    splits: SessionSplits,
    products: pa.Table,
    registry_dir: Path,
    suite_config: SuiteConfig | None = None,
    gate: GateConfig | None = None,
    selection: Selection | None = None,
    progress: bool = True,
) -> DeploymentEvaluation:
    """The default suite on the test split for `rankers` (the champion first, then the others) and the model
    deployed now, then the gate's verdict on the report, which says how `selection` chose the champion."""
    gate = gate or GateConfig()
    deployed = load_deployed_model(registry_dir, splits.vocabulary)
    attributes = item_attributes(products, splits.vocabulary)
    suite = SessionRecSuite(splits.test, splits.train_counts, attributes, suite_config or SuiteConfig())
    compared = [*rankers, deployed.ranker] if deployed.ranker else list(rankers)
    report = suite.run(compared, candidate=rankers[0].name, progress=progress)
    serving_before = deployed.ranker.version if deployed.ranker else None
    note = champion_note(selection, report, gate) if selection is not None else ""
    verdict = check_gate(report, gate, note)
    return DeploymentEvaluation(report, verdict, gate, serving_before, deployed.note, selection)
