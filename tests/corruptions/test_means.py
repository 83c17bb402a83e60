"""The corruption columns on hand-made records with known answers: the 15-type mean (RobustBench), the
19-type mean, and the markers for generated sets and for fewer types or severities."""
from __future__ import annotations

import pytest

from pipeline.corruptions.catalog import ALL, EXTRA, STANDARD
from pipeline.corruptions.means import LEGEND, column_means, describe, exact_means


def record(source: str, types, acc_of, severities=(1, 2, 3, 4, 5), **extra) -> dict:
    per = {name: [acc_of(name)] * len(severities) for name in types}
    return {"source": source, "severities": list(severities), "per": per, **extra}


def standard_60_extra_80(name: str) -> float:
    return 60.0 if name in STANDARD else 80.0


def test_published_19_types_give_both_means_unmarked():
    c = column_means(record("published", ALL, standard_60_extra_80))
    assert c["mean_15"] == 60.0  # the 4 extra types do not enter the RobustBench figure
    assert c["mean_19"] == pytest.approx((15 * 60 + 4 * 80) / 19)  # 64.2105...
    assert (c["marks_15"], c["marks_19"], c["types_15"], c["types_19"]) == ("", "", 15, 19)
    assert exact_means(record("published", ALL, standard_60_extra_80)["per"]) == (60.0, pytest.approx(64.2105, abs=1e-4))


def test_fifteen_published_types_have_no_19_type_mean():
    c = column_means(record("published", STANDARD, standard_60_extra_80))
    assert c["mean_15"] == 60.0 and c["mean_19"] is None and c["marks_15"] == ""
    assert exact_means(record("published", STANDARD, standard_60_extra_80)["per"]) == (60.0, None)


def test_generated_fewer_types_and_severities_are_marked_never_mixed_silently():
    accs = {"gaussian_noise": 50.0, "fog": 70.0, "spatter": 90.0}
    c = column_means(record("generated", accs, accs.get, severities=(1, 3)))
    assert c["mean_15"] == 60.0  # gaussian noise and fog only
    assert c["mean_19"] == pytest.approx(70.0)  # all three types evaluated
    assert c["marks_15"] == c["marks_19"] == "*†‡"
    assert exact_means({n: [a, a] for n, a in accs.items()}) == (None, None)  # never a partial "full" figure
    assert describe({**record("generated", accs, accs.get, severities=(1, 3)), "backend": "builtin", "n": 200}) == (
        "generated corruptions (builtin), 2 of 15 standard types + 1 of 4 extra, severities 1, 3, "
        "n = 200 images per type × severity")
    # generated but complete: only the generated marker
    full = column_means(record("generated", ALL, standard_60_extra_80))
    assert (full["marks_15"], full["marks_19"]) == ("*", "*")
    assert set(LEGEND) == {"*", "†", "‡"}


def test_only_extra_types_leave_the_15_type_column_empty():
    c = column_means(record("published", EXTRA, standard_60_extra_80))
    assert c["mean_15"] is None and c["marks_15"] == "" and c["mean_19"] == 80.0 and c["marks_19"] == "†"


def test_older_records_without_severities_read_them_from_per():
    c = column_means({"source": "published", "per": {name: [60.0, 60.0] for name in STANDARD}})
    assert c["mean_15"] == 60.0 and c["marks_15"] == "‡"
