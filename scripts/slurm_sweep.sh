#!/usr/bin/env bash
# A Slurm array whose tasks are workers of one sweep: every task runs `peftx sweep` on the same recipe
# and joins the same Optuna study, whose trial queue shares the points out (each point runs once; the
# point of a task that was killed is queued again once its heartbeat stops, and the next task resumes
# it from its checkpoint).
#
#   sbatch --array=0-7 scripts/slurm_sweep.sh recipes/paper/listops.yaml [--set key=value ...]
#   STORAGE=postgresql://user:password@dbhost/peftx sbatch --array=0-31 scripts/slurm_sweep.sh recipes/paper/listops.yaml
#
# Without STORAGE the study is a journal file in the sweep's directory, and the run directories
# (output.dir) and that file must be on a file system every node sees. With STORAGE (a database every
# node reaches) the study needs no shared file system; a dead task's point then resumes from its
# checkpoint only where output.dir is shared (elsewhere it starts again). Watch it:
#   optuna-dashboard "$STORAGE"      (or the journal file: runs/<sweep>/optuna-journal.log)
#SBATCH --job-name=peftx-sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
# SIGTERM (a time limit, pre-emption, scancel) reaches peftx, which checkpoints the point at hand,
# queues it again and exits 143; a requeued task, or any other worker, resumes it. Each task's index
# (SLURM_ARRAY_TASK_ID) seeds a `search:` sampler apart from the others'.
exec peftx sweep "$@" --quiet ${STORAGE:+--storage "$STORAGE"}
