"""tools/gpu_check.py without a GPU: its arguments, its judges on hand-made results, the commands
its GPU mode would run (checked against the CLI's parser and the recipe schema), the failure path
(a step killed at its time limit while the other parts run), and, marked slow, the whole
``--cpu-smoke`` run end to end."""

from __future__ import annotations

import json
import math
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import gpu_check  # noqa: E402


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# -- arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--budget", "0"], "--budget: '0' is not a positive number"),
        (["--budget", "nan"], "--budget: 'nan' is not a positive number"),
        (["--budget", "ten"], "--budget: 'ten' is not a number"),
        (["--min-throughput-ratio", "-1"], "--min-throughput-ratio"),
        (["--parts", "gpu"], "--parts: invalid choice: 'gpu'"),
        (["--force-fail", "all"], "--force-fail: invalid choice: 'all'"),
        (["--python", "/no/such/python"], "--python /no/such/python: not an executable file"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("gpu_check: error: ") and err.count("\n") == 1, err
    assert fragment in err


def test_an_out_folder_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err == f"gpu_check: error: --out {tmp_path / 'f'}: exists and is not a folder\n"


def test_the_shell_wrapper_passes_bad_arguments_through_without_a_traceback():
    res = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), "--budget", "-5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("gpu_check: error")]
    assert res.returncode == 2
    assert errors == ["gpu_check: error: argument --budget: '-5' is not a positive number"]
    assert "Traceback" not in res.stderr and res.stdout == ""


# -- judges on hand-made results -------------------------------------------------------------------
def _pipeline_inputs(loss: float = 1.5):
    report = {
        "metrics": [
            {"phase": "prune", "step": 1, "iters": 5, "time_s": 9.0},
            {"phase": "finetune", "epoch": 1, "iters": 10, "time_s": 2.0, "train_loss": loss},
        ],
        "target": {"keep": 0.55, "achieved_keep": 0.551, "stopped_short": None},
        "steps": [{"step": 1}, {"step": 2}, {"step": 3}],
        "timings": {"pruning_s": 9.0, "finetune_s": 2.5, "total_s": 30.0},
        "latency": {"speedup": 1.4, "device": "cuda:0"},
    }
    recipe = {
        "finetune": {"amp": "fp16", "channels_last": True},
        "data": {"batch_size": 4},
        "model": {"source": "torchvision", "name": "resnet50"},
    }
    plain = {
        "unpruned": {"samples_per_s": 25.0, "resident_samples_per_s": 30.0},
        "pruned": {"samples_per_s": 16.0},
    }
    return report, recipe, plain


def test_pipeline_throughput_is_iterations_times_batch_over_epoch_time_against_the_plain_loop():
    r = gpu_check.PartResult()
    gpu_check.judge_pipeline(r, *_pipeline_inputs(), smoke=False, min_ratio=0.9)
    r.settle()
    f = r.figures
    # 10 iterations of batch 4 in 2 s = 20 samples/s; the plain loop did 25 (unpruned), 16 (pruned)
    assert f["finetune_samples_per_s"] == 20.0
    assert f["throughput_ratio"] == 0.8 and f["overhead_ratio"] == 1.25
    assert (f["macs_kept"], f["pruning_steps"], f["latency_speedup"]) == (0.551, 3, 1.4)
    assert (
        "10 iterations of batch 4" in f["compared"]
        and "unpruned torchvision resnet50" in (f["compared"])
    )
    ok = {c["name"]: c["ok"] for c in r.checks}
    assert ok == {
        "fine-tuning loss finite": True,
        "MACs target reached": True,
        "amp, channels_last": True,
        "fine-tuning samples/s ÷ plain loop": False,
    }
    assert r.status == "failed" and r.reason == "below the bar: fine-tuning samples/s ÷ plain loop"

    r = gpu_check.PartResult()
    gpu_check.judge_pipeline(r, *_pipeline_inputs(), smoke=False, min_ratio=0.75)
    r.settle()
    assert r.status == "passed" and all(c["ok"] for c in r.checks)


def test_pipeline_on_the_cpu_does_not_judge_timings_but_still_judges_the_loss():
    report, recipe, plain = _pipeline_inputs(loss=math.nan)
    recipe["finetune"]["amp"] = None
    r = gpu_check.PartResult()
    gpu_check.judge_pipeline(r, report, recipe, plain, smoke=True, min_ratio=0.9)
    r.settle()
    ok = {c["name"]: c["ok"] for c in r.checks}
    assert ok["fine-tuning samples/s ÷ plain loop"] is None and ok["amp, channels_last"] is True
    assert r.status == "failed" and r.reason == "below the bar: fine-tuning loss finite"


def test_a_report_without_a_fine_tuning_epoch_fails_the_pipeline_part():
    report, recipe, plain = _pipeline_inputs()
    report["metrics"] = report["metrics"][:1]
    r = gpu_check.PartResult()
    gpu_check.judge_pipeline(r, report, recipe, plain, smoke=False, min_ratio=0.9)
    assert r.status == "failed" and "no fine-tuning epoch" in r.reason


@pytest.mark.parametrize(
    "fraction,smoke,ok",
    [
        (0.571, False, True),
        (0.629, False, True),
        (0.632, False, False),
        (0.560, False, False),
        (0.9, True, None),
    ],  # fmt: skip
)
def test_latency_fraction_must_lie_within_5_percent_of_0_6(fraction, smoke, ok):
    report = {
        "latency": {"fraction": fraction},
        "latency_target": {
            "keep": 0.6,
            "baseline_ms": 10.0,
            "settings": {},
            "device": {},
            "checks": [{}, {}, {}],
        },
        "target": {"achieved_keep": fraction, "stopped_short": None},
        "finetuned": {"macs": 40},
        "baseline": {"macs": 100},
        "timings": {},
    }
    r = gpu_check.PartResult()
    gpu_check.judge_latency(r, report, smoke)
    assert r.checks[0]["ok"] is ok
    assert r.figures["latency_target"]["trials"] == 3
    assert r.figures["latency_target"]["macs_kept"] == 0.4


def test_scoring_ratio_is_judged_against_the_bench_bar():
    def results(ratio: float) -> dict:
        return {
            "meta": {"device": "cuda"},
            "rows": [
                {"variant": "plain", "median_s": 0.2, "ratio": 1.0, "bar": None, "times_s": [0.2]},
                {
                    "variant": "taylor_fo_bn",
                    "median_s": 0.2 * ratio,
                    "ratio": ratio,
                    "bar": 1.03,
                    "times_s": [0.2 * ratio],
                },  # fmt: skip
            ],
        }

    for ratio, ok in ((1.02, True), (1.05, False)):
        r = gpu_check.PartResult()
        gpu_check.judge_scoring(r, results(ratio), smoke=False)
        assert r.checks[0]["ok"] is ok and r.figures["ratio"] == ratio
        assert r.figures["plain_step_s"] == 0.2


def test_junit_counts_tell_passed_failed_and_skipped(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_1"/>'
        '<testcase classname="tests.test_a" name="test_2"/>'
        '<testcase classname="tests.test_a" name="test_3"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_b" name="test_4"><error message="setup"/></testcase>'
        '<testcase classname="tests.test_b" name="test_5">'
        '<skipped type="pytest.skip" message="needs a CUDA device"/></testcase>'
        "</testsuite></testsuites>"
    )
    counts = gpu_check.junit_counts(xml)
    assert (counts["passed"], counts["failed"], counts["skipped"]) == (2, 2, 1)
    assert counts["skipped_tests"] == ["tests.test_b::test_5 (needs a CUDA device)"]
    assert counts["failed_tests"] == ["tests.test_a::test_3 (boom)", "tests.test_b::test_4 (setup)"]


@pytest.mark.parametrize(
    "cpus,shm_gib,workers",
    [(16, 64, 8), (16, 1, 1), (16, 0, 0), (2, 64, 1), (1, 64, 0), (16, 2.4, 4)],
)
def test_loader_workers_fit_the_cpus_and_dev_shm(cpus, shm_gib, workers):
    batch = 256 * 3 * 224 * 224 * 4  # 154 MB; two in flight per worker in half of /dev/shm
    assert gpu_check.loader_workers(batch, cpus, int(shm_gib * 2**30)) == workers


def test_the_selected_test_files_hold_every_gpu_marked_test_and_not_this_file():
    files = gpu_check.cuda_test_files(ROOT / "tests")
    marked = {
        f"tests/{p.name}"
        for p in (ROOT / "tests").glob("test_*.py")
        if "@pytest.mark.gpu" in p.read_text() and p.name != "test_gpu_check.py"
    }
    assert marked and marked <= set(files)
    assert "tests/test_gpu_check.py" not in files
    assert {"tests/test_train.py", "tests/test_measure.py", "tests/test_latency.py"} <= set(files)


@pytest.mark.parametrize(
    "remaining,expected,limit,later,timeout",
    [
        (470, 10, 60, 365, 60),  # a full budget: the step's own limit
        (470, 100, 200, 275, 195),  # what the later steps do not expect
        (300, 100, 200, 275, 100),  # short: its expected time, the later steps are squeezed
        (40, 100, 200, 275, 40),  # what is left
        (4, 10, 60, 0, None),  # under 5 s: not started
        (4, 3, 60, 0, 4),  # ... unless the step expects less: then what is left
    ],
)
def test_a_step_gets_its_limit_out_of_what_later_steps_do_not_expect(
    remaining, expected, limit, later, timeout
):
    assert gpu_check.step_timeout(remaining, expected, limit, later) == timeout


def test_results_are_written_atomically_and_readable(tmp_path):
    path = tmp_path / "r.json"
    gpu_check.write_atomic(path, "first")
    gpu_check.write_atomic(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- the commands of the GPU mode ------------------------------------------------------------------
def _gpu_plan(tmp_path, monkeypatch) -> dict[str, list[str]]:
    """The commands a GPU run would start, recorded instead of run (each step 'fails')."""
    args = gpu_check.parse_args(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")])
    s = gpu_check.Session(args)
    s.workers = 8
    seen: dict[str, list[str]] = {}

    def record(name, command, forced=False):
        seen[name] = command
        if name == "table":  # the table file exists, so the run is pointed at it
            Path(command[command.index("--output") + 1]).write_text("{}")
        return gpu_check.StepResult(name, command, rc=1)

    monkeypatch.setattr(s, "run", record)
    for part in ("tests", "pipeline", "scoring", "latency"):
        assert gpu_check.PART_FUNCTIONS[part](s, False).status == "failed"
    return seen


def _overrides(command: list[str]) -> list[str]:
    return [command[i + 1] for i, a in enumerate(command) if a == "--set"]


def test_gpu_mode_commands_parse_and_their_recipes_validate(tmp_path, monkeypatch):
    from taylorprune.cli import build_parser
    from taylorprune.recipe import load_recipe

    plan = _gpu_plan(tmp_path, monkeypatch)
    assert list(plan) == ["pytest", "nccl", "run", "plain", "bench", "table", "latency_run"]
    assert plan["pytest"][plan["pytest"].index("-k") + 1] == "gpu or cuda"

    nccl = plan["nccl"]
    assert nccl[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    inner = nccl[nccl.index("taylorprune") + 1 :]
    tiny = load_recipe(inner[1], _overrides(inner))
    assert (tiny.device, tiny.finetune.amp, tiny.finetune.channels_last) == ("cuda", "fp16", True)

    run = build_parser().parse_args(plan["run"][3:])
    pipe = load_recipe(run.recipe, run.overrides)
    assert (pipe.device, pipe.finetune.amp, pipe.finetune.channels_last) == ("cuda", "fp16", True)
    assert (pipe.model.source, pipe.model.name, pipe.model.pretrained) == (
        "torchvision",
        "resnet50",
        False,
    )
    kw = pipe.data.kwargs
    assert (kw["num_classes"], kw["input_shape"], pipe.data.workers) == (1000, [3, 224, 224], 8)
    assert (pipe.finetune.epochs, pipe.data.batch_size, kw["num_train"]) == (1, 256, 32 * 256)
    assert (pipe.pruning.target.kind, pipe.pruning.target.keep) == ("macs", 0.55)

    plain = gpu_check.parse_args(plan["plain"][2:])
    assert plain.worker == "plain-loop" and plain.set == run.overrides

    bench = plan["bench"]
    assert bench[bench.index("--device") + 1] == "cuda" and "--no-memory" in bench
    assert bench[bench.index("--variants") + 1 :][:2] == ["plain", "taylor_fo_bn"]

    table = build_parser().parse_args(plan["table"][3:])
    lat_run = build_parser().parse_args(plan["latency_run"][3:])
    lat = load_recipe(lat_run.recipe, lat_run.overrides)
    m = lat.measure
    assert (lat.pruning.target.kind, lat.pruning.target.keep) == ("latency", 0.6)
    assert (m.device, m.dtype, m.latency_batch_size) == ("cuda", "float16", 64)
    assert m.latency_table == table.output  # the run reads the table just measured ...
    # ... which it accepts only if it was measured with the run's settings
    assert (table.device, table.dtype, table.batch_size, table.threads, table.channels_last) == (
        m.device,
        m.dtype,
        m.latency_batch_size,
        m.threads,
        m.channels_last,
    )
    assert table.model == "torchvision:resnet50" and table.num_classes == 1000
    assert lat.finetune.channels_last is False  # see latency_sets: timed as the table was


def test_smoke_overrides_validate_on_the_cpu():
    from taylorprune.recipe import load_recipe

    pipe = load_recipe(gpu_check.RECIPE, gpu_check.pipeline_sets(smoke=True, workers=0))
    assert (pipe.device, pipe.finetune.amp, pipe.model.name, pipe.data.batch_size) == (
        "cpu",
        None,
        "resnet20",
        2,
    )
    lat = load_recipe(gpu_check.RECIPE, gpu_check.latency_sets(smoke=True))
    assert (lat.measure.device, lat.measure.dtype, lat.pruning.schedule) == (
        "cpu",
        "float32",
        "oneshot",
    )


# -- the failure path, for real --------------------------------------------------------------------
def test_a_step_over_its_time_limit_fails_its_part_and_the_others_still_run(
    tmp_path, monkeypatch, capsys
):
    ran = []

    def stub(name):
        def part(s, forced):
            ran.append(name)
            r = gpu_check.PartResult()
            r.check(f"{name} stub", 1.0, "ran", True)
            return r

        return part

    # env and latency are stand-ins (they need torch, seconds to import); scoring's step is real:
    # bench_scoring.py started and its process group killed after the forced 1-second limit.
    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "env", stub("env"))
    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "latency", stub("latency"))
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--cpu-smoke", "--parts", "scoring", "latency", "--force-fail", "scoring"]
    rc = gpu_check.main([*argv, "--out", str(out), "--work", str(work)])
    assert rc == 1 and ran == ["env", "latency"]
    result = _json(out / "gpu_check.json")
    parts = result["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    status = {name: p["status"] for name, p in parts.items()}
    assert status == {
        "env": "passed",
        "tests": "skipped",
        "pipeline": "skipped",
        "scoring": "failed",
        "latency": "passed",
    }
    assert parts["tests"]["reason"] == "not selected (--parts)"
    assert parts["scoring"]["reason"] == "bench: timed out after 1 s"
    (step,) = parts["scoring"]["steps"]
    assert step["timed_out"] is True and step["ok"] is False and step["seconds"] < 12
    assert result["ok"] is False and result["failed_parts"] == ["scoring"]
    md = (out / "gpu_check.md").read_text()
    assert "FAILED: scoring" in md
    assert re.search(r"^\| scoring \| failed \| bench: timed out after 1 s \|", md, re.M), md
    assert re.search(r"^\| latency \| passed \| latency stub \(ok\) \| 1 \| ran \|", md, re.M), md
    assert "==== bench: rc" in (out / "gpu_check.log").read_text()
    assert "gpu_check: scoring failed: bench: timed out after 1 s" in capsys.readouterr().err


# -- the whole smoke run ---------------------------------------------------------------------------
@pytest.mark.slow
def test_cpu_smoke_runs_the_pipeline_and_latency_parts_end_to_end(tmp_path):
    """The two parts that drive the product end to end (a pruning run against a plain training
    loop; a latency table and a latency-targeted run) at toy scale on the CPU; the other parts'
    command lines are checked above against the parsers they are given to."""
    out = tmp_path / "out"
    # the tool itself in this process (its steps are subprocesses all the same)
    rc = gpu_check.main(["--cpu-smoke", "--out", str(out), "--parts", "pipeline", "latency"])
    assert rc == 0, (out / "gpu_check.log").read_text()[-3000:]
    result = _json(out / "gpu_check.json")
    ran = ["env", "pipeline", "latency"]
    assert {n: p["status"] for n, p in result["parts"].items()} == {
        n: "passed" if n in ran else "skipped" for n in gpu_check.PARTS
    }
    parts = {n: result["parts"][n] for n in ran}
    assert result["mode"] == "cpu-smoke" and result["ok"] is True
    assert result["duration_s"] == pytest.approx(sum(p["seconds"] for p in parts.values()), rel=0.1)

    env = parts["env"]["figures"]
    assert env["import_errors"] == {} and env["versions"]["torch"] and env["cuda"]["ok"] is False

    pipe = parts["pipeline"]["figures"]
    ratio = pipe["finetune_samples_per_s"] / pipe["plain_unpruned_samples_per_s"]
    assert pipe["throughput_ratio"] == pytest.approx(ratio)
    assert pipe["finetune_iters"] == 4 and pipe["plain"]["unpruned"]["iters"] == 4  # 8 images / 2
    assert abs(pipe["macs_kept"] - 0.55) <= 0.01 and math.isfinite(pipe["finetune_loss"])
    judged = {c["name"]: c["ok"] for c in parts["pipeline"]["checks"]}
    assert judged["fine-tuning samples/s ÷ plain loop"] is None  # timings are not judged on a CPU

    lat = parts["latency"]["figures"]
    assert lat["table"]["device"]["type"] == "cpu" and lat["table"]["measured"] > 0
    # a fraction, whatever a shared CPU made of it (toy timings are not judged)
    assert math.isfinite(lat["latency_target"]["final"]["fraction"])
    assert lat["latency_target"]["final"]["fraction"] > 0
    assert lat["latency_target"]["keep"] == gpu_check.SMOKE_LATENCY_KEEP

    md = (out / "gpu_check.md").read_text()
    for name in parts:
        assert re.search(rf"^\| {name} \| passed \|", md, re.M), md
    log = (out / "gpu_check.log").read_text()
    for step in ("env", "run", "plain", "table", "latency_run"):
        assert f"==== {step}: rc 0" in log
    assert not Path(result["work"]).exists()  # the temporary run folders are gone
