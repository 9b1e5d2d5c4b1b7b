"""What `peftx sweep --dry-run` shows: each point's state from its run directory and its budget counted
without weights, running nothing and opening no study (`plan`)."""

from __future__ import annotations

from dataclasses import dataclass

from peftx.studies.budget.declared import BudgetCounter
from peftx.studies.sweep_state import Point, point_state, read_record, several_sweeps, shown_name, tuning_verdict


@dataclass
class PlannedPoint:
    """A point as `peftx sweep --dry-run` shows it."""

    name: str
    state: str
    trainable: int
    total: int
    trainable_pct: float


def plan(points: list[Point]) -> list[PlannedPoint]:
    """Each point's state (from its run directory) and trainable budget (counted without weights, from
    the families' declared shapes where they cover the recipe: no torch), running nothing and opening
    no study; a search is one line, its trials finished so far."""
    out = []
    several = several_sweeps(points)
    for p in points:
        b = BudgetCounter(p.recipe).count(p.recipe.method)  # declared shapes; the meta device where they miss
        search = p.sweep.search if p.sweep is not None else None
        if search is not None:
            records = (read_record(Point(d.name, {}, p.recipe)) for d in p.sweep.dir.glob("trial-*"))
            done = sum(r is not None and r.completed for r in records)
            name = f"{shown_name(p, several)}: {search.trials} trials, {search.sampler}"
            out.append(PlannedPoint(name, f"{done} done", b.trainable, b.total, b.trainable_pct))
            continue
        state = point_state(p)
        if p.stage == 2 and state == "todo":
            verdict, _ = tuning_verdict(p, points)
            state = {"wait": "after tuning", "skip": "not chosen"}.get(verdict, state)
        out.append(PlannedPoint(shown_name(p, several), state, b.trainable, b.total, b.trainable_pct))
    return out
