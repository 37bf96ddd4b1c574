"""Recipes: schema errors as one line, bases, --set overrides, round trips, shipped recipes."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taylorprune.commands import validate
from taylorprune.errors import UserError
from taylorprune.pruning import Target
from taylorprune.pruning.targets import KINDS, target_keys
from taylorprune.recipe import FinetuneConfig, Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml"))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_minimal_recipe_takes_the_documented_defaults(tmp_path):
    r = load_recipe(write(tmp_path, "r.yaml", "name: r\n"))
    assert r.name == "r" and r.seed == 0 and r.device == "auto" and r.retrain == "finetune"
    assert (r.model.source, r.model.name, r.model.num_classes) == ("builtin", "resnet20", None)
    assert (r.data.name, r.data.batch_size, r.data.eval_batch_size) == ("digits", 32, 256)
    assert r.baseline.train is None and r.baseline.cache is True
    assert (r.importance.criterion, r.importance.train_mode) == ("taylor_fo_bn", False)
    assert (r.importance.ema, r.pruning.normalize, r.pruning.cost_aware) == (None, None, True)
    p = r.pruning
    assert (p.target, p.schedule) == (Target("macs", 0.5), "iterative")
    assert (p.score_batches, p.channels_per_step, p.max_fraction) == (30, 100, 0.9)
    assert r.finetune == FinetuneConfig()
    assert r.finetune.distill is not None and r.baseline.train is None  # distils by default
    assert (r.finetune.epochs, r.finetune.lr, r.finetune.weight_decay) == (10, 0.1, 5.0e-4)
    assert r.measure.latency is True and r.measure.latency_runs == 20


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("name: r\npruning: {scheduel: oneshot}\n", ["pruning.scheduel", "'schedule'"]),
        ("name: r\nfinetun: {epochs: 1}\n", ["finetun: unknown key", "'finetune'"]),
        ("name: r\nmodel: {nmae: resnet56}\n", ["model.nmae", "'name'"]),
        ("name: r\nfinetune: {epochs: -1}\n", ["finetune.epochs", "greater than or equal to 0"]),
        ("name: r\nfinetune: {epochs: 1.5}\n", ["finetune.epochs", "integer"]),
        ("name: r\nfinetune: {epochs: true}\n", ["finetune.epochs", "integer"]),
        ("name: r\nfinetune: {lr: .nan}\n", ["finetune.lr", "finite"]),
        ("name: r\nfinetune: {lr: 0}\n", ["finetune.lr", "greater than 0"]),
        ("name: r\nfinetune: {optimizer: adam}\n", ["finetune.optimizer", "'sgd' or 'adamw'"]),
        ("name: r\nfinetune: {nesterov: true, momentum: 0}\n", ["finetune", "nesterov"]),
        ("name: r\nfinetune: {epochs: 2, warmup_epochs: 3}\n", ["finetune", "warmup_epochs"]),
        ("name: r\ndata: {batch_size: 0}\n", ["data.batch_size", "greater than or equal to 1"]),
        ("name: r\ndata: {batch_size: abc}\n", ["data.batch_size", "integer", "'abc'"]),
        ("name: r\npruning: {target: {macs: 1.0}}\n", ["pruning.target.macs: fraction", "(0, 1)"]),
        ("name: r\npruning: {target: {macs: 0}}\n", ["pruning.target.macs", "got 0"]),
        ("name: r\npruning: {target: {params: -0.2}}\n", ["pruning.target.params", "'-40%'"]),
        ("name: r\npruning: {target: {macs: '-140%'}}\n", ["pruning.target.macs", "got -0.4"]),
        ("name: r\npruning: {target: {macs: '40'}}\n", ["pruning.target.macs", "got 40"]),
        ("name: r\npruning: {target: {macs: 0.5, params: 0.5}}\n", ["pruning.target", "exactly"]),
        ("name: r\npruning: {target: {}}\n", ["pruning.target", "exactly one"]),
        ("name: r\npruning: {target: {flops: 0.5}}\n", ["pruning.target: unknown target kind"]),
        ("name: r\npruning: {target: '1x'}\n", ["pruning.target: '1x'", "factor must be > 1"]),
        ("name: r\npruning: {target: {remove_macs: '-40%'}}\n", ["target.remove_macs", "removed"]),
        ("name: r\npruning: {targets: {macs: 0.5}}\n", ["pruning.targets", "'target'"]),
        ("name: r\npruning: {include: ['(']}\n", ["pruning.include", "regex"]),
        ("name: r\npruning: {max_fraction: 1.5}\n", ["pruning.max_fraction", "1"]),
        ("name: r\nimportance: {ema: 1.0}\n", ["importance.ema", "less than 1"]),
        ("name: r\ndevice: gpu\n", ["device", "'gpu'"]),
        ("name: r\ndevice: cpu\nfinetune: {amp: fp16}\n", ["finetune.amp", "CUDA"]),
        ("name: r\nmodel: {source: checkpoint, checkpoint: null}\n", ["model", "checkpoint"]),
        ("name: r\nretrain: rewnd\n", ["retrain", "'rewind'"]),
        ("seed: 1\n", ["name: required key is missing"]),
        ("- name: r\n", ["must be a mapping"]),
        ("name: r\nmeasure: 3\n", ["measure", "dictionary"]),
        (
            "name: r\npruning: {channels_per_step: 16, fraction_per_step: 0.05}\n",
            ["pruning: channels_per_step (16) and fraction_per_step (0.05) exclude each other"],
        ),
        ("name: r\npruning: {fraction_per_step: 1}\n", ["pruning.fraction_per_step", "less"]),
        (
            "name: r\npruning: {fraction_per_step: 0.1, target: {latency: 0.6}}\n",
            ["pruning: fraction_per_step is not for a latency target"],
        ),
        ("name: r\npruning: {channels_per_step: null}\n", ["pruning", "needs channels_per_step"]),
        ("name: r\ndata: {holdout: 0}\n", ["data.holdout", "greater than or equal to 1"]),
        ("name: r\ndata: {holdout: 5.5}\n", ["data.holdout", "integer"]),
        ("name: r\nmeasure: {test: true}\n", ["measure.test", "data.holdout"]),
        (
            "name: r\nfinetune: {distill: {weight: 1.5, temperature: 4}}\n",
            ["finetune.distill.weight", "less than or equal to 1"],
        ),
        (
            "name: r\nfinetune: {distill: {weight: 0.5, temperature: 0}}\n",
            ["finetune.distill.temperature", "greater than 0"],
        ),
        (
            "name: r\nfinetune: {distill: {weight: 0.5}}\n",
            ["finetune.distill.temperature: required key is missing"],
        ),
        (
            "name: r\nfinetune: {distill: {weight: 0.5, temperature: 4, whileprune: true}}\n",
            ["finetune.distill.whileprune: unknown key", "'while_pruning'"],
        ),
        (
            "name: r\nbaseline: {train: {distill: {weight: 0.5, temperature: 4}}}\n",
            ["baseline.train.distill: the baseline has no teacher"],
        ),
    ],
)
def test_schema_errors_are_one_line_with_file_and_key(tmp_path, text, fragments):
    path = write(tmp_path, "bad.yaml", text)
    message = error_of(path)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = write(tmp_path, "m.yaml", "name: r\nmodel:\n  name: [resnet, 20}\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3:") and "malformed YAML" in message


def test_missing_file(tmp_path):
    assert "not found" in error_of(tmp_path / "nope.yaml")


# Every form of the target grammar (taylorprune.pruning.targets), as YAML, and what it keeps.
TARGET_FORMS = [
    ("0.6", "macs", 0.6),
    ("'60%'", "macs", 0.6),
    ("'-40%'", "macs", 0.6),
    ("' - 45.5 % '", "macs", 0.545),
    ("'2x'", "macs", 0.5),
    ("'4×'", "macs", 0.25),
    ("{macs: 0.6}", "macs", 0.6),
    ("{params: '50%'}", "params", 0.5),
    ("{params: '-30%'}", "params", 0.7),
    ("{channels: '2.5x'}", "channels", 0.4),
    ("{remove_macs: 0.3}", "macs", 0.7),
    ("{remove_params: '30%'}", "params", 0.7),
    ("{macs: 0.5, params: null, channels: null}", "macs", 0.5),  # how a resolved recipe writes it
]


@pytest.mark.parametrize(("text", "kind", "keep"), TARGET_FORMS)
def test_every_target_form_is_accepted_in_a_recipe_and_in_set(tmp_path, text, kind, keep):
    from_file = load_recipe(write(tmp_path, "t.yaml", f"name: r\npruning: {{target: {text}}}\n"))
    from_set = load_recipe(write(tmp_path, "s.yaml", "name: r\n"), [f"pruning.target={text}"])
    for r in (from_file, from_set):
        assert r.pruning.target.kind == kind
        assert r.pruning.target.keep == pytest.approx(keep, abs=1e-12)
    # The schema reads the value with Target.parse, so the library and the recipe agree.
    assert from_file.pruning.target == Target.parse(yaml.safe_load(text))
    # Written back in the one canonical form, which reads back equal.
    resolved = from_file.to_dict()["pruning"]["target"]
    assert resolved == {k: (from_file.pruning.target.keep if k == kind else None) for k in resolved}
    assert load_recipe(_dump(tmp_path, from_file)) == from_file


def test_target_sub_keys_in_set(tmp_path):
    path = write(tmp_path, "o.yaml", "name: r\npruning: {target: '2x'}\n")
    assert load_recipe(path, ["pruning.target.macs=-40%"]).pruning.target == Target("macs", 0.6)
    message = error_of(path, ("pruning.target.remove_mac=0.5",))
    assert "unknown key pruning.target.remove_mac (did you mean 'remove_macs'?)" in message
    assert "has no sub-keys" in error_of(path, ("pruning.target.macs.x=0.5",))


def test_yaml11_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-3` as a string (YAML 1.1); a learning rate written that way must still work.
    path = write(tmp_path, "e.yaml", "name: r\nfinetune: {lr: 1e-3, weight_decay: 5e-4}\n")
    r = load_recipe(path)
    assert r.finetune.lr == 0.001 and r.finetune.weight_decay == 0.0005


def test_base_chain_merges_deeply_and_child_wins(tmp_path):
    write(
        tmp_path,
        "bases/root.yaml",
        "name: root\nseed: 3\nfinetune: {epochs: 25, lr: 0.001, schedule: step}\n"
        "pruning: {ignored_layers: [a, b], target: {macs: 0.55}}\ndata: {kwargs: {x: 1, y: 2}}\n",
    )
    write(tmp_path, "bases/mid.yaml", "base: root.yaml\nname: mid\nfinetune: {epochs: 5}\n")
    child = write(
        tmp_path,
        "child.yaml",
        "base: bases/mid.yaml\nname: child\npruning: {ignored_layers: [c]}\n"
        "data: {kwargs: {y: 3}}\n",
    )
    r = load_recipe(child)
    assert r.name == "child" and r.seed == 3
    assert (r.finetune.epochs, r.finetune.lr, r.finetune.schedule) == (5, 0.001, "step")
    assert r.pruning.ignored_layers == ["c"]  # lists are replaced, not appended
    assert r.pruning.target == Target("macs", 0.55)
    assert r.data.kwargs == {"x": 1, "y": 3}


def test_base_errors_name_the_file_that_holds_the_value(tmp_path):
    write(tmp_path, "base.yaml", "name: b\nfinetune: {epochs: -3}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: c\n")
    assert error_of(child).startswith(f"{child.parent / 'base.yaml'}: finetune.epochs")
    fixed = write(tmp_path, "fixed.yaml", "base: base.yaml\nname: c\nfinetune: {epochs: 2}\n")
    assert load_recipe(fixed).finetune.epochs == 2


def test_base_cycles_and_missing_bases(tmp_path):
    a = write(tmp_path, "a.yaml", "base: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "base: a.yaml\nname: b\n")
    assert "cycle" in error_of(a)
    me = write(tmp_path, "me.yaml", "base: me.yaml\nname: me\n")
    assert "cycle" in error_of(me)
    orphan = write(tmp_path, "orphan.yaml", "base: gone.yaml\nname: o\n")
    message = error_of(orphan)
    assert message.startswith(str(orphan)) and "base" in message and "gone.yaml" in message
    typed = write(tmp_path, "typed.yaml", "base: [x]\nname: o\n")
    assert "base" in error_of(typed)


def test_overrides_parse_yaml_values(tmp_path):
    path = write(tmp_path, "o.yaml", "name: r\npruning: {target: {macs: 0.5}}\n")
    r = load_recipe(
        path,
        [
            "finetune.lr=1e-3",
            "finetune.epochs=3",
            "finetune.nesterov=true",
            "pruning.ignored_layers=[fc, 'layer4\\..*']",
            "pruning.target={params: '-30%'}",  # a mapping replaces the whole target
            "model.kwargs.width=0.5",  # free-form kwargs take any key
            "baseline.train.epochs=2",  # creates the section that was null
            "data.root=/data/x",
            "model.num_classes=null",
        ],
    )
    assert (r.finetune.lr, r.finetune.epochs, r.finetune.nesterov) == (0.001, 3, True)
    assert r.pruning.ignored_layers == ["fc", "layer4\\..*"]
    assert (r.pruning.target.kind, r.pruning.target.keep) == ("params", pytest.approx(0.7))
    assert r.model.kwargs == {"width": 0.5}
    assert r.baseline.train is not None and r.baseline.train.epochs == 2
    assert r.data.root == "/data/x" and r.model.num_classes is None


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("finetune.lrr=0.1", ["--set finetune.lrr=0.1", "unknown key finetune.lrr", "'lr'"]),
        ("prunning.target.macs=0.5", ["unknown key prunning", "'pruning'"]),
        ("seed.x=1", ["seed has no sub-keys"]),
        ("finetune.lr", ["KEY.PATH=VALUE"]),
        ("=3", ["KEY.PATH=VALUE"]),
        ("finetune..lr=3", ["empty key"]),
        ("finetune.epochs=[1, 2", ["cannot parse"]),
        ("finetune.epochs=ten", ["--set: finetune.epochs", "integer"]),
        ("pruning.target.macs=1.5", ["--set: pruning.target.macs", "(0, 1), got 1.5"]),
        ("pruning.target.params=0.5", ["--set: pruning.target", "exactly one"]),
        ("finetune\nlr=3", ["unknown key", "\\n"]),
    ],
)
def test_override_errors(tmp_path, override, fragments):
    path = write(tmp_path, "o.yaml", "name: r\npruning: {target: {macs: 0.5}}\n")
    message = error_of(path, (override,))
    for fragment in fragments:
        assert fragment in message, message


def test_a_fraction_per_step_replaces_the_default_channels_per_step(tmp_path):
    path = write(tmp_path, "r.yaml", "name: r\npruning: {fraction_per_step: 0.05}\n")
    r = load_recipe(path)
    assert (r.pruning.channels_per_step, r.pruning.fraction_per_step) == (None, 0.05)
    assert load_recipe(write(tmp_path, "again.yaml", r.resolved_yaml())) == r
    # a base's channels_per_step must be cleared when an override switches to fractions
    base = write(tmp_path, "b.yaml", "name: b\npruning: {channels_per_step: 16}\n")
    assert "exclude each other" in error_of(base, ("pruning.fraction_per_step=0.05",))
    both = ("pruning.fraction_per_step=0.05", "pruning.channels_per_step=null")
    assert load_recipe(base, both).pruning.fraction_per_step == 0.05


def test_resolved_yaml_round_trips(tmp_path):
    write(tmp_path, "base.yaml", "name: b\nfinetune: {lr: 1e-3, schedule: step}\n")
    path = write(
        tmp_path,
        "c.yaml",
        "base: base.yaml\nname: c\npruning: {target: {macs: '-45%'}, include: ['layer.*']}\n"
        "model: {kwargs: {width: 0.5}}\nbaseline: {train: {epochs: 2, amp: bf16}}\n",
    )
    r = load_recipe(path, ["finetune.max_iters=7"])
    text = r.resolved_yaml()
    data = yaml.safe_load(text)
    assert "base" not in data and data == r.to_dict()
    again = load_recipe(write(tmp_path, "resolved.yaml", text))
    assert again == r
    assert again.resolved_yaml() == text


# Values a careless or adversarial recipe might hold, including wrong types.
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["-40%", "2x", "1e-3", "auto", "cpu", "cosine", "sgd", "bf16", "oneshot"]),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_sections = {
    "model": ["source", "name", "num_classes", "in_chans", "pretrained", "kwargs", "checkpoint"],
    "data": ["name", "batch_size", "input_size", "train_subset", "augment", "kwargs"],
    "baseline": ["train", "cache"],
    "importance": ["criterion", "ema", "train_mode"],
    "pruning": ["target", "schedule", "max_fraction", "ignored_layers", "include", "normalize"],
    "finetune": ["epochs", "lr", "momentum", "nesterov", "schedule", "warmup_epochs", "amp"],
    "measure": ["latency", "threads"],
}


# Target values: every form of the grammar, near misses, and the generic junk above.
_target_scalars = st.one_of(
    _values,
    st.floats(-0.5, 1.5),
    st.builds("{}%".format, st.floats(-50, 150, allow_nan=False).map(lambda x: round(x, 3))),
    st.builds("-{}%".format, st.integers(-5, 120)),
    st.builds("{}x".format, st.floats(0, 10, allow_nan=False).map(lambda x: round(x, 2))),
    st.sampled_from(["60%", "-40%", "2x", "3×", "1x", "0x", "x", "%", "-", "--40%", "2 x", "1e-1"]),
)
_target_keys = st.sampled_from([*target_keys(), "flops", "remove_", "MACS"])
_targets = st.one_of(
    _target_scalars,
    st.dictionaries(_target_keys, st.one_of(st.none(), _target_scalars), max_size=3),
)

_key_paths = [f"{section}.{key}" for section, keys in _sections.items() for key in keys]
_override_keys = ["pruning.target.macs", "pruning.target.remove_params", "model.kwargs.a.b"]
_overrides = st.builds(
    "{}={}".format,
    st.sampled_from([*_key_paths, *_override_keys, "seed", "nope.x", "name"]),
    st.one_of(
        st.text(max_size=8),
        st.sampled_from(["1e-3", "[1, 2", "{a: 1}", "null", "-40%", "2x", "{remove_macs: 30%}"]),
        st.sampled_from(["&a [*a]", "{a: 1, a: 2}", "../x", "4294967296", "1e9"]),
    ),
)


@st.composite
def recipes(draw) -> dict:
    out: dict = {"name": draw(st.one_of(st.just("fuzz"), _values))}
    for section, keys in _sections.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from([*keys, "bogus"]), max_size=4, unique=True))
            out[section] = {k: draw(_values) for k in chosen}
    for key in ("seed", "device", "retrain"):
        if draw(st.booleans()):
            out[key] = draw(_values)
    if draw(st.booleans()):
        out["pruning"] = {"target": draw(_targets)}
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes(), st.lists(st.one_of(st.text(max_size=20), _overrides), max_size=2))
def test_fuzzed_recipes_raise_only_user_errors(data, overrides):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(data))
        try:
            recipe = load_recipe(path, overrides)
        except UserError as err:
            assert "\n" not in str(err)
        else:
            assert isinstance(recipe, Recipe)
            assert load_recipe(_dump(Path(folder), recipe)) == recipe


@settings(max_examples=100, deadline=None)
@given(_targets)
def test_fuzzed_targets_parse_to_a_valid_target_or_a_one_line_user_error(value):
    try:
        target = Target.parse(value, where="t")
    except UserError as err:
        assert "\n" not in str(err) and str(err).startswith("t")
    else:
        assert target.kind in KINDS and 0 < target.keep < 1


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_fuzzed_yaml_text_raises_only_user_errors(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text("name: fuzz\n" + text, encoding="utf-8")
        try:
            load_recipe(path)
        except UserError as err:
            assert "\n" not in str(err)


def _dump(folder: Path, recipe: Recipe) -> Path:
    path = folder / "resolved.yaml"
    path.write_text(recipe.resolved_yaml())
    return path


# ----------------------------------------------------------------------------------------------
# Shipped recipes


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    validate.check_names(recipe, str(path))
    assert path.read_text().startswith("#"), "each shipped recipe explains itself in a header"


def test_every_real_recipe_has_a_tiny_twin():
    real = {p.name for p in (ROOT / "recipes").glob("*.yaml")}
    tiny = {p.name for p in (ROOT / "recipes" / "tiny").glob("*.yaml")}
    assert real and real == tiny
    for name in tiny:
        r = load_recipe(ROOT / "recipes" / "tiny" / name)
        assert r.device == "cpu" and not r.model.pretrained
        assert r.data.name in ("synthetic", "digits")
        assert r.finetune.max_iters is not None or r.finetune.epochs <= 1


def test_settings_left_unset_keep_the_cached_baselines_of_older_versions(tmp_path, monkeypatch):
    """The baseline cache key hashes the data and training sections; settings added later
    (``data.holdout``, ``finetune.distill``) enter it only when set."""
    from taylorprune.baseline_cache import cache_path
    from taylorprune.pipeline.options import RunOptions

    monkeypatch.setenv("TAYLORPRUNE_CACHE", str(tmp_path))
    spec = {
        "source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1,
        "pretrained": False, "weights": None, "checkpoint": None, "kwargs": {},
    }  # fmt: skip

    def key(*overrides: str) -> str:
        o = RunOptions.from_recipe(
            load_recipe(ROOT / "recipes/fashion_mnist_resnet20.yaml", overrides)
        )
        return cache_path(spec, name=o.name, data=o.data, train=o.baseline.train, seed=o.seed).name

    # the key this recipe had before either setting existed
    assert key() == "fashion-mnist-resnet20-7f6d63bee525c0ad.pt"
    assert key("data.holdout_seed=3") == key()  # no holdout: its seed changes nothing
    assert key("data.holdout=5000") != key()
    assert key("data.holdout=5000", "data.holdout_seed=1") != key("data.holdout=5000")


def test_imagenet_recipes_carry_the_paper_schedule():
    r = load_recipe(ROOT / "recipes" / "imagenet_resnet50.yaml")
    assert r.pruning.target.kind == "macs"
    assert r.pruning.target.keep == pytest.approx(2.25 / 4.09, abs=0.001)
    assert (r.pruning.score_batches, r.pruning.channels_per_step) == (30, 100)
    ft = r.finetune
    assert (ft.optimizer, ft.lr, ft.momentum, ft.weight_decay) == ("sgd", 1e-3, 0.9, 0.0)
    assert (ft.schedule, ft.step_size, ft.gamma, ft.epochs) == ("step", 10, 0.1, 25)
    assert r.data.batch_size == 256 and r.pruning.clear_momentum
    assert ft.distill is None  # the paper fine-tunes on the labels alone
    r101 = load_recipe(ROOT / "recipes" / "imagenet_resnet101.yaml")
    assert (r101.pruning.target.kind, r101.pruning.target.keep) == ("macs", pytest.approx(0.6))
    assert r101.finetune == ft


def _args(paths, overrides=(), print_resolved=False) -> argparse.Namespace:
    return argparse.Namespace(
        recipes=[Path(p) for p in paths], overrides=list(overrides), print_resolved=print_resolved
    )


def test_distillation_validates_on_the_quickstart_from_the_command_line(capsys):
    from taylorprune.cli import main

    recipe = str(ROOT / "recipes/quickstart.yaml")
    kd = "finetune.distill={weight: 0.5, temperature: 4}"
    assert main(["validate", recipe, "--set", kd]) == 0
    r = load_recipe(recipe, [kd])
    assert (r.finetune.distill.weight, r.finetune.distill.temperature) == (0.5, 4.0)
    assert r.finetune.distill.while_pruning is True
    with tempfile.TemporaryDirectory() as folder:  # the resolved recipe reads back the same
        assert load_recipe(write(Path(folder), "resolved.yaml", r.resolved_yaml())) == r
    assert main(["validate", recipe, "--set", "finetune.distill={weight: 2, temperature: 4}"]) == 2
    assert "finetune.distill.weight" in capsys.readouterr().err


def test_validate_command(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", "name: g\n")
    bad = write(tmp_path, "bad.yaml", "name: b\nfinetune: {lrr: 1}\n")
    typo = write(tmp_path, "typo.yaml", "name: t\nimportance: {criterion: taylor_fo_bnn}\n")
    assert validate.main(_args([good])) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    assert validate.main(_args([good, bad, typo])) == 2
    captured = capsys.readouterr()
    assert captured.out == f"{good}: ok\n"
    lines = captured.err.splitlines()
    assert len(lines) == 2
    assert f"{bad}: finetune.lrr: unknown key (did you mean 'lr'?)" in lines[0]
    assert f"{typo}: importance.criterion:" in lines[1] and "taylor_fo_bn" in lines[1]
    assert validate.main(_args([good], ["finetune.epochs=-1"])) == 2
    assert "--set: finetune.epochs" in capsys.readouterr().err
    assert validate.main(_args([good], print_resolved=True)) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed) == load_recipe(good).to_dict()


def test_a_run_started_before_a_default_changed_resumes_with_the_old_value_set():
    """A checkpoint's recipe written before ``importance.well_fit_top1`` existed and while
    ``finetune.distill`` defaulted to null and ``pruning.bn_recalibration`` to false: resuming
    mid-pruning with today's defaults is refused on each changed key, and accepted once the old
    values are set, as the README says."""
    from taylorprune.pipeline.options import resume_conflict

    recipe = str(ROOT / "recipes/quickstart.yaml")
    old = ["finetune.distill=null", "pruning.bn_recalibration=false"]
    saved = load_recipe(recipe, old).to_dict()
    del saved["importance"]["well_fit_top1"]
    key, then, now = resume_conflict(saved, load_recipe(recipe).to_dict(), "prune")
    assert key == "importance.well_fit_top1" and then is None and now == 99.0
    old.append("importance.well_fit_top1=null")
    assert resume_conflict(saved, load_recipe(recipe, old).to_dict(), "prune") is None
    for changed, then in [("finetune.distill", None), ("pruning.bn_recalibration", False)]:
        sets = [s for s in old if not s.startswith(changed)]
        conflict = resume_conflict(saved, load_recipe(recipe, sets).to_dict(), "prune")
        assert conflict is not None and conflict[0].startswith(changed)
        assert conflict[1] == then
