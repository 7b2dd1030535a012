"""A release's gate: a GatePolicy applied to a BenchmarkRecord, every rule with its measured value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saekit.schemas import BenchmarkRecord, GatePolicy, GateVerdict, InputError, NotFoundError, RuleResult


def apply(policy: GatePolicy, record: BenchmarkRecord) -> GateVerdict:
    """Check every rule against the record's metrics; a metric it lacks fails its rule."""
    results = []
    for rule in policy.rules:
        measured = record.metric(rule.metric)
        results.append(RuleResult(rule=rule, measured=measured, passed=measured is not None and rule.holds(measured)))
    return GateVerdict(passed=all(r.passed for r in results), results=results)


def load_policy(source: GatePolicy | Path | str | dict | list | None) -> GatePolicy | None:
    """A GatePolicy from a YAML/JSON file, a dict or a list of rule strings.

    Accepted file shapes: ``{rules: [...]}``, a bare list of rules, or a release manifest's
    ``{gate: {rules: [...]}}``; a rule is ``"explained_variance >= 0.7"`` or
    ``{metric, op, value}``.
    """
    if source is None or isinstance(source, GatePolicy):
        return source
    where = "policy"
    if isinstance(source, (str, Path)):
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise NotFoundError("no such policy file", where=where)
        from saekit.schemas import safeio

        raw = safeio.read_bytes(path.parent, path.name, max_bytes=safeio.YAML_MAX_BYTES)
        if path.suffix == ".json":
            data: Any = safeio.load_json(raw, where=where)
        else:
            data = safeio.load_yaml(raw, where=where)
    else:
        data = source
    if isinstance(data, dict) and "gate" in data and "rules" not in data:
        data = data["gate"]
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict):
        raise InputError("expected {rules: [...]} or a list of rules", where=where)
    try:
        return GatePolicy.model_validate(data)
    except Exception as err:
        lines = [ln for ln in str(err).splitlines()[1:] if ln.strip()]
        raise InputError(f"bad gate policy: {' '.join(s.strip() for s in lines[:2])}", where=where) from None


def describe(verdict: GateVerdict) -> list[str]:
    """One line per rule: ``PASS explained_variance >= 0.7 (measured 0.8123)``."""
    out = []
    for r in verdict.results:
        got = "not measured" if r.measured is None else f"measured {r.measured:.6g}"
        out.append(f"{'PASS' if r.passed else 'FAIL'} {r.rule} ({got})")
    return out


def failing_text(verdict: GateVerdict) -> str:
    """``"; ".join`` of the failing rules with their measured values (the saekit.gate_failed tag)."""
    return "; ".join(
        f"{r.rule} (measured {'none' if r.measured is None else f'{r.measured:.6g}'})" for r in verdict.failing
    )
