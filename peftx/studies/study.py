"""A sweep's Optuna study: where it is stored, how workers join it, and the queue of its points.

A sweep is an Optuna study named after it. It is stored in a journal file in the sweep's directory by
default (`<output.dir>/<name>/optuna-journal.log`: no server), or in any Optuna storage URL
(`sqlite:///...`, `postgresql://...`, `mysql://...`) that workers on many machines share. Each trial
is one run; its point, run directory, stage and pruning group are its user attributes, its state
follows the run (completed, pruned, failed; diverged is a failure with a `diverged` attribute).

Optuna does the sharing: every point still to run is a waiting trial with its values (Optuna's trial
queue), and a worker takes one by moving it to running, which Optuna makes atomic in every storage, so
no two workers take one point. Its heartbeat finds a worker that died: a database storage records
heartbeats itself (`RDBStorage(heartbeat_interval=...)`), and `RetryHeartbeatStaleTrialCallback` queues
the dead worker's trial again with its values, run directory and reports; the next worker resumes its
run from the run's last checkpoint (when the run directories are on a file system both see).

What peftx adds, because Optuna has no way to do it:
- the queue is filled once, by the worker that created the study (Optuna's study creation is
  atomic; filling the queue is not), while others wait until it says it is done (`QUEUED`);
- a worker takes queued trials only (`Study.ask` makes a new, empty trial when the queue is empty) and
  closes a rare duplicate (two workers that queued one point at the same moment) unrun;
- the journal storage has no heartbeat: workers write theirs into their trial (`HEARTBEAT`) and fail a
  trial whose heartbeat stopped, with the same retry callback;
- not `GridSampler`: it shuffles the grid, lets each new trial pick its point (in a distributed study
  "the total number of actual trials may exceed the size of the grid"), and cannot hold a point back
  until a tuning stage has chosen its value.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from peftx.errors import PeftxError
from peftx.studies.study_storage import open_storage, retry_callback, settled, worker_index
from peftx.studies.study_trial import (
    DIVERGED,
    DUPLICATE_OF,
    GROUP,
    POINT,
    RUN_DIR,
    STAGE,
    group_of,
    make_pruner,
    make_sampler,
    searched_point,
)
from peftx.studies.sweep_state import Outcome, Point, SweepSpec, objective_value, read_record, tuning_verdict

QUEUED, SWEEP_DIR = "peftx_queued", "peftx_sweep_dir"  # study user attributes
REQUEUED_AFTER = "requeued_after"  # a point queued again: the trial it had before
WORKER, WORKER_ID = "worker", f"{socket.gethostname()}:{os.getpid()}"  # which process runs a trial
HEARTBEAT = "peftx_heartbeat"  # trial system attribute (journal storage): [time, seconds to the next]
JOIN_WAIT_SECONDS = 120  # how long a joining worker waits for the creator to fill the queue


class SweepStudy:
    """One sweep's study, as one worker sees it: its queue, and the trials of its points.

    Build it with `SweepStudy.join`. `claim` takes the next point to run; `sync` queues the points that
    have come due (a tuned value's later seeds); `fail_stale` queues again the trials of dead workers.
    """

    def __init__(self, spec: SweepSpec, points: list[Point], storage, study: optuna.Study, heartbeat: int):
        self.spec, self.points, self.storage, self.study = spec, points, storage, study
        self.heartbeat = heartbeat
        self.study_id = storage.get_study_id_from_name(spec.name)
        self.order = {p.name: i for i, p in enumerate(points)}
        self.told: set[str] = set()  # points this worker has said something about (once each)
        keys = dict.fromkeys(k for p in points for k in p.params)
        self.distributions = {k: d for k in keys if (d := _distribution(k, points)) is not None}

    @classmethod
    def join(cls, spec: SweepSpec, points: list[Point], url: str | None, heartbeat: int, overwrite: bool, say):
        """Create the sweep's study, or join it, and see its queue filled.

        Args:
            url: `--storage` (None: the journal file in the sweep's directory).
            overwrite: start the study afresh (the sweep redoes every point).
            say: `say(point, text)`: a line about a point (finished ones are said once, at the start).

        Raises:
            PeftxError: the storage holds a study of this name for another sweep, or one that
                optimises in the other direction.
        """
        storage = open_storage(url, spec.dir, heartbeat)
        if overwrite:
            with suppress(KeyError):  # no such study yet
                optuna.delete_study(study_name=spec.name, storage=storage)
        pruner = make_pruner(spec, points[0].recipe, storage)
        sampler = make_sampler(spec, worker_index())
        try:
            study = optuna.create_study(
                storage=storage, study_name=spec.name, direction=spec.direction, sampler=sampler, pruner=pruner
            )
            study.set_user_attr(SWEEP_DIR, str(spec.dir))
            created = True
        except DuplicatedStudyError:
            study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
            created = False
        self = cls(spec, points, storage, study, heartbeat)
        if not created:
            self._wait_queued()
            self._check_same_sweep()
        self.sync(startup=True, say=say)
        if created:
            study.set_user_attr(QUEUED, True)
        return self

    def _wait_queued(self) -> None:
        """Wait for the worker that created the study to fill its queue (a joiner that filled it too
        would queue every point twice); after `JOIN_WAIT_SECONDS` that worker is taken for dead."""
        deadline = time.monotonic() + JOIN_WAIT_SECONDS
        while not self.study.user_attrs.get(QUEUED) and time.monotonic() < deadline:
            time.sleep(0.5)

    def _check_same_sweep(self) -> None:
        theirs = self.study.user_attrs.get(SWEEP_DIR)
        if theirs is not None and Path(theirs) != self.spec.dir:
            raise PeftxError(
                f"{self.spec.where}: the storage holds a study {self.spec.name!r} of the sweep in {theirs}; "
                "give this sweep another `name`"
            )
        if self.study.direction.name.lower() != self.spec.direction:
            raise PeftxError(
                f"{self.spec.where}: study {self.spec.name!r} {self.study.direction.name.lower()}s its metric, "
                f"this sweep {self.spec.direction}s it; give this sweep another `name`"
            )

    def latest(self) -> dict[str, FrozenTrial]:
        """Each point's latest trial (a closed duplicate is none)."""
        out: dict[str, FrozenTrial] = {}
        for t in self.study.get_trials(deepcopy=False):
            name = t.user_attrs.get(POINT)
            if (
                name is not None
                and DUPLICATE_OF not in t.user_attrs
                and (name not in out or t.number > out[name].number)
            ):
                out[name] = t
        return out

    def sync(self, startup: bool = False, say=lambda p, text: None) -> None:
        """Queue every point that has come due and has no trial that is queued, running or finished:
        at the start, every point not yet run (one finished on disk is told from its record instead),
        and a point that failed (a crash may be the machine's); a tuned value's later seeds once their
        configuration's tuning stage has chosen."""
        if self.spec.search is not None:
            return  # a search's trials are drawn one by one (`claim`)
        latest = self.latest()
        for p in self.points:
            t = latest.get(p.name)
            if t is not None and not self._due_again(p, t, startup):
                if startup and t.state.is_finished():
                    say(p, f"{_shown_state(t)}, skipped")
                continue
            if p.stage == 2:
                verdict, why = tuning_verdict(p, self.points, lambda q: _outcome(latest.get(q.name)))
                if verdict == "wait":
                    continue
                if verdict == "skip":
                    if p.name not in self.told:
                        say(p, f"not run ({why})")
                        self.told.add(p.name)
                    continue
            told = self._told_from_disk(p) if startup and t is None else None
            if told is not None:
                say(p, f"{_shown_state(told)}, skipped")
            latest[p.name] = told or self._queue(p, again=t)

    def _due_again(self, point: Point, trial: FrozenTrial, startup: bool) -> bool:
        """Whether a point that has a trial is to be queued again: at the start, after a crash, or
        where its completed run lost its record (a run directory that exists elsewhere is not looked at)."""
        if not startup:
            return False
        if trial.state == TrialState.FAIL:
            return DIVERGED not in trial.user_attrs
        if trial.state == TrialState.COMPLETE and point.run_dir.is_dir():
            record = read_record(point)
            return record is None or not record.completed
        return False

    def _trial_template(self, point: Point, state: TrialState, **fields) -> FrozenTrial:
        """A trial for a point: its numeric and boolean axes as parameters, its other axes (whole
        sections, names) as user attributes beside its point, run directory, stage and group."""
        params = {k: v for k, v in point.params.items() if k in self.distributions}
        attrs = {k: str(v) for k, v in point.params.items() if k not in self.distributions}
        attrs |= {POINT: point.name, RUN_DIR: str(point.run_dir), STAGE: point.stage, GROUP: group_of(point)}
        distributions = {k: self.distributions[k] for k in params}
        try:
            return optuna.trial.create_trial(
                state=state, params=params, distributions=distributions, user_attrs=attrs, **fields
            )
        except ValueError as e:
            raise PeftxError(f"{self.spec.where}: {point.name}: {e}") from None

    def _queue(self, point: Point, again: FrozenTrial | None = None) -> FrozenTrial:
        """Queue a point; `again`: the trial it had (a crash, a lost record), which it no longer holds."""
        trial = self._trial_template(point, TrialState.WAITING)
        if again is not None:
            trial.set_user_attr(REQUEUED_AFTER, again.number)
        self._add(trial)
        return trial

    def _add(self, trial: FrozenTrial) -> None:
        try:
            self.study.add_trial(trial)
        except ValueError as e:  # a parameter's values changed since the study began (a grid edited)
            raise PeftxError(
                f"{self.spec.where}: study {self.spec.name!r} was made for other values ({e}); "
                "give the sweep another `name`"
            ) from None

    def _told_from_disk(self, point: Point) -> FrozenTrial | None:
        """A trial for a point whose run finished before the study knew it (a sweep made before its
        study, or runs copied in), told as its record says, without running it again."""
        record = read_record(point)
        if record is None or record.status not in ("completed", "diverged", "pruned"):
            return None
        reports = {h.step: v for h in record.history if (v := objective_value(h)[0]) is not None}
        if record.status == "completed":
            trial = self._trial_template(
                point, TrialState.COMPLETE, value=objective_value(record.metrics)[0], intermediate_values=reports
            )
        else:
            state = TrialState.PRUNED if record.status == "pruned" else TrialState.FAIL
            trial = self._trial_template(point, state, intermediate_values=reports)
            if record.status == "diverged":
                trial.set_user_attr(DIVERGED, record.error or "diverged")
        self._add(trial)
        return trial

    def claim(self) -> tuple[optuna.Trial, Point] | None:
        """The next queued trial in the sweep's order, taken from the queue (None: nothing queued); for
        a search with trials left in its budget, a new one."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        waiting.sort(key=lambda t: (self.order.get(t.user_attrs.get(POINT), len(self.order)), t.number))
        for frozen in waiting:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, frozen.number)
            try:
                if not self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    continue  # another worker took it first
            except UpdateFinishedTrialError:
                continue
            trial = optuna.Trial(self.study, trial_id)
            if not self._duplicate(trial):
                trial.set_user_attr(WORKER, WORKER_ID)
                return trial, self._point_of(trial)
        if self.spec.search is not None and self._search_left() > 0:
            with warnings.catch_warnings():  # Optuna would rather run heartbeats in `optimize`; ours beat
                warnings.simplefilter("ignore")
                trial = self.study.ask()
            trial.set_user_attr(WORKER, WORKER_ID)
            return trial, self._point_of(trial)
        return None

    def _point_of(self, trial: optuna.Trial) -> Point:
        if self.spec.search is not None:
            point = searched_point(trial, self.spec)
            for key, value in ((POINT, point.name), (RUN_DIR, str(point.run_dir)), (STAGE, 0), (GROUP, "search")):
                trial.set_user_attr(key, value)
            return point
        return self.points[self.order[trial.user_attrs[POINT]]]

    def _search_left(self) -> int:
        first_tries = [t for t in self.study.get_trials(deepcopy=False) if "failed_trial" not in t.system_attrs]
        return self.spec.search.trials - len(first_tries)

    def _duplicate(self, trial: optuna.Trial) -> bool:
        """Close a trial whose point another trial holds (queued before it, running or finished): two
        workers queued it at the same moment. Closed as failed with `duplicate_of`, unrun."""
        name, after = trial.user_attrs.get(POINT), trial.user_attrs.get(REQUEUED_AFTER, -1)
        for other in self.study.get_trials(deepcopy=False):
            same = other.user_attrs.get(POINT) == name and other.number not in (trial.number, *range(after + 1))
            if not same or DUPLICATE_OF in other.user_attrs:
                continue
            holds = other.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
            earlier = other.state == TrialState.WAITING and other.number < trial.number
            if holds or earlier or DIVERGED in other.user_attrs:
                trial.set_user_attr(DUPLICATE_OF, other.number)
                self.study.tell(trial, state=TrialState.FAIL)
                return True
        return False

    def tell(self, trial: optuna.Trial, state: TrialState, value: float | None = None) -> None:
        """End a trial (`value`: a completed run's validation metric). A trial already ended is left as
        it is: another worker took this one for dead (a long pause) and failed it."""
        self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)

    def requeue(self, trial: optuna.Trial) -> None:
        """Queue an interrupted trial again with its values, run directory and reports: the next worker
        resumes its run from the checkpoint it wrote."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        retry_callback(max_retry=None)(self.study, self.storage.get_trial(trial_id))

    def running(self) -> bool:
        """Whether any trial of the study is running (this worker's, or another's)."""
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def fail_stale(self) -> None:
        """Fail the running trials whose worker stopped beating, and queue them again (Optuna's
        `fail_stale_trials` for a database; the same, on the trial's own heartbeat, for a journal)."""
        if isinstance(self.storage, RDBStorage):
            with settled():
                fail_stale_trials(self.study)
            return
        retry = retry_callback()
        now = time.time()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # judged by the interval its own worker beats at (workers may be started with another)
            start = t.datetime_start.timestamp() if t.datetime_start else now
            last, every = t.system_attrs.get(HEARTBEAT) or (start, self.heartbeat)
            if now - last <= 3 * every:
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
            try:
                if self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    retry(self.study, self.storage.get_trial(trial_id))
            except UpdateFinishedTrialError:
                pass  # another worker failed it first, and queued its retry

    @contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        """Heartbeats for a trial while its run goes on, every `heartbeat` seconds from a thread."""
        stop = threading.Event()
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        beat = _beat_function(self.storage, trial_id, self.heartbeat)
        beat()

        def loop() -> None:
            while not stop.wait(self.heartbeat):
                beat()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _beat_function(storage, trial_id: int, every: int) -> Callable[[], None]:
    if isinstance(storage, RDBStorage):
        return lambda: storage.record_heartbeat(trial_id)
    return lambda: storage.set_trial_system_attr(trial_id, HEARTBEAT, [time.time(), every])


def _distribution(key: str, points: list[Point]):
    """A grid axis as an Optuna distribution: a range over its numbers (a range, not the numbers as
    choices: a study whose grid grows keeps its distributions), its booleans; None for other values,
    which trials show as user attributes instead."""
    values = [p.params[key] for p in points if key in p.params]
    if all(isinstance(v, bool) for v in values):
        return optuna.distributions.CategoricalDistribution([False, True])
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        return None
    if all(isinstance(v, int) for v in values):
        return optuna.distributions.IntDistribution(min(values), max(values))
    return optuna.distributions.FloatDistribution(min(values), max(values), log=min(values) > 0)


def _outcome(trial: FrozenTrial | None) -> Outcome:
    """A tuning point's outcome as its study tells it (`tuning_verdict`)."""
    if trial is None or trial.state in (TrialState.WAITING, TrialState.RUNNING):
        return "wait", None
    if trial.state == TrialState.COMPLETE:
        return "done", trial.value
    return "none", None


def _shown_state(trial: FrozenTrial) -> str:
    if trial.state == TrialState.FAIL:
        return "diverged" if DIVERGED in trial.user_attrs else "failed"
    return {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned"}.get(trial.state, trial.state.name.lower())
