"""Security curves: the config's rules, the step rule, and a known answer on a constructed model whose
robust accuracy at each eps is exact (a brightness classifier: an image survives iff its mean is farther
than eps from the decision boundary)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from pipeline.engine.errors import CheckpointError, ConfigError
from pipeline.metrics.autoattack import AutoAttackConfig
from pipeline.metrics.curve_config import DEFAULT_EPS, SecurityCurve, SecurityCurveConfig
from pipeline.metrics.evaluation import EvaluationMetrics, SplitScores
from pipeline.metrics.security_curve import security_curve
from tests.conftest import BRIGHTNESS_MEANS as MEANS, Brightness


DATA = SimpleNamespace(test_x=MEANS.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous(), test_y=(MEANS > 0.5).long())


def test_config_rules_and_step_rule():
    cfg = SecurityCurveConfig(eps=["16/255", 0, "1/255"], steps=10)
    assert cfg.eps == [0.0, 1 / 255, 16 / 255]  # sorted; "k/255" strings accepted
    assert cfg.step(8 / 255) == pytest.approx(2.5 * (8 / 255) / 10) and cfg.rule() == "step = 2.5 * eps / 10"
    assert SecurityCurveConfig().eps == list(DEFAULT_EPS) and SecurityCurveConfig().autoattack is None
    assert SecurityCurveConfig(autoattack={}).autoattack.n == 10000  # RobustBench's default
    assert AutoAttackConfig().n == 10000  # and for the evaluate stage's own AutoAttack
    with pytest.raises(ValidationError, match="write 8/255, not 8"):
        SecurityCurveConfig(eps=[0, 8])
    with pytest.raises(ValidationError, match="distinct"):
        SecurityCurveConfig(eps=["8/255", 8 / 255])
    with pytest.raises(ValidationError, match="step_factor: 2.5 / steps 2 gives a step larger than eps"):
        SecurityCurveConfig(steps=2)
    with pytest.raises(ValidationError, match="eps, norm: set by the curve"):
        SecurityCurveConfig(autoattack={"eps": 0.1, "norm": "L2"})  # L-inf, eps from the curve's list
    resolved = SecurityCurveConfig(autoattack={"n": 500}).model_dump(mode="json")
    assert SecurityCurveConfig(**resolved).autoattack.n == 500  # the resolved config validates again


def test_known_answer_on_a_brightness_classifier():
    cfg = SecurityCurveConfig(eps=[0, 0.015, 0.025, 0.1], steps=5)
    curve = security_curve(Brightness(), DATA, cfg, limit=None, batch_size=4, device="cpu", seed=0)
    # eps 0: the clean accuracy; then the images farther than eps from 0.5 survive: 5, 3, 2 of 6
    assert [p.pgd for p in curve.points] == [100.0, pytest.approx(500 / 6), 50.0, pytest.approx(200 / 6)]
    assert [p.step for p in curve.points] == [0.0, pytest.approx(0.0075), pytest.approx(0.0125), pytest.approx(0.05)]
    assert curve.n == 6 and curve.split == "test" and curve.label() == "PGD-5"
    with pytest.raises(ConfigError, match="security_curve.split: the val split is empty"):
        security_curve(Brightness(), SimpleNamespace(val_x=DATA.test_x[:0], val_y=DATA.test_y[:0]),
                       cfg.model_copy(update={"split": "val"}), limit=None, batch_size=4, device="cpu", seed=0)
    limited = security_curve(Brightness(), DATA, cfg, limit=3, batch_size=4, device="cpu", seed=0)
    assert limited.n == 3 and [p.pgd for p in limited.points] == [100.0, pytest.approx(200 / 3), pytest.approx(100 / 3), pytest.approx(100 / 3)]


def test_record_round_trip_through_the_metrics():
    curve = security_curve(Brightness(), DATA, SecurityCurveConfig(eps=[0, 0.1], steps=4), limit=None,
                           batch_size=8, device="cpu", seed=0)
    m = EvaluationMetrics(checkpoint="best", splits={"test": SplitScores(6, 100.0, 0.1)}, attack={}, ra={},
                          checkpoints={}, security_curve=curve)
    flat = m.to_json()
    assert flat["security_curve"]["points"][1] == {"eps": 0.1, "pgd": pytest.approx(200 / 6), "step": 0.0625}
    assert EvaluationMetrics.from_json(flat) == m
    bad = {**flat["security_curve"], "points": [{**flat["security_curve"]["points"][0], "ra": 1.0}]}
    with pytest.raises(CheckpointError, match=r"metrics.security_curve.points\[0\]: unknown key\(s\) ra"):
        EvaluationMetrics.from_json({**flat, "security_curve": bad})
    with pytest.raises(CheckpointError, match="missing key"):
        SecurityCurve.from_json({"split": "test", "points": []})


def test_autoattack_per_point_with_its_own_n(monkeypatch):
    import sys

    from tests.stages.test_evaluate_stage import fake_reference

    got: dict = {}
    monkeypatch.setitem(sys.modules, "autoattack", fake_reference(got))
    cfg = SecurityCurveConfig(eps=[0, 0.015, 0.025], steps=5, autoattack={"n": 4})
    curve = security_curve(Brightness(), DATA, cfg, limit=None, batch_size=4, device="cpu", seed=0)
    # the fake pushes each image eps towards the boundary: of the first 4, those farther than eps survive
    assert [p.autoattack for p in curve.points] == [100.0, 75.0, 25.0]
    assert [p.autoattack_n for p in curve.points] == [4, 4, 4] and got["eps"] == 0.025 and got["n"] == 4
    assert curve.autoattack == {"version": "standard", "n": 4, "backend": "autoattack"}
    assert [p.pgd for p in curve.points] == [100.0, pytest.approx(500 / 6), 50.0]  # PGD on all 6


def test_missing_autoattack_for_the_curve_fails_before_work_or_is_skipped(monkeypatch):
    import sys

    from pipeline.engine.errors import PipelineError
    from stages.evaluate import CURVE_AA, Evaluate, EvaluateConfig

    monkeypatch.setitem(sys.modules, "autoattack", None)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    ctx = SimpleNamespace(name="evaluate", log=lambda msg: None)
    cfg = EvaluateConfig(name="e", type="evaluate", security_curve={"autoattack": {}})
    with pytest.raises(PipelineError, match=r"security_curve.autoattack: .*pip install git\+https://github.com/fra31"):
        Evaluate._preflight(cfg, ctx)
    cfg = EvaluateConfig(name="e", type="evaluate", security_curve={"autoattack": {"on_missing": "skip"}})
    skipped = Evaluate._preflight(cfg, ctx)
    curve = security_curve(Brightness(), DATA, cfg.security_curve.model_copy(update={"eps": [0, 0.1]}), limit=None,
                           batch_size=4, device="cpu", seed=0, autoattack_skipped=skipped[CURVE_AA])
    assert curve.autoattack["skipped"].startswith("not installed") and all(p.autoattack is None for p in curve.points)
