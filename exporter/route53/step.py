"""The `_cutover-step` TXT record beside a shifted record: its name, its value, reading it back.

Compare-and-swap writes (the `ha` mode, issue 14) bump it in the same change batch as the
weights: DELETE the step-n record exactly as read, CREATE step n+1. Weights alone can come back
to values seen before (A -> B -> A), so a batch that DELETEs only them could still apply long
after it was built; the step number never repeats, so a batch built at step n fails at Route53
once any other batch got in after its read.

The value, one TXT string:  "cutover step=<n> epoch=<e> to=<platform>:<weight>,..."
`epoch` is the leader lease's epoch of the writer (`none` without a lease); the step and the
epoch come first so that a value cut at TXT's 255 characters still says both. No record means
step 0: the first compare-and-swap write only CREATEs, and writes step 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from exporter.route53.read import RecordSpec, normalize_name

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_route53.type_defs import ResourceRecordSetOutputTypeDef

__all__ = ["STEP_PREFIX", "STEP_TTL", "StepMark", "read_step_set", "step_record_name"]

STEP_PREFIX: Final = "_cutover-step."
# Nobody resolves it but people digging: short, so that they see the current step soon.
STEP_TTL: Final = 60
_MAX_TXT: Final = 255  # characters in one TXT string, quotes not counted
_VALUE = re.compile(r"^cutover step=(?P<step>\d+) epoch=(?P<epoch>\d+|none)(?: to=(?P<to>[^ ]*))?$")


def step_record_name(record: RecordSpec) -> str:
    """`_cutover-step.<record name>.`: beside the record, so the same IAM condition on record
    names can cover both, and under a name no weighted group or plain record of ours uses."""
    name = f"{STEP_PREFIX}{record.fqdn}."
    if len(name) > 254:  # 253 characters and the root's dot
        raise ValueError(f"{record.describe()}: {name!r} is longer than a DNS name may be")
    return name


@dataclass(frozen=True, slots=True)
class StepMark:
    """The last compare-and-swap step written to a record, by which lease epoch, to what."""

    step: int
    epoch: int | None
    weights: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))

    def value(self) -> str:
        """The TXT value as Route53 takes it: one quoted string of at most 255 characters."""
        to = ",".join(f"{platform}:{weight}" for platform, weight in self.weights.items())
        epoch = "none" if self.epoch is None else str(self.epoch)
        text = f"cutover step={self.step} epoch={epoch} to={to}"
        return f'"{text[:_MAX_TXT]}"'

    @classmethod
    def parse(cls, value: str) -> StepMark | None:
        """A TXT value back into a mark; None when it is not one of ours (or was cut short
        inside the step or the epoch). A weights list cut short keeps its whole entries."""
        match = _VALUE.match(value.strip().strip('"'))
        if match is None:
            return None
        weights: dict[str, int] = {}
        for part in (match["to"] or "").split(","):
            platform, colon, weight = part.partition(":")
            if colon and weight.isdigit():
                weights[platform] = int(weight)
        epoch = None if match["epoch"] == "none" else int(match["epoch"])
        return cls(step=int(match["step"]), epoch=epoch, weights=weights)

    @classmethod
    def from_set(cls, rrset: Mapping[str, Any] | None) -> StepMark | None:
        """The mark a TXT record set holds (its first value), or None without one."""
        if rrset is None:
            return None
        values = rrset.get("ResourceRecords") or []
        return cls.parse(str(values[0]["Value"])) if values else None


def read_step_set(
    client: Route53Client, record: RecordSpec
) -> ResourceRecordSetOutputTypeDef | None:
    """The `_cutover-step` TXT record set of `record` exactly as Route53 holds it, or None.

    Blocking (call it from a worker thread). One ListResourceRecordSets call, starting at the
    name and type: the first record set listed is it, or there is none.
    """
    name = step_record_name(record)
    answer = client.list_resource_record_sets(
        HostedZoneId=record.zone_id, StartRecordName=name, StartRecordType="TXT", MaxItems="1"
    )
    for rrset in answer.get("ResourceRecordSets", [])[:1]:
        if normalize_name(rrset["Name"]) == normalize_name(name) and rrset["Type"] == "TXT":
            return rrset
    return None
