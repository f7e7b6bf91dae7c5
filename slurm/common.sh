# Sourced by the scripts of slurm/ (not run by itself). Three functions:
#
# submit_unless_batch SCRIPT MIN_ARGS USAGE ARGS...   (first thing train.sh and test.sh do)
#
# Prints USAGE and exits 2 unless there are MIN_ARGS ARGS; on the login node submits SCRIPT
# ARGS (submit_self) and exits with sbatch's status; in the batch job returns.
#
# submit_self SCRIPT PARTITION JOB_NAME ARGS...   (on the login node, train.sh and test.sh)
#
# Submits SCRIPT PARTITION JOB_NAME ARGS... with sbatch, geometry from the environment
# (mmseg/mmpretrain names): GPUS tasks in all (default 8), GPUS_PER_NODE per node (default
# min(GPUS, 8)), CPUS_PER_TASK (default 5), GRES (default gpu:GPUS_PER_NODE; set it empty on
# CPU-only nodes), SBATCH_ARGS (extra sbatch options), LOG_DIR (job output, default logs).
# The job is requeueable, gets SIGUSR1 SIGNAL_SECONDS (default 600) before its time limit, and
# appends to its output file (a requeued run keeps the earlier runs' log). Relative paths are
# relative to the repository root, where the job runs. HPFF_SLURM_BATCH=1 tells SCRIPT that it
# runs as the batch job.
#
# run_tasks SRUN_ARGS... COMMAND...   (in the batch job, every script)
#
# Runs `srun SRUN_ARGS... COMMAND...` and keeps the batch shell alive and listening while it
# runs, so that a job that checkpointed on a signal comes back:
#   * USR1 or TERM reaching the batch shell (`#SBATCH --signal=B:USR1@<s>` before the time
#     limit; TERM on preemption, scancel, scontrol requeue) is forwarded to srun, which hands it
#     to every task; the tasks' PreemptionHook checkpoints the iteration and exits 75.
#     bash's `wait` returns as soon as a trapped signal arrives, so we wait again until srun
#     itself has ended.
#   * srun exits with the highest exit code of its tasks. 75 (EX_TEMPFAIL, EXIT_PREEMPTED in
#     hpff_dist/engine/preemption.py) means "checkpointed, run me again": the job requeues
#     itself with `scontrol requeue $SLURM_JOB_ID` (needs `--requeue`); the next run continues
#     from the checkpoint (tools/train.py --resume auto).
#   * Unless the batch shell got TERM: then SLURM is ending the job itself, and it decides.
#     After preemption or `scontrol requeue` SLURM requeues the job anyway; after `scancel` or
#     the time limit it must stay ended (a requeue here would undo the user's scancel).
#   * Any other exit code is the job's exit code.
# Needs bash; safe under `set -euo pipefail`.

HPFF_EXIT_PREEMPTED=75

submit_unless_batch() {
    local script=$1 min_args=$2 usage=$3
    shift 3
    [ $# -ge "$min_args" ] || {
        echo "usage: $usage" >&2
        exit 2
    }
    [ -z "${HPFF_SLURM_BATCH:-}" ] || return 0
    submit_self "$script" "$@"
    exit
}

submit_self() {
    local script=$1 repo gpus per_node nodes gres log_dir
    shift
    repo=$(cd "$(dirname "$script")/.." && pwd)
    gpus=${GPUS:-8}
    per_node=${GPUS_PER_NODE:-$((gpus < 8 ? gpus : 8))}
    nodes=$(((gpus + per_node - 1) / per_node))
    gres=${GRES-gpu:$per_node}
    log_dir=${LOG_DIR:-logs}
    [ "${log_dir#/}" != "$log_dir" ] || log_dir=$repo/$log_dir
    mkdir -p "$log_dir"
    local options=(
        --partition="$1" --job-name="$2" --chdir="$repo"
        --nodes="$nodes" --ntasks="$gpus" --ntasks-per-node="$per_node"
        --cpus-per-task="${CPUS_PER_TASK:-5}"
        --requeue --signal="B:USR1@${SIGNAL_SECONDS:-600}"
        --output="$log_dir/%x-%j.out" --open-mode=append
        --export=ALL,HPFF_SLURM_BATCH=1
    )
    [ -z "$gres" ] || options+=(--gres="$gres")
    # shellcheck disable=SC2086  # SBATCH_ARGS: options, split on purpose
    sbatch "${options[@]}" ${SBATCH_ARGS:-} "$repo/slurm/${script##*/}" "$@"
}

# srun does not take --cpus-per-task from sbatch since SLURM 22.05: the tasks' share of CPUs.
srun_cpus() { printf -- '--cpus-per-task=%s' "${SLURM_CPUS_PER_TASK:-1}"; }

# Forward a signal to the running srun (gone already: nothing to do).
_hpff_forward() {
    _hpff_signalled=1
    [ "$1" = TERM ] && _hpff_got_term=1
    printf 'run_tasks: SIG%s received, forwarding to srun (pid %s)\n' "$1" "$_hpff_srun_pid" >&2
    kill -s "$1" "$_hpff_srun_pid" 2>/dev/null || true
}

run_tasks() {
    local code
    _hpff_got_term=0
    srun "$@" &
    _hpff_srun_pid=$!
    trap '_hpff_forward USR1' USR1
    trap '_hpff_forward TERM' TERM
    while :; do
        _hpff_signalled=0
        code=0
        wait "$_hpff_srun_pid" || code=$?
        # A trapped signal ended the wait early (code 128+n): srun may still run, wait again.
        # `wait PID` on an srun that has ended returns its saved exit code, so a second wait
        # after a signal that raced srun's exit is harmless.
        [ "$_hpff_signalled" = 1 ] || break
    done
    trap - USR1 TERM
    if [ "$code" = "$HPFF_EXIT_PREEMPTED" ] && [ "$_hpff_got_term" = 0 ]; then
        printf 'run_tasks: tasks checkpointed and exited %s: requeueing job %s\n' \
            "$code" "${SLURM_JOB_ID:-?}" >&2
        # Fails when SLURM is requeueing or ending the job already, or without --requeue.
        scontrol requeue "${SLURM_JOB_ID:?run_tasks runs inside a SLURM job}" ||
            printf 'run_tasks: scontrol requeue failed (job already being requeued?)\n' >&2
    fi
    return "$code"
}
