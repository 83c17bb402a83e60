"""Config validation: every problem reported at once with its dotted path, exit code 2, nothing trained."""
from __future__ import annotations

import pytest

from pipeline.engine.config import load_config, parse_override
from pipeline.engine.errors import ConfigError

from tests.conftest import REPO, SHARED_DATA, run_cli, tiny_config


def problems_of(write_config, cfg, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(write_config(cfg), list(overrides))
    return info.value.problems


def test_valid_config_resolves_defaults(write_config):
    cfg = load_config(write_config(tiny_config()))
    resolved = cfg.resolved()
    warm = resolved["stages"][0]
    assert warm["optimizer"]["momentum"] == 0.9  # default filled in
    assert warm["attack"]["kind"] == "pgd" and warm["attack"]["eps"] == pytest.approx(8 / 255)
    assert resolved["stages"][1]["input"] == "warmup"  # default input: the previous stage
    assert resolved["stages"][1]["select"] == "best"


def test_all_errors_reported_with_paths(write_config):
    cfg = tiny_config()
    cfg["stages"][0]["epochs"] = 0
    cfg["stages"][1]["lr"] = 0.1  # unknown key (belongs under optimizer)
    cfg["stages"][2]["attack"] = {"eps": "-8/255"}
    cfg["stages"].append({"name": "warmup", "type": "evaluate"})
    cfg["stages"].append({"name": "x", "type": "no_such_stage"})
    cfg["model"]["arch"] = "resnet9000"
    cfg["data"]["dataset"] = "mnist"
    probs = problems_of(write_config, cfg)
    text = "\n".join(probs)
    assert "stages[0].epochs: must be > 0" in text
    assert "stages[1].lr: unknown key" in text
    assert "stages[2].attack.eps" in text
    assert "stages[5].name: duplicate stage name 'warmup'" in text
    assert "stages[6].type: unknown stage type 'no_such_stage'" in text and "dense_warmup" in text
    assert "model.arch: unknown model 'resnet9000'" in text and "preact_resnet18" in text
    assert "data.dataset" in text
    assert len(probs) >= 7


def test_wrong_types_and_unknown_top_level(write_config):
    cfg = tiny_config()
    cfg["stages"][0]["batch_size"] = "big"
    cfg["stagse"] = []
    text = "\n".join(problems_of(write_config, cfg))
    assert "stages[0].batch_size" in text and "'big'" in text
    assert "stagse: unknown top-level key (did you mean 'stages'?)" in text


def test_missing_data_path_is_a_config_error(write_config, tmp_path):
    cfg = tiny_config()
    cfg["data"] = {"dataset": "npz", "path": str(tmp_path / "nope.npz")}
    text = "\n".join(problems_of(write_config, cfg))
    assert "data" in text and "nope.npz" in text


def test_input_must_name_an_earlier_stage(write_config):
    cfg = tiny_config()
    cfg["stages"][1]["input"] = "evaluate"
    text = "\n".join(problems_of(write_config, cfg))
    assert "stages[1].input: 'evaluate' is not an earlier stage" in text


def test_overrides_edit_the_same_tree(write_config):
    path = write_config(tiny_config())
    cfg = load_config(path, ["stages.warmup.epochs=5", "stages[1].optimizer.lr=0.002", "run.seed=7"])
    assert cfg.stage("warmup").epochs == 5
    assert cfg.stage("finetune").optimizer.lr == 0.002
    assert cfg.run.seed == 7
    with pytest.raises(ConfigError) as info:
        load_config(path, ["stages.warmup.epochs=-1"])
    assert "stages[0].epochs: must be > 0" in str(info.value)
    with pytest.raises(ConfigError, match="no stage named 'nope'"):
        load_config(path, ["stages.nope.epochs=1"])


def test_parse_override_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("stages[2].attack.eps=8/255") == (["stages", 2, "attack", "eps"], "8/255")
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])


def test_yaml_syntax_error(write_config, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {name: x\nstages: [")
    with pytest.raises(ConfigError, match="YAML syntax error at line"):
        load_config(bad)


def test_cli_exit_code_2_and_no_traceback(write_config, tmp_path):
    cfg = tiny_config()
    cfg["stages"][0]["epochs"] = -3
    path = write_config(cfg)
    proc = run_cli("run", str(path), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "stages[0].epochs: must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was trained or written
    proc = run_cli("validate", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "file not found" in proc.stderr


def test_cli_validate_and_stages_listing(write_config):
    proc = run_cli("validate", str(write_config(tiny_config())), check=True)
    assert "ok (5 stages" in proc.stdout
    proc = run_cli("stages", check=True)
    for name in ("dense_warmup", "finetune", "evaluate", "export", "runtime_check"):
        assert f"{name}:" in proc.stdout
    assert "epochs = 200" in proc.stdout


def test_attack_settings_that_would_be_ignored_are_rejected(write_config):
    cfg = tiny_config()
    cfg["stages"][0]["eval"] = {"attack": {"kind": "none"}}
    text = "\n".join(problems_of(write_config, cfg))
    assert "stages[0].eval.attack: kind 'none' would record clean accuracy as RA" in text
    cfg = tiny_config()
    cfg["stages"][1]["attack"] = {"restarts": 3}
    text = "\n".join(problems_of(write_config, cfg))
    assert "stages[1].attack: restarts applies to evaluation attacks only" in text


def test_run_name_from_an_unusable_file_name(tmp_path):
    path = tmp_path / "my cfg.yaml"
    cfg = tiny_config()
    del cfg["run"]["name"]
    path.write_text(__import__("yaml").safe_dump(cfg))
    with pytest.raises(ConfigError, match="run.name: not set, and the file name 'my cfg'"):
        load_config(path)


def test_set_addresses_a_stage_named_by_its_type(write_config):
    cfg = tiny_config()
    del cfg["stages"][2]["name"]  # defaults to its type, "evaluate"
    loaded = load_config(write_config(cfg), ["stages.evaluate.batch_size=32"])
    assert loaded.stage("evaluate").batch_size == 32


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path, tmp_path):
    if "shared/data" in path.read_text() and not SHARED_DATA.exists():
        pytest.skip("recipe reads ../shared/data, which is absent here")
    # data paths with download: true validate offline; an image folder (which cannot download) is
    # checked against a stand-in directory
    overrides = [f"data.root={tmp_path}"] if "dataset: imagefolder" in path.read_text() else []
    cfg = load_config(path, overrides)
    assert cfg.stages and cfg.run.name
    # the recipes reproduce papers trained in fp32: bf16 is the documented fast option, never their default
    trained = [st for st in cfg.stages if hasattr(st, "precision")]
    assert [st.precision for st in trained] == ["fp32"] * len(trained)
    written = [line.split("#")[0].split() for line in path.read_text().splitlines()]
    assert ["precision:", "bf16"] not in written
