"""The light commands (`--help`, `validate`, `models`, `stages`, `status`) start without torch or any other
heavy library, so they answer in about a second: each runs in a fresh interpreter, as a user runs it, and
the modules loaded at its end are checked. The torch-free name lists the configs validate against are
checked against the registries they stand for."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, tiny_config

HEAVY = ("torch", "torchvision", "scipy", "matplotlib", "onnx", "onnxruntime", "torch_pruning", "nni", "advertorch")

# Runs each argv through the CLI's main() in this one process, then names the heavy modules loaded.
_PROBE = textwrap.dedent("""
    import json, sys
    from pipeline.engine.cli import main

    results = []
    for argv in json.loads(sys.argv[1]):
        try:
            code = main(argv)
        except SystemExit as exc:  # --help
            code = exc.code or 0
        results.append({"argv": argv, "code": code, "heavy": sorted(m for m in %r if m in sys.modules)})
    print("PROBE " + json.dumps(results))
""" % (HEAVY,))


def _probe(commands: list[list[str]], env: dict | None = None) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(commands)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert line is not None, f"probe failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return json.loads(line[len("PROBE "):])


def _assert_light(results: list[dict], codes: tuple[int, ...] = (0,)) -> None:
    for r in results:
        assert r["code"] in codes, r
        assert r["heavy"] == [], f"pipeline {' '.join(r['argv'])} imported {', '.join(r['heavy'])}"


def test_help_models_stages_and_validate_of_every_shipped_config_import_no_torch():
    configs = ["pipeline.yaml", *sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml"))]
    results = _probe([["--help"], ["models"], ["stages"], *(["validate", c] for c in configs)])
    _assert_light(results[:3])
    _assert_light(results[3:], codes=(0, 2))  # 2: a recipe whose data set is not on this machine is refused


def test_status_of_a_run_with_a_finished_stage_imports_no_torch(tmp_path, write_config):
    from pipeline.engine.config import load_config
    from pipeline.engine.runner import Runner

    cfg = tiny_config(warmup={"mode": "clean", "epochs": 1, "max_steps_per_epoch": 1,
                              "eval": {"val_limit": 8, "test_limit": 8, "robust": False}})
    path = write_config(cfg)
    Runner(load_config(path), tmp_path / "run", quiet=True).run(until_stage="warmup")
    results = _probe([["status", str(tmp_path / "run")], ["status", str(tmp_path / "run"), "--json"],
                      ["validate", str(path)]])
    _assert_light(results)


def test_a_plugin_stage_is_listed_and_validated_by_the_light_commands(tmp_path, write_config):
    pkg = tmp_path / "site"
    (pkg / "light_plugin").mkdir(parents=True)
    (pkg / "light_plugin" / "__init__.py").write_text(textwrap.dedent('''
        from pipeline.stage import Stage, StageConfig

        class NoteConfig(StageConfig):
            words: int = 3

        class Note(Stage):
            Config = NoteConfig
            summary = "writes a note"
    '''))
    dist = pkg / "light_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: light-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pipeline.stages]\nnote = light_plugin:Note\n")
    cfg = tiny_config()
    cfg["stages"] = cfg["stages"][:1] + [{"name": "note", "type": "note", "words": "many"}]
    bad = write_config(cfg)
    env = {**os.environ, "PYTHONPATH": f"{pkg}{os.pathsep}{REPO}"}
    probe = textwrap.dedent("""
        import contextlib, io, sys
        from pipeline.engine.cli import main
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            a = main(["stages"])
            b = main(["validate", sys.argv[1]])
        print(a, b, "torch" in sys.modules)
        print(out.getvalue())
        print(err.getvalue())
    """)
    proc = subprocess.run([sys.executable, "-c", probe, str(bad)], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)
    first, _, rest = proc.stdout.partition("\n")
    assert first == "0 2 False", proc.stdout + proc.stderr
    assert "note: writes a note" in rest and "words = 3" in rest
    assert "stages[1].words" in rest  # the plugin's own Config validated the stage


def test_builtin_model_names_are_the_registry():
    from pipeline.models.names import BUILTIN, known_models
    from pipeline.models.registry import _FACTORIES, list_models

    list_models()  # imports the families
    builtin = {n for n, fn in _FACTORIES.items() if fn.__module__.startswith("pipeline.models.")}
    assert sorted(builtin) == list(BUILTIN)
    assert known_models() == list_models()  # and a model registered in-process is known too


def test_builtin_criteria_names_are_the_registry():
    from pipeline.sparsity.criteria import CRITERIA
    from pipeline.sparsity.criteria_names import BUILTIN

    registered = {n: c.nni_pruner for n, c in CRITERIA.items() if c.scores is None or
                  c.scores.__module__ == "pipeline.sparsity.criteria"}
    assert registered == BUILTIN and list(registered) == list(BUILTIN)


def test_every_dst_spec_has_its_implementation():
    from pipeline.sparsity.dst import METHODS

    specs, classes = dict(METHODS.specs()), dict(METHODS.items())
    assert list(specs)[:6] == ["flying_bird", "flying_bird_plus", "set", "rigl", "mest", "granet"]
    for name, spec in specs.items():
        assert name in classes and issubclass(classes[name], spec), name
        assert classes[name].Settings is spec.Settings and classes[name].preset(10) == spec.preset(10)


@pytest.mark.parametrize("module", ["pipeline.data", "pipeline.sparsity", "pipeline.models", "pipeline.sparsity.dst"])
def test_lazy_packages_still_export_their_names(module):
    import importlib

    pkg = importlib.import_module(module)
    for name in getattr(pkg, "__all__", []):
        assert getattr(pkg, name) is not None, f"{module}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        getattr(pkg, "nope")
