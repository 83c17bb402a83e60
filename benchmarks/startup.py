"""Start-up time of the light commands: `pipeline --help`, `validate`, `models`, `stages`, `status`.

    python benchmarks/startup.py            # median of 3 runs per command, in fresh interpreters
    python benchmarks/startup.py --runs 5

Each command runs as a user runs it (a new `python -m pipeline` process), so the figure includes the
interpreter and every import. `status` needs a run: a one-step run of the quickstart is made once in a
temporary folder first (not timed). The last line is the slowest command's median. Beside the wall
time, the process's CPU time (user + system): on a busy machine it is close to what the command takes on
an idle one, since start-up runs on one core.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh `python -m pipeline ARGS` process."""
    cpu0, t0 = _cpu_children(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"pipeline {' '.join(args)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return seconds, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "pipeline", "run", "pipeline.yaml", "--run-dir", str(run_dir), "-q",
                        "--until", "warmup", "--set", "stages.warmup.epochs=1",
                        "--set", "stages.warmup.schedule.kind=constant",
                        "--set", "stages.warmup.max_steps_per_epoch=1", "--set", "stages.warmup.eval.val_limit=8",
                        "--set", "stages.warmup.eval.test_limit=8"],
                       cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        commands = {"--help": ["--help"], "validate": ["validate", "pipeline.yaml"], "models": ["models"],
                    "stages": ["stages"], "status": ["status", str(run_dir)]}
        medians = {}
        for name, argv in commands.items():
            runs = [_time(argv, env) for _ in range(args.runs)]
            times = [wall for wall, _ in runs]
            medians[name] = statistics.median(times)
            cpu = statistics.median(c for _, c in runs)
            print(f"{name:<10} median {medians[name]:6.2f} s   cpu {cpu:5.2f} s   "
                  f"(runs: {', '.join(f'{t:.2f}' for t in times)})")
    slowest = max(medians, key=medians.get)
    print(f"slowest: {slowest} {medians[slowest]:.2f} s")


if __name__ == "__main__":
    main()
