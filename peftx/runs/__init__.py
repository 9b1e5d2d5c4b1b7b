"""One run from recipe to run directory: the phases of `run`, the run record (result.json), run directories
and their locks, trackers, the terminal display, predict and evaluate, and `validate`.
"""
