"""One worker of one or more sweeps (`run_sweep`): join each sweep's study (`peftx.studies.study`) and
run its trials, one point after another, until no trial is queued or running anywhere.
`peftx sweep --workers N` starts N of these as processes (`peftx.studies.workers`); the points
themselves come from `peftx.studies.sweep`.
"""

from __future__ import annotations

import os
import time

from peftx.errors import PeftxError
from peftx.runs.run import run
from peftx.studies.study import SweepStudy
from peftx.studies.study_run import SweepOutcome, TrialRun, next_trial
from peftx.studies.study_storage import HEARTBEAT_SECONDS
from peftx.studies.sweep_state import Point, SweepSpec, point_state, several_sweeps, shown_name

__all__ = ["POLL_SECONDS", "SweepOutcome", "run_sweep"]

POLL_SECONDS = 2.0  # how often a worker with nothing to take looks at its studies again


def run_sweep(
    points: list[Point],
    overwrite: bool = False,
    display_factory=None,
    log=print,
    poll: float = POLL_SECONDS,
    storage: str | None = None,
    heartbeat: int = HEARTBEAT_SECONDS,
) -> SweepOutcome:
    """One worker of the sweeps `points` belong to: join (or create) each sweep's study, then run
    trials, the first sweep's before the next one's, until no trial is queued or running anywhere.

    A worker that finds nothing queued while other workers' trials run waits for them: a finished
    tuning stage queues its later seeds, and a worker that died leaves its trial to be queued again
    (after 3 missed heartbeats), which this one then resumes from its checkpoint.

    Args:
        overwrite: start the studies afresh and redo every point; meant for one worker.
        display_factory: () -> RunDisplay for each run (None: quiet).
        log: one-line progress messages.
        storage: the studies' storage URL (None: a journal file in each sweep's directory).
        heartbeat: seconds between a running trial's heartbeats.

    Raises:
        PeftxError: a point finished with a different recipe (without `overwrite`), a user error in a
            point (which would repeat in every point), or a study that cannot be opened.
        Interrupted: SIGINT or SIGTERM: the current point wrote its checkpoint and is queued again.
    """
    _refuse_stale(points, overwrite)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PeftxError("peftx sweep: each point runs in one process; start workers with --workers N, not a launcher")
    tag = _tagger(points)

    def say(point: Point, text: str) -> None:
        log(f"{tag(point)}: {text}")

    sweeps: dict[SweepSpec, list[Point]] = {}
    for p in points:
        sweeps.setdefault(p.sweep, []).append(p)
    studies = [SweepStudy.join(spec, pts, storage, heartbeat, overwrite, say) for spec, pts in sweeps.items()]
    out, waiting = SweepOutcome(), False
    run_trial = TrialRun(run, overwrite, display_factory, log, poll)
    while True:
        job = next_trial(studies)
        if job is not None:
            study, trial, point = job
            run_trial(study, trial, point, tag(point), out)
            study.sync(say=say)
            waiting = False
            continue
        if not any(s.running() for s in studies):
            return out
        if not waiting:
            log("waiting for the points other workers run (a finished tuning stage, or a dead worker's point)")
            waiting = True
        time.sleep(poll)
        for s in studies:
            s.sync(say=say)


def _tagger(points: list[Point]):
    """`[3/36] name` for a point of the queue (a search's trial: its name alone)."""
    index = {id(p): i for i, p in enumerate(points, start=1)}
    several = several_sweeps(points)

    def tag(point: Point) -> str:
        at = f"[{index[id(point)]}/{len(points)}] " if id(point) in index else ""
        return at + shown_name(point, several)

    return tag


def _refuse_stale(points: list[Point], overwrite: bool) -> None:
    stale = [p for p in points if (p.sweep is None or p.sweep.search is None) and point_state(p) == "stale"]
    if stale and not overwrite:
        where = stale[0].run_dir
        raise PeftxError(f"{where}: finished with a different recipe; pass --overwrite to redo it, or rename the sweep")
