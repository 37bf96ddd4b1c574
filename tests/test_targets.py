"""The one target grammar: every accepted form, every refused form and the key path it names."""

from __future__ import annotations

import pytest

from taylorprune.errors import UserError
from taylorprune.pruning.targets import KINDS, Target, TargetError, target_keys


@pytest.mark.parametrize(
    ("value", "kind", "keep"),
    [
        (0.6, "macs", 0.6),
        ("0.6", "macs", 0.6),  # a quoted number
        ("1e-1", "macs", 0.1),  # YAML 1.1 reads this as a string
        ("60%", "macs", 0.6),
        (" 60 % ", "macs", 0.6),
        ("-40%", "macs", 0.6),
        ("- 45.5 %", "macs", 0.545),
        ("2x", "macs", 0.5),
        ("4×", "macs", 0.25),
        ("1.6x", "macs", 0.625),
        ({"macs": 0.6}, "macs", 0.6),
        ({"params": "50%"}, "params", 0.5),
        ({"channels": "-25%"}, "channels", 0.75),
        ({"params": "2x"}, "params", 0.5),
        ({"remove_macs": 0.3}, "macs", 0.7),
        ({"remove_params": "30%"}, "params", 0.7),
        ({"remove_channels": 0.25}, "channels", 0.75),
        ({"macs": None, "params": 0.4, "channels": None}, "params", 0.4),
        ({"latency": 0.6}, "latency", 0.6),
        ({"latency": "60%"}, "latency", 0.6),
        ({"latency": "1.6x"}, "latency", 0.625),  # 1.6x faster: keep 1/1.6 of the latency
        ({"latency": "1.6×"}, "latency", 0.625),
        ({"remove_latency": "40%"}, "latency", 0.6),
        ({"macs": None, "latency": 0.5}, "latency", 0.5),  # a base's kind set to null
    ],
)
def test_accepted_forms(value, kind, keep):
    target = Target.parse(value)
    assert target.kind == kind
    assert target.keep == pytest.approx(keep, abs=1e-12)


def test_percentages_and_removals_are_stored_as_the_decimal_written():
    # 1 - 0.45 is 0.55000000000000004 in floating point; the stored value must be 0.55.
    assert Target.parse("-45%").keep == 0.55
    assert Target.parse({"remove_macs": 0.3}).keep == 0.7
    assert Target.parse("33%").keep == 0.33


def test_bare_values_take_the_kind_given():
    assert Target.parse("2x", kind="params") == Target("params", 0.5)
    assert Target.parse(Target("channels", 0.3), kind="macs") == Target("channels", 0.3)


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        (0, "t", "kept must be in (0, 1), got 0"),
        (1, "t", "got 1;"),
        (1.5, "t", "got 1.5"),
        (-0.4, "t", "write a removal as '-40%'"),
        ("-0.4", "t", "write a removal as '-40%'"),
        (float("nan"), "t", "expected 0.6"),
        (float("inf"), "t", "expected 0.6"),
        (True, "t", "got True"),
        (None, "t", "got None"),
        ([0.5], "t", "got [0.5]"),
        ("abc", "t", "expected 0.6, '60%' (kept), '-40%' (removed) or '2x'"),
        ("100%", "t", "got 1;"),
        ("-100%", "t", "got 0;"),
        ("-140%", "t", "got -0.4"),
        ("140%", "t", "got 1.4"),
        ("1x", "t", "'1x' is not a reduction: the factor must be > 1"),
        ("0.5x", "t", "factor must be > 1"),
        ("x", "t", "expected 0.6"),
        ("--40%", "t", "expected 0.6"),
        ({}, "t", "give exactly one of macs, params, channels, latency, remove_macs"),
        ({"latency": "1x"}, "t.latency", "not a reduction: the factor must be > 1"),
        ({"latency": 1.2}, "t.latency", "fraction of the latency kept must be in (0, 1)"),
        ({"macs": 0.5, "latency": 0.5}, "t", "exactly one of"),
        ({"macs": 0.5, "params": 0.5}, "t", "exactly one of"),
        ({"macs": None}, "t", "exactly one of"),
        ({"flops": 0.5}, "t", "unknown target kind 'flops'"),
        ({"mac": 0.5}, "t", "(did you mean 'macs'?)"),
        ({"macs": 1.5}, "t.macs", "fraction of the MACs kept"),
        ({"params": "abc"}, "t.params", "expected 0.6"),
        ({"remove_macs": "-40%"}, "t.remove_macs", "expected the fraction removed"),
        ({"remove_macs": "2x"}, "t.remove_macs", "expected the fraction removed"),
        ({"remove_params": 1.0}, "t.remove_params", "parameters removed must be in (0, 1)"),
        ({"remove_channels": "0%"}, "t.remove_channels", "removed must be in (0, 1)"),
    ],
)
def test_refused_forms_name_the_key_path(value, path, fragment):
    with pytest.raises(TargetError) as info:
        Target.parse(value, where="t")
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert fragment in message, message
    assert "\n" not in message
    # A UserError for the CLI (one line, exit 2) and a ValueError for the recipe schema.
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_direct_construction_is_checked():
    with pytest.raises(UserError, match="unknown target kind 'flops'"):
        Target("flops", 0.5)
    with pytest.raises(UserError, match="kept must be in"):
        Target("macs", 0.0)
    with pytest.raises(UserError, match="unknown target kind"):
        Target.parse(0.5, kind="flops")


def test_kinds_are_one_table():
    assert list(KINDS) == ["macs", "params", "channels", "latency"]
    assert target_keys() == [*KINDS, *(f"remove_{k}" for k in KINDS)]
    assert Target("params", 0.5).to_mapping() == {
        "macs": None,
        "params": 0.5,
        "channels": None,
        "latency": None,
    }


def test_a_bare_factor_is_macs_and_a_latency_factor_a_speed_up():
    # "2x" alone keeps half the MACs; a latency factor must name its kind.
    assert Target.parse("1.6x") == Target("macs", 0.625)
    assert Target.parse({"latency": "2x"}) == Target("latency", 0.5)
    assert Target.parse("2x", kind="latency") == Target("latency", 0.5)


def test_counted_kinds_are_met_within_one_point_latency_within_five_percent_of_the_target():
    macs, latency = Target("macs", 0.6), Target("latency", 0.6)
    assert macs.met_by(0.6099) and not macs.met_by(0.6101)
    assert macs.tolerance == 0.01
    # 5% of 0.6 is 0.03: a measured 0.63 meets it, 0.631 does not.
    assert latency.tolerance == pytest.approx(0.03)
    assert latency.met_by(0.629) and not latency.met_by(0.631)
    assert latency.met_by(0.4)  # faster than asked is at or below the target
    assert latency.within(0.571) and latency.within(0.629)
    assert not latency.within(0.569) and not latency.within(0.631)
