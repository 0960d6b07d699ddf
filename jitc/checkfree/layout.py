"""What each pipeline stage holds, written down where the supervisor can find it.

Why this exists: when every replica of a stage is lost, the supervisor must build that
stage's state from its neighbours, but it has neither the model nor a snapshot of the
lost stage: only the neighbours' snapshots. So every stage writes, once, when
``protect()`` starts, a small JSON record of its model tensors (names, dtypes, shapes)
and of the run's pipeline options (CheckFree+ or not):

    <JITC_DIR>/stages/stage-<s>.json

Replicas of a stage write identical records; each write is atomic (tmp + rename), so
a reader sees one complete record or none. The records never hold tensor data.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import private
from ..errors import RecoveryError

STAGES_DIR = "stages"


@dataclass(frozen=True)
class StageLayout:
    stage: int
    num_stages: int
    checkfree_plus: bool
    tensors: tuple[tuple[str, str, tuple[int, ...]], ...]   # (name, dtype, shape), in order

    def to_json(self) -> dict:
        return {"stage": self.stage, "num_stages": self.num_stages,
                "checkfree_plus": self.checkfree_plus,
                "tensors": [[n, d, list(s)] for n, d, s in self.tensors]}

    @classmethod
    def from_json(cls, obj: dict) -> "StageLayout":
        return cls(int(obj["stage"]), int(obj["num_stages"]), bool(obj["checkfree_plus"]),
                   tuple((str(n), str(d), tuple(int(x) for x in s)) for n, d, s in obj["tensors"]))


def path_of(root: str | os.PathLike, stage: int) -> Path:
    return Path(root) / STAGES_DIR / f"stage-{stage}.json"


def write_layout(root: str | os.PathLike, layout: StageLayout) -> Path:
    """Write (atomically) the layout record of ``layout.stage`` under snapshot root ``root``."""
    target = path_of(root, layout.stage)
    private.make_dirs(target.parent)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with private.open_private(tmp) as f:
            f.write(json.dumps(layout.to_json()))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_layout(root: str | os.PathLike, stage: int) -> StageLayout:
    """The layout record of ``stage``; RecoveryError (one line) if missing or unreadable."""
    path = path_of(root, stage)
    try:
        return StageLayout.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise RecoveryError(f"{path}: no layout record for stage {stage} "
                            "(the stage never started protect())") from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise RecoveryError(f"{path}: unreadable stage layout ({e})") from None


def any_checkfree_plus(root: str | os.PathLike) -> bool:
    """Whether any stage of the run recorded that it trains with the CheckFree+ schedule."""
    d = Path(root) / STAGES_DIR
    if not d.is_dir():
        return False
    for p in sorted(d.glob("stage-*.json")):
        try:
            if json.loads(p.read_text(encoding="utf-8")).get("checkfree_plus"):
                return True
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
    return False
