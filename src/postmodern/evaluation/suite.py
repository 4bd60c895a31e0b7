"""A behavioural test suite in the spirit of RecList: a class whose methods are tests, each registered
with a decorator that names it and says how its result is displayed.

    class ShopSuite(RecSuite):
        def prepare(self, ranker):                      # what one ranker's tests share, computed once
            return ranker.rank(self.prefixes, 20)[0]

        @rec_test("coverage", display="scalar")
        def coverage(self, ranked) -> float:
            ...

    report = ShopSuite(...).run([model, baseline])      # every test, for every ranker, on the same cases
    report.save(Path("suite_report.json"))

A test returns a number (`scalar`), or labelled numbers (`curve`: a metric at several cut-offs; `bars`:
one number per label; `histogram`: shares over ordered bins). A `Sliced` result also carries how many
cases stand behind each label, so a reader (or the deployment gate) can ignore thin slices.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from tqdm import tqdm

from postmodern.evaluation.metrics import NextItemRanker

Display = Literal["scalar", "curve", "bars", "histogram"]
Value = float | dict[str, float]


@dataclass(frozen=True)
class RecTest:
    name: str
    display: Display
    description: str
    method: str


@dataclass(frozen=True)
class Sliced:
    """Labelled results and the number of cases behind each label."""

    values: dict[str, float]
    support: dict[str, int]


def rec_test(name: str, display: Display = "scalar", description: str | None = None) -> Callable:
    """Register a method of a `RecSuite` as a test; its docstring's first line is the default description."""
    if display not in get_args(Display):
        raise ValueError(f"test {name!r}: display {display!r} is not one of {', '.join(get_args(Display))}")

    def register(method: Callable) -> Callable:
        summary = (method.__doc__ or "").strip().splitlines()
        method.rec_test = RecTest(name, display, description or (summary[0] if summary else ""), method.__name__)
        return method

    return register


@dataclass(frozen=True)
class RecTestResult:
    name: str
    display: Display
    description: str
    values: dict[str, Value]  # by ranker name
    support: dict[str, int] = field(default_factory=dict)  # cases behind each label, when the test slices

    def flat(self, ranker: str) -> dict[str, float]:
        """The ranker's result as named numbers: `name` for a scalar, `name@label` for a curve (hr@20),
        `name/label` otherwise."""
        value = self.values[ranker]
        if self.display == "scalar":
            return {self.name: value}
        joiner = "@" if self.display == "curve" else "/"
        return {f"{self.name}{joiner}{label}": number for label, number in value.items()}


@dataclass(frozen=True)
class SuiteReport:
    suite: str
    candidate: str  # the model under test; the others are the references it is compared with
    rankers: list[str]
    dataset: dict[str, int]
    tests: list[RecTestResult]
    created_at: str

    def test(self, name: str) -> RecTestResult:
        for result in self.tests:
            if result.name == name:
                return result
        raise KeyError(f"the suite {self.suite} has no test {name!r}")

    def metrics(self, ranker: str) -> dict[str, float]:
        """Every number the suite measured for one ranker, flat (for tracking, tables and the gate)."""
        if ranker not in self.rankers:
            raise KeyError(f"{ranker!r} was not evaluated (rankers: {', '.join(self.rankers)})")
        flat: dict[str, float] = {}
        for result in self.tests:
            flat.update(result.flat(ranker))
        return flat

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: non-finite numbers (a metric over no case) become null."""
        return _finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteReport:
        tests = [RecTestResult(**{**test, "values": _none_to_nan(test["values"])}) for test in data["tests"]]
        return cls(**{**data, "tests": tests})

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return path

    @classmethod
    def load(cls, path: Path) -> SuiteReport:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _none_to_nan(values: dict[str, Any]) -> dict[str, Value]:
    def number(value: Any) -> float:
        return float("nan") if value is None else float(value)

    return {
        ranker: {label: number(item) for label, item in value.items()} if isinstance(value, dict) else number(value)
        for ranker, value in values.items()
    }


class RecSuite:
    """Subclass, decorate test methods with `@rec_test`, and `run` it on rankers.

    `prepare(ranker)` computes what all tests of one ranker share (its rankings of the cases); each test
    method receives that and returns its value. Tests run in the order they are defined."""

    tests: ClassVar[tuple[RecTest, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        registered: dict[str, RecTest] = {}
        for klass in reversed(cls.__mro__):  # a subclass can override or add tests
            for attribute, member in vars(klass).items():
                spec = getattr(member, "rec_test", None)
                if isinstance(spec, RecTest):
                    registered[attribute] = spec
        names = [spec.name for spec in registered.values()]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise TypeError(f"{cls.__name__}: more than one test named {', '.join(repeated)}")
        cls.tests = tuple(registered.values())

    def prepare(self, ranker: NextItemRanker) -> Any:
        return ranker

    def dataset_summary(self) -> dict[str, int]:
        return {}

    def run(self, rankers: list[NextItemRanker], candidate: str | None = None, progress: bool = True) -> SuiteReport:
        """Every test for every ranker; `candidate` (default: the first ranker) is the model under test."""
        names = [ranker.name for ranker in rankers]
        if not rankers or len(set(names)) != len(names):
            raise ValueError(f"the suite needs rankers with distinct names, got {names}")
        candidate = candidate or names[0]
        if candidate not in names:
            raise ValueError(f"candidate {candidate!r} is not among the rankers {names}")
        values: dict[str, dict[str, Value]] = {spec.name: {} for spec in self.tests}
        support: dict[str, dict[str, int]] = {}
        bar = tqdm(total=len(rankers) * len(self.tests), desc="suite", unit="test", disable=None if progress else True)
        for ranker in rankers:
            shared = self.prepare(ranker)
            for spec in self.tests:
                bar.set_postfix_str(f"{ranker.name}: {spec.name}")
                result = getattr(self, spec.method)(shared)
                if isinstance(result, Sliced):
                    support[spec.name] = dict(result.support)
                    result = result.values
                values[spec.name][ranker.name] = _checked(spec, result)
                bar.update()
        bar.close()
        return SuiteReport(
            suite=type(self).__name__,
            candidate=candidate,
            rankers=names,
            dataset=self.dataset_summary(),
            tests=[
                RecTestResult(spec.name, spec.display, spec.description, values[spec.name], support.get(spec.name, {}))
                for spec in self.tests
            ],
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )


def _checked(spec: RecTest, result: Any) -> Value:
    """A scalar test returns a number, the others labelled numbers; anything else is the test's bug."""
    if spec.display == "scalar":
        if isinstance(result, numbers.Real) and not isinstance(result, bool):
            return float(result)
    elif isinstance(result, Mapping) and all(
        isinstance(label, str) and isinstance(number, numbers.Real) for label, number in result.items()
    ):
        return {label: float(number) for label, number in result.items()}
    raise TypeError(
        f"test {spec.name!r} ({spec.display}) returned {type(result).__name__}: "
        + ("a number" if spec.display == "scalar" else "a dict of label -> number")
        + " was expected"
    )
