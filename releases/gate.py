"""The one gate decision of a release: may this registry version go into a release held to
this policy? Build, publish and the demo all ask it here, and nothing else decides.

The check (saekit.harness.check) records a verdict as a tag, but tags can be written by
anyone with write access to the MLflow server; the decision rests on the check's record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saekit.harness.gate import apply as apply_gate, failing_text
from saekit.registry import tags as T
from saekit.schemas import GateFailedError
from saekit.schemas.benchmark import BenchmarkRecord, read_records
from saekit.schemas.console import say
from saekit.schemas.release import GatePolicy


def checked_record(gate: GatePolicy, label: str, info: Any, *, run_checks: bool,
                   where: str) -> tuple[Any, BenchmarkRecord, dict[str, Path]]:
    """(version info, check record, the check's files) of a registry version a release may
    carry, or GateFailedError (one line naming ``label`` and the reason): its gate tag says
    pass (checked now when none is recorded and ``run_checks``), and the check's record is
    there, is for this version's sha256 and passes ``gate``, the release's policy (the
    record's own verdict when the policy has no rules)."""
    from saekit.registry import store

    pinned = f"{info.name}/{info.version}"
    tag = info.tags.get(T.GATE)
    if tag is None and run_checks:
        from saekit.harness.check import check

        say(f"release: no check recorded for {pinned}; running saekit check")
        check(pinned, policy=gate)
        info = store.resolve(pinned)
        tag = info.tags.get(T.GATE)
    if tag != "pass":
        why = info.tags.get(T.GATE_FAILED) or ("no check recorded" if tag is None else tag)
        raise GateFailedError(f"gate failed for {label} ({pinned}): {why}", where=where)
    checks = store.check_files(info.name, info.version)
    if "eval.json" not in checks:
        raise GateFailedError(f"gate failed for {label} ({pinned}): no check record (eval.json); "
                              f"run `saekit check {pinned}`", where=where)
    record = read_records(checks["eval.json"])[-1]
    if record.sae.sha256 != info.sha256:
        raise GateFailedError(f"gate failed for {label} ({pinned}): the check record is for sha256 "
                              f"{(record.sae.sha256 or 'none')[:12]}, not this version's {info.sha256[:12]}",
                              where=where)
    verdict = apply_gate(gate, record) if gate.rules else record.gate
    if verdict is None:
        raise GateFailedError(f"gate failed for {label} ({pinned}): the check record has no gate verdict", where=where)
    if not verdict.passed:
        raise GateFailedError(f"gate failed for {label} ({pinned}): {failing_text(verdict)}", where=where)
    return info, record, checks
