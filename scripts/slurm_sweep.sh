#!/usr/bin/env bash
# A Slurm array whose tasks are workers of one sweep: every task runs `peftx sweep` on the same grid,
# and the run directories' locks share the points out (each point runs once; a point whose task was
# killed resumes from its checkpoint in the next task that reaches it).
#
#   sbatch --array=0-7 scripts/slurm_sweep.sh recipes/paper/listops.yaml [--set key=value ...]
#
# The run directories must be on a file system every node sees (output.dir).
#SBATCH --job-name=peftx-sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
# SIGTERM (a time limit, pre-emption, scancel) reaches peftx, which checkpoints the point at hand and
# exits 143; a requeued task, or any other worker, resumes it.
exec peftx sweep "$@" --quiet
