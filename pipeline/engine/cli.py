"""`pipeline` command line: run, status, validate, report, compare, double-win, bench, predict, stages, models."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from pipeline.engine.errors import ConfigError, PipelineError, UsageError
from pipeline.engine.inputs import non_negative_int, positive_int


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline", description="Sparse, adversarially robust models, from training to measured ONNX.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run every stage not yet done; resume the one cut off")
    r.add_argument("config", help="pipeline YAML")
    r.add_argument("--run-dir", type=Path, help="run directory (default: <run.output_dir>/<run.name>)")
    r.add_argument("--from", dest="from_stage", metavar="STAGE", help="re-run this stage and every later one")
    r.add_argument("--until", dest="until_stage", metavar="STAGE", help="stop after this stage")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. stages.warmup.epochs=3 or data.dataset=cifar10 (repeatable)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides run.device")
    r.add_argument("--repair", action="store_true",
                   help="re-run a damaged stage (altered, missing or truncated outputs or record) and every later one")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars (stage lines and errors still show)")

    s = sub.add_parser("status", help="which stages of a run are done, stale, partial, failed")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--config", type=Path, help="compare against this config (default: the one the run was started from)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    v = sub.add_parser("validate", help="check a config without running anything")
    v.add_argument("config")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--print", dest="print_config", action="store_true",
                   help="print the resolved config (every default filled in) as YAML")
    v.add_argument("--no-data", dest="check_data", action="store_false",
                   help="skip opening the dataset (config keys only)")

    rep = sub.add_parser("report", help="write RUN_DIR/report.md with PNG plots of the whole run")
    rep.add_argument("run_dir", type=Path)
    rep.add_argument("--out", type=Path, help="report file (default: RUN_DIR/report.md)")

    cmp_ = sub.add_parser("compare", help="side-by-side table of runs (RA/SA best, final, diff, FLOPs, gap)")
    cmp_.add_argument("run_dirs", type=Path, nargs="+")
    cmp_.add_argument("--out", type=Path, default=Path("comparison.md"),
                      help="markdown file to write (.csv and .json beside it, and FILE_security_curves.png "
                      "when runs have security curves; default: ./comparison.md)")
    cmp_.add_argument("--label", dest="labels", action="append", metavar="NAME",
                      help="row label, once per run in the given order (default: the run's name)")

    dw = sub.add_parser("double-win", help="double-win table of transferred tickets (standard and adversarial fine-tuning)")
    dw.add_argument("run_dirs", type=Path, nargs="+")
    dw.add_argument("--tolerance", type=float, default=0.0, help="percentage points a ticket may fall below dense")
    dw.add_argument("--select", choices=["best", "final"], default="best",
                    help="compare the best-val checkpoints (default) or the last epochs")

    b = sub.add_parser("bench", help="time an ONNX model with onnxruntime")
    b.add_argument("model", type=Path)
    b.add_argument("--provider", default="cpu", help="cpu | cuda")
    b.add_argument("--batch-sizes", default="1,64", help="comma-separated, e.g. 1,64")
    b.add_argument("--runs", type=positive_int, default=100)
    b.add_argument("--warmup", type=non_negative_int, default=20)
    b.add_argument("--threads", type=positive_int, help="intra-op threads (default: all cores)")
    b.add_argument("--json", action="store_true")

    pr = sub.add_parser("predict", help="classify image files with an exported ONNX model")
    pr.add_argument("model", type=Path)
    pr.add_argument("images", type=Path, nargs="+")
    pr.add_argument("--top", type=positive_int, default=1)

    sub.add_parser("stages", help="installed stage types and their config fields")
    sub.add_parser("models", help="registered model architectures")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    debug = bool(os.environ.get("PIPELINE_DEBUG"))
    try:
        return _dispatch(args)
    except PipelineError as exc:
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
        print(f"error{f' (rank {rank})' if rank else ''}: {exc}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk or a read-only folder outside a stage: the user's to fix, plainly
        from pipeline.engine.runguard import os_error_message

        text, code = os_error_message(exc)
        print(f"error: {text}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return code
    except Exception as exc:  # an unexpected failure: one line, with the way to see the traceback
        print(f"internal error: {type(exc).__name__}: {exc}\n(set PIPELINE_DEBUG=1 to see the traceback)", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 1


def _dispatch(args) -> int:
    # each command imports what it uses: `models` and `--help` need neither pydantic nor the stages
    if args.command == "validate":
        from pipeline.data.check import describe_data
        from pipeline.engine.config import load_config

        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.resolved(), sort_keys=False), end="")
        print(f"{args.config}: ok ({len(cfg.stages)} stages: {' -> '.join(s.name for s in cfg.stages)})")
        for text in cfg.warnings:
            print(f"  warning: {text}")
        if args.check_data:
            print(f"  data: {describe_data(cfg.data)}")
        return 0
    if args.command == "run":
        from pipeline.data.check import describe_data
        from pipeline.engine.config import load_config
        from pipeline.engine.runner import Runner

        cfg = load_config(args.config, args.overrides)
        describe_data(cfg.data)  # a bad dataset is refused before the run directory is created
        for text in cfg.warnings:
            print(f"warning: {text}", file=sys.stderr)
        from pipeline.engine import distributed

        runner = Runner(cfg, args.run_dir, device=args.device, quiet=args.quiet)
        try:
            statuses = runner.run(args.from_stage, args.until_stage, source=args.config, overrides=args.overrides,
                                  repair=args.repair)
            if distributed.is_main():
                _print_summary(runner, statuses)
        finally:
            distributed.shutdown()
        return 0
    if args.command == "status":
        return _status(args)
    if args.command == "report":
        from pipeline.reporting.report import write_report

        _require_run_dir(args.run_dir)
        print(write_report(args.run_dir, args.out))
        return 0
    if args.command == "compare":
        from pipeline.reporting.compare import compare_runs

        for run_dir in args.run_dirs:
            _require_run_dir(run_dir)
        if args.labels is not None and len(args.labels) != len(args.run_dirs):
            raise UsageError(f"--label given {len(args.labels)} time(s) for {len(args.run_dirs)} run(s); "
                             "give one label per run, in the same order, or none")
        text, _ = compare_runs(args.run_dirs, args.out, labels=args.labels)
        print(text)
        return 0
    if args.command == "double-win":
        from pipeline.reporting.double_win import double_win_table, format_double_win

        print(format_double_win(double_win_table(args.run_dirs, tolerance=args.tolerance, select=args.select)))
        return 0
    if args.command == "bench":
        return _bench(args)
    if args.command == "predict":
        return _predict(args)
    if args.command == "stages":
        _print_stages()
        return 0
    if args.command == "models":
        from pipeline.models.names import known_models

        print("\n".join(known_models()))
        return 0
    raise AssertionError(args.command)


def _require_run_dir(run_dir: Path) -> None:
    if not (run_dir / "config.yaml").is_file():
        what = "does not exist" if not run_dir.exists() else "is not a run directory (no config.yaml)"
        raise UsageError(f"{run_dir} {what}; pass a folder made by `pipeline run`, e.g. runs/quickstart")


def _bench(args) -> int:
    from pipeline.engine.inputs import batch_sizes, check_onnx_file

    sizes = batch_sizes(args.batch_sizes)
    check_onnx_file(args.model)
    from exports.ort_runtime import benchmark

    res = benchmark(args.model, args.provider, batch_sizes=sizes, runs=args.runs, warmup=args.warmup,
                    intra_op_threads=args.threads)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    env = res.get("environment", {})
    print(f"{args.model} on {args.provider} ({env.get('intra_op_threads', '?')} threads, onnxruntime {env.get('onnxruntime', '?')})")
    for b, r in res["per_batch"].items():
        print(f"  batch {b:>4}: median {r['median_ms']:.3f} ms  p90 {r['p90_ms']:.3f} ms  "
              f"p99 {r['p99_ms']:.3f} ms  {r['throughput_img_s']:.0f} img/s")
    return 0


def _predict(args) -> int:
    from pipeline.engine.inputs import check_image, check_onnx_file

    check_onnx_file(args.model)
    for path in args.images:
        check_image(path)
    from exports.predict import Predictor

    predictor = Predictor(args.model)
    import numpy as np

    for path in args.images:
        probs = predictor.probabilities(predictor.load_image(path)[None])[0]
        order = np.argsort(-probs)[: max(args.top, 1)]
        shown = ", ".join(f"{predictor.class_names[i]} {probs[i]:.3f}" for i in order)
        print(f"{path}: {shown}")
    return 0


def _status(args) -> int:
    from pipeline.engine import store
    from pipeline.engine.config import load_config, validate_tree
    from pipeline.engine.runner import RUN_JSON, Runner

    run_dir: Path = args.run_dir
    _require_run_dir(run_dir)
    source, overrides = args.config, []
    if source is None and (run_dir / RUN_JSON).exists():
        recorded = store.read_json(run_dir / RUN_JSON)
        path = recorded.get("source_config")
        source = Path(path) if path and Path(path).exists() else None
        overrides = recorded.get("overrides") or []  # the run's --set edits count as its config
    note = ""
    if source is not None:
        try:
            cfg = load_config(source, overrides)
        except ConfigError as exc:
            note = f"(source config {source} is invalid now; compared with the run's own config.yaml)\n{exc}"
            source = None
    if source is None:
        cfg = validate_tree(store.read_written_yaml(run_dir / "config.yaml"))
    statuses = Runner(cfg, run_dir, quiet=True).statuses()
    damaged = 4 if any(s.state == "damaged" for s in statuses) else 0  # scripts can tell without parsing
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), "config": str(source) if source else str(run_dir / "config.yaml"),
                          "stages": [s.__dict__ for s in statuses]}, indent=2, default=str))
        return damaged
    if note:
        print(note)
    print(f"run {run_dir} (compared with {source or run_dir / 'config.yaml'})")
    for s in statuses:
        extra = f"  {s.seconds:.0f}s" if s.seconds is not None else ""
        print(f"  {s.name:<18} {s.type:<14} {s.state:<8}{extra}  {s.detail}")
    if damaged:
        print("damaged stages cannot be used; `pipeline run CONFIG --repair` redoes them and every later stage")
    return damaged


def _print_summary(runner, statuses) -> None:
    from exports.runtime_record import RuntimeRecord
    from pipeline.engine.rundir import StageRecord

    lines = []
    for s in statuses:
        if s.state != "done":
            continue
        stage = StageRecord(runner.run_dir, s.name)
        for fname in stage.files:
            if fname.endswith(".onnx") or fname == "runtime.json":
                lines.append(f"  {s.name}: {stage.dir / fname}")
        rt = stage.section(RuntimeRecord)
        if rt:
            for prov, res in rt.providers.items():
                if res.get("status") == "ok":
                    b1 = res["per_batch"].get("1") or next(iter(res["per_batch"].values()))
                    lines.append(f"    {prov}: batch 1 median {b1['median_ms']:.3f} ms, p90 {b1['p90_ms']:.3f} ms"
                                 + "".join(f"; batch {b} {r['throughput_img_s']:.0f} img/s"
                                           for b, r in res["per_batch"].items() if b != "1"))
                else:
                    lines.append(f"    {prov}: {res.get('status')} ({res.get('reason', '')})")
            from exports.runtime_compare import summary_lines  # what compression bought, vs the dense baseline

            lines += summary_lines(rt.comparison)
    # the result summary goes to stdout (and run.log), so `make demo > log` keeps it
    for line in [f"finished: {runner.run_dir}", *lines]:
        print(line, flush=True)
        runner.console.log_only(line)


def _print_stages() -> None:
    from pipeline.engine.registry import STAGES

    for name in STAGES.names():
        cls = STAGES.get(name)
        print(f"{name}: {cls.summary}")
        fields = cls.Config.model_fields
        order = ["name", "input"] + [f for f in fields if f not in ("name", "input", "type")]
        for fname in order:
            finfo = fields[fname]
            default = "required" if finfo.is_required() else _short(finfo.get_default(call_default_factory=True))
            desc = f"  {finfo.description}" if finfo.description else ""
            print(f"    {fname} = {default}{desc}")
    for name, why in sorted(STAGES.broken.items()):
        print(f"{name}: BROKEN ({why})")


def _short(value) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    text = json.dumps(value, default=str)
    return text if len(text) < 90 else text[:87] + "..."


if __name__ == "__main__":
    sys.exit(main())
