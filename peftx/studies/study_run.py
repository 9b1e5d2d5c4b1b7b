"""A worker's part in a sweep's studies: take the next queued trial, run its point, tell the study how
the run ended (completed with its validation metric, pruned, failed; diverged is a failure with a
`diverged` attribute; interrupted is queued again for the next worker to resume)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from peftx.errors import Diverged, Interrupted, PeftxError, Pruned
from peftx.runs.directory import RunLocked
from peftx.studies.study import SweepStudy
from peftx.studies.study_trial import DIVERGED, ERROR, INTERRUPTED, TrialReporter
from peftx.studies.sweep_state import Point, objective_value


@dataclass
class SweepOutcome:
    """What one worker of a sweep did: points it ran to the end, and those that failed, diverged or
    were pruned."""

    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)


def next_trial(studies: list[SweepStudy]) -> tuple[SweepStudy, optuna.Trial, Point] | None:
    """The first sweep's next queued trial, else the next sweep's (None: none is queued); each study's
    dead workers' trials are queued again first."""
    for study in studies:
        study.fail_stale()
        taken = study.claim()
        if taken is not None:
            return study, *taken
    return None


@dataclass
class TrialRun:
    """How a worker runs its trials.

    Attributes:
        run: `peftx.runs.run.run` (passed in: tests stand in for it).
        overwrite: redo finished points.
        display_factory: () -> RunDisplay for each run (None: quiet).
        log: one-line messages.
        poll: seconds between looks at a run directory another process holds.
    """

    run: Callable
    overwrite: bool = False
    display_factory: Callable | None = None
    log: Callable[[str], None] = print
    poll: float = 2.0

    def __call__(self, study: SweepStudy, trial: optuna.Trial, point: Point, tag: str, out: SweepOutcome) -> None:
        """Run a trial's point and tell the study how it ended; its heartbeat beats meanwhile.

        Raises:
            Interrupted: SIGINT or SIGTERM (the point checkpointed and is queued again).
            PeftxError: a user error in the point (which would repeat in every point).
        """
        kind = point.sweep.prune.kind
        reporter = TrialReporter(trial, prune=kind != "none" and point.stage != 2, kind=kind)
        ran: list[str] = []

        def started(plan: str) -> None:
            ran.append(plan)
            self.log(f"{tag} (resumed)" if plan == "resume" else tag)

        with study.beating(trial):
            try:
                result = self._run_when_free(point, started, reporter)
            except Pruned as e:
                study.tell(trial, TrialState.PRUNED)
                self.log(f"{tag}: pruned at step {e.step}")
                out.pruned.append(point.name)
            except Interrupted as e:  # the point checkpointed: queued again, and the sweep stops
                trial.set_user_attr(INTERRUPTED, str(e))
                study.tell(trial, TrialState.FAIL)
                study.requeue(trial)
                raise
            except Diverged as e:  # this point's settings (its lr), not the sweep's: the rest go on
                self.log(f"{tag}: {e}")
                self._fail(study, trial, DIVERGED, str(e))
                out.diverged.append(point.name)
            except PeftxError as e:
                self._fail(study, trial, ERROR, str(e))
                raise
            except Exception as e:  # a crash in one point is recorded in its result.json; the rest go on
                self.log(f"{tag}: failed: {type(e).__name__}: {e}")
                self._fail(study, trial, ERROR, f"{type(e).__name__}: {e}")
                out.failed.append(point.name)
            else:
                _report_history(trial, result.record.history)
                study.tell(trial, TrialState.COMPLETE, objective_value(result.record.metrics)[0])
                if ran:
                    out.completed.append(point.name)

    def _run_when_free(self, point: Point, started, reporter):
        """Run the point; while another process holds its run directory (a run started by hand), wait."""
        while True:
            try:
                display = self.display_factory() if self.display_factory else None
                resume = not self.overwrite
                return self.run(
                    point.recipe,
                    overwrite=self.overwrite,
                    resume=resume,
                    display=display,
                    on_start=started,
                    on_eval=reporter,
                )
            except RunLocked:
                time.sleep(self.poll)

    @staticmethod
    def _fail(study: SweepStudy, trial: optuna.Trial, key: str, why: str) -> None:
        trial.set_user_attr(key, why)
        study.tell(trial, TrialState.FAIL)


def _report_history(trial: optuna.Trial, history) -> None:
    """Every evaluation of a completed run as the trial's reports (a run that finished before, or
    resumed, reported only some of them here)."""
    with warnings.catch_warnings():  # a step reported before is kept as it was
        warnings.simplefilter("ignore")
        for h in history:
            value = objective_value(h)[0]
            if value is not None:
                trial.report(value, h.step)
