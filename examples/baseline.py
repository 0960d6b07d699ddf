"""What users run today, for the comparison benchmark: periodic checkpoints under
``torchrun --max-restarts``, either ``torch.save`` (blocking) or
``torch.distributed.checkpoint.async_save`` (staged to CPU, written in the background).

A checkpoint counts once its ``.complete`` marker exists (written after the data), so a
failure during a save falls back to the previous one. Timing events go to a JSON-lines
trace so the benchmark can split lost time into detection/restart, load and replay.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist


class Trace:
    """Append-only JSON lines. Rank 0 writes the timeline; ``any_rank`` is for the few
    events only the rank they happen on can report (an injected fault, before it fires).
    Each record is one small ``write`` on an O_APPEND file, so ranks do not interleave."""

    def __init__(self, path: str | None, rank: int):
        self._path, self.rank = path, rank
        self.path = path if rank == 0 else None

    def __call__(self, event: str, **fields) -> None:
        if self.path:
            self._write(event, fields)

    def any_rank(self, event: str, **fields) -> None:
        if self._path:
            self._write(event, dict(fields, rank=self.rank))

    def _write(self, event: str, fields: dict) -> None:
        with open(self._path, "a") as f:
            f.write(json.dumps({"ts": time.time(), "event": event, **fields}) + "\n")


class PeriodicCheckpointer:
    def __init__(self, kind: str, directory: str, every: int, model, optimizer, scheduler, trace: Trace):
        self.kind, self.dir, self.every = kind, Path(directory), every
        self.model, self.optimizer, self.scheduler, self.trace = model, optimizer, scheduler, trace
        self.rank = dist.get_rank()
        self._pending = None   # DCP async future
        self._loaded = 0       # the step restored by load(): already on disk, never re-saved
        # The background save runs collectives (metadata gather) while training runs its
        # own: on one process group the two interleave and deadlock, so DCP gets its own.
        self._pg = dist.new_group(backend="gloo") if kind == "dcp" else None
        self.dir.mkdir(parents=True, exist_ok=True)

    def _complete(self) -> list[tuple[int, Path]]:
        found = []
        for marker in self.dir.glob("step-*/.complete"):
            found.append((int(marker.parent.name.split("-")[1]), marker.parent))
        return sorted(found)

    def _state(self) -> dict:
        return {"model": self.model.state_dict(), "optim": self.optimizer.state_dict(),
                "sched": self.scheduler.state_dict()}

    def load(self) -> int:
        """Restore the newest complete checkpoint; the step to start at (0 if none)."""
        done = self._complete()
        if not done:
            return 0
        step, path = done[-1]
        t0 = time.time()
        if self.kind == "torch":
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optim"])
            self.scheduler.load_state_dict(state["sched"])
        else:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
            msd, osd = get_state_dict(self.model, self.optimizer)
            state = {"model": msd, "optim": osd}
            dcp.load(state, checkpoint_id=str(path), process_group=self._pg)
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
            self.scheduler.load_state_dict(torch.load(path / "sched.pt", weights_only=False))
        self.trace("ckpt_loaded", step=step, seconds=time.time() - t0)
        self._loaded = step
        return step

    def maybe_save(self, completed: int) -> None:
        """Called at the start of step `completed` (state = after `completed` steps)."""
        # After a restart the loop begins at the restored step, which is on disk already.
        if completed == 0 or completed % self.every or completed <= self._loaded:
            return
        t0 = time.time()
        path = self.dir / f"step-{completed}"
        if self.kind == "torch":
            if self.rank == 0:
                tmp = self.dir / f".tmp-{completed}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                torch.save(self._state(), tmp / "state.pt")
                os.sync()
                shutil.rmtree(path, ignore_errors=True)   # left incomplete by a crash
                tmp.rename(path)
                (path / ".complete").touch()
        else:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict
            if self._pending is not None:
                self._pending.result()          # one save in flight at a time
            msd, osd = get_state_dict(self.model, self.optimizer)
            if self.rank == 0:
                path.mkdir(exist_ok=True)
                torch.save(self.scheduler.state_dict(), path / "sched.pt")
            future = dcp.async_save({"model": msd, "optim": osd}, checkpoint_id=str(path),
                                    process_group=self._pg)
            rank = self.rank

            def mark(fut, path=path):
                fut.result()
                if rank == 0:
                    (path / ".complete").touch()
            future.add_done_callback(mark)
            self._pending = future
        self.trace("ckpt_saved", step=completed, blocking_s=time.time() - t0)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.result()
