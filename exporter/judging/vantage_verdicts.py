"""The vantages' combined outcome as what the rest of cutover reads: an evaluation per check for
the incident machine (in place of this replica's own), and why a step must wait.

Pure: the combination (exporter/judging/vantage.py), this replica's own evaluation and names in,
values out. Each combined signal becomes a judge-like verdict:

    firing        regressed and significant: the incident fires once `alerting.for` has passed
    suspected     pending (credible, not established): an incident opens, its `for` clock runs,
                  but it does not fire; a firing incident counts it as gone (it resolves after
                  `resolve_after` unless the regression is confirmed again)
    ok            ok
    inconclusive  inconclusive: an open incident neither advances nor clears
    impaired      inconclusive too: both platforms fail from every healthy vantage, an outage
                  that says nothing about the candidate

The verdict names the vantages that saw it (`vantages`, e.g. "seen from eu-west-1 and
us-east-1, 2 needed") and, when this replica did not see it itself, the figures of one that
did (`figures_from`): both go into the incident's figures, so Slack shows them and a new leader
editing the message keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from exporter.judging.judge import SIGNALS, Evaluation, Figures, State, Verdict
from exporter.judging.vantage import (
    CheckFigures,
    Combined,
    Outcome,
    SignalOutcome,
    VantageReport,
    VantageSettings,
    combine,
)

__all__ = [
    "CombinedEvaluation",
    "VantageVerdict",
    "combined_evaluation",
    "waits",
]

NO_FIGURES: Final = Figures(0, 0, 0, *(math.nan,) * 6)

# what the incident machine reads for each outcome: state, significant, pending
_AS_VERDICT: Final[Mapping[Outcome, tuple[State, bool, bool]]] = {
    Outcome.FIRING: (State.REGRESSED, True, False),
    Outcome.SUSPECTED: (State.OK, False, True),
    Outcome.OK: (State.OK, False, False),
    Outcome.INCONCLUSIVE: (State.INCONCLUSIVE, False, False),
    Outcome.IMPAIRED: (State.INCONCLUSIVE, False, False),
}


@dataclass(frozen=True, slots=True)
class VantageVerdict(Verdict):
    """A judge's verdict decided by the vantages' combination.

    `vantages` says which vantages saw it and why it fires (or not yet); `shown` holds the
    figures of the vantage whose view the message shows, when that is not this replica's own
    (`figures_from` names it; p50s are not reported, so they are None there).
    """

    vantages: str = ""
    shown: Mapping[str, float | int | str | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int | str | bool | None]:
        # Verdict.as_dict explicitly: zero-argument super() does not work in slotted dataclasses
        return {**Verdict.as_dict(self), **self.shown, "vantages": self.vantages}


@dataclass(frozen=True, slots=True)
class CombinedEvaluation:
    """One check over every vantage, read by `Alerts.update` as a judge's Evaluation is."""

    check: str
    figures: Figures  # this replica's own window (NO_FIGURES before it judged the check)
    down: VantageVerdict
    errors: VantageVerdict
    latency: VantageVerdict

    def verdicts(self) -> tuple[VantageVerdict, VantageVerdict, VantageVerdict]:
        return (self.down, self.errors, self.latency)


def combined_evaluation(
    combined: Combined, check: str, local: Evaluation | None, here: str
) -> CombinedEvaluation | None:
    """What the incidents of `check` are fed this round; None when no healthy vantage reports
    the check (then they neither advance nor clear)."""
    outcomes = {s: combined.signals.get((check, s)) for s in SIGNALS}
    if any(o is None for o in outcomes.values()):
        return None
    verdicts = [
        _verdict(o, local.verdict(s) if local is not None else None, here)
        for s, o in outcomes.items()
        if o is not None
    ]
    down, errors, latency = verdicts
    figures = local.figures if local is not None else NO_FIGURES
    return CombinedEvaluation(check, figures, down, errors, latency)


def _verdict(outcome: SignalOutcome, local: Verdict | None, here: str) -> VantageVerdict:
    state, significant, pending = _AS_VERDICT[outcome.outcome]
    base = local if local is not None else _blank(outcome.signal)
    witnesses = outcome.seen_by or outcome.pending_at
    shown: dict[str, float | int | str | None] = {}
    seen_here = here in witnesses or not witnesses
    if not seen_here:
        # the message shows the figures of a vantage that saw it, not this replica's clean ones
        source = witnesses[0]
        shown = _shown(outcome.figures.get(source, CheckFigures()), source)
        base = replace(base, p_value=math.nan, estimate=math.nan, test="", horizon=0)
    evidence = state is State.REGRESSED or pending
    return VantageVerdict(
        signal=outcome.signal,
        state=state,
        significant=significant,
        p_value=base.p_value,
        test=base.test,
        horizon=base.horizon,
        estimate=base.estimate,
        threshold=base.threshold,
        since=base.since if evidence else None,
        pending=pending,
        vantages=outcome.because,
        shown=shown,
    )


def _blank(signal: str) -> Verdict:
    return Verdict(signal, State.INCONCLUSIVE, False, math.nan, "", 0, math.nan, math.nan)


def _shown(figures: CheckFigures, source: str) -> dict[str, float | int | str | None]:
    """A reported vantage's figures under the names of the judge's (`Figures.as_dict`)."""
    bp95, cp95 = figures.baseline_p95, figures.candidate_p95
    ber, cer = figures.baseline_error_ratio, figures.candidate_error_ratio
    return {
        "figures_from": source,
        "baseline_p50": None,
        "candidate_p50": None,
        "p50_ratio": None,
        "baseline_p95": bp95,
        "candidate_p95": cp95,
        "p95_ratio": cp95 / bp95 if cp95 is not None and bp95 else None,
        "baseline_error_ratio": ber,
        "candidate_error_ratio": cer,
        "error_ratio_delta": cer - ber if cer is not None and ber is not None else None,
    }


def waits(
    reports: Iterable[VantageReport],
    checks: Collection[str],
    now: float,
    settings: VantageSettings,
) -> tuple[str, ...]:
    """Why the vantages hold a step of a record guarded by `checks` (nothing when they agree).

    The reports are narrowed to those checks and combined afresh at `now`: a regression seen on
    another record's check holds only that record, while too few healthy vantages hold every
    record that has checks. A record without probe checks is not the vantages' to hold.
    """
    if not checks:
        return ()
    wanted = set(checks)
    narrowed = [
        replace(r, checks={c: v for c, v in r.checks.items() if c in wanted}) for r in reports
    ]
    if not narrowed:
        return ("no vantage report combined yet",)
    return combine(narrowed, now, settings).reasons
