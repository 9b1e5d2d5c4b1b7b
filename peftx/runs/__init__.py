"""One run from recipe to run directory: the phases of `run`, the recorder that owns the run record's
life and the record itself (result.json, metrics.jsonl, weights), run directories and their locks, trackers,
the terminal display, predict and evaluate, and `validate`.
"""
