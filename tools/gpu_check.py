"""The GPU proof: every CUDA path of taylorprune exercised once, in at most 8 minutes on one GPU.

From the repository root, on a machine with one CUDA GPU::

    bash tools/gpu_check.sh --out $OUT                       # writes $OUT/gpu_check.{json,md,log}
    python tools/gpu_check.py --cpu-smoke --out /tmp/smoke   # every part at toy scale on the CPU

Parts, in order (``env`` always runs; ``--parts`` picks among the others):

- ``env``: interpreter, package versions, the GPU's name and memory, /dev/shm; a fp16
  channels_last convolution forward and backward on the GPU.
- ``tests``: ``pytest -k "gpu or cuda"`` over the test files that mention CUDA (every
  ``@pytest.mark.gpu`` test, which skip without CUDA, and the CUDA-device tests that run on any
  machine); on a GPU none may fail or skip. Then ``torchrun`` with one NCCL process: the tiny
  ResNet-50 twin under DDP with fp16 AMP and channels_last.
- ``pipeline``: ``taylorprune run tools/gpu_check_resnet50.yaml``: ResNet-50, random init, synthetic
  3x224x224 data of 1000 classes, iterative pruning to 0.55 of the MACs and one fine-tuning epoch
  under fp16 AMP and channels_last. Its fine-tuning samples/s (report.json ``metrics``, the
  ``finetune`` row: ``iters`` x batch / ``time_s``) against a plain loop on the unpruned
  torchvision ResNet-50 in a worker of this file (same data through a pinned-memory DataLoader,
  same batch, fp16 AMP with a GradScaler, channels_last, SGD, ``loss.item()`` per step; an epoch of
  the same number of iterations timed the same way). Bar: ratio >= 0.9. The same loop on the
  pruned model is recorded too (the library's own overhead).
- ``scoring``: ``tools/bench_scoring.py --device cuda``: a training step with Taylor-FO-BN
  accumulation (parameter-gradient path) against a plain one, interleaved. Bar: ratio <= 1.03.
- ``latency``: ``taylorprune latency-table`` of ResNet-50 on CUDA (fp16, batch 64), then a run with
  ``pruning.target: {latency: 0.6}`` timed on those settings (one-shot; no fine-tuning). Bar: the
  final measured fraction (report.json ``latency.fraction``) within 5% of 0.6.

Every step is a subprocess with its own time limit, killed with its process group and every
descendant when it runs over; a step is never given time that the steps after it expect
(``--budget``, 465 s), so a hang costs its own limit and no more. A failing part is recorded and
the others still run; the exit code is 1 if any part failed (2 for bad arguments). Results are
written after every part, atomically: ``gpu_check.json`` (every figure, per-part status,
versions, device, durations), ``gpu_check.md`` (a short table) and ``gpu_check.log`` (each step's
command and output). Bulky run folders go to ``--work`` (a temporary folder, removed at the end
unless ``--keep-work``); their runs draw no plots (``--no-plots``: what is judged is in the
reports).

Expected time on one H100, in seconds (estimated from the CPU runs here and public H100 figures;
not yet measured, the first run's gpu_check.json replaces them):

====================  =======  ==============================================================
step                  expect   arithmetic
====================  =======  ==============================================================
env                   10       interpreter + imports 6, CUDA context and one conv 3
tests: pytest         45       imports and collection of 5 test files 15, 8 tests (4 on the
                               GPU: fp16 training on digits, a CUDA table) 15, margin 15
tests: nccl           40       torchrun 5, imports 8, tiny ResNet-50 run (fvcore counts, plots)
pipeline: run         100      imports 8, synthetic data (8,704 images, 1.3 G floats) 12,
                               baseline counts and evaluation 10, pruning ~6 steps x (5 x 0.1
                               s training + evaluation + checkpoint 3 s) 20, fine-tuning 32 x
                               0.07 s + start 3, finish (fvcore per layer, CPU latency 30
                               forwards x 0.2 s, plots) 25
pipeline: plain       40       imports 8, data 12, 2 models x (3 + 32 + 20 steps x 0.08 s)
scoring               30       imports 8, graph 3, 32 steps x 0.25 s (batch 256, fp32)
latency: table        50       imports 8, 1,126 grid points x ~30 ms (module built, 6 timings)
latency: run          60       imports 8, baseline timing, one-shot step: up to 4 trials + 2
                               readings x (3 copies + 40 forwards), final reading, counts
total                 375      of the 465 s budget; the smoke mode takes 1 to 1.5 minutes here
====================  =======  ==============================================================
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _cli as cli  # argparse only: the library is imported once the env part found it

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "tools" / "gpu_check_resnet50.yaml"
TINY_RECIPE = REPO / "recipes" / "tiny" / "imagenet_resnet50.yaml"
PARTS = ("env", "tests", "pipeline", "scoring", "latency")
SELECTABLE = PARTS[1:]
BUDGET_S = 465.0  # of the 8 minutes: a step over its limit takes up to 10 s more to be killed

# Bars. Throughput: the pruned model (0.55 of the MACs) fine-tuned by the pipeline keeps at
# least this share of a plain loop's samples/s on the full model.
MIN_THROUGHPUT_RATIO = 0.9
LATENCY_KEEP = 0.6
LATENCY_TOLERANCE = 0.05  # relative, as the library's Target.within
SCORING_CRITERION = "taylor_fo_bn"

# (expected, limit) seconds per step: the expected times of the steps still to come are kept
# for them; a step may run up to its limit only out of what is left beyond that.
GPU_TIMES = {
    "env": (10, 60),
    "pytest": (45, 120),
    "nccl": (40, 100),
    "run": (100, 200),
    "plain": (40, 100),
    "bench": (30, 90),
    "table": (50, 150),
    "latency_run": (60, 150),
}
SMOKE_TIMES = {name: (15, 180) for name in GPU_TIMES}
STEPS_OF = {
    "env": ("env",),
    "tests": ("pytest", "nccl"),
    "pipeline": ("run", "plain"),
    "scoring": ("bench",),
    "latency": ("table", "latency_run"),
}
FORCED_LIMIT_S = 1.0  # --force-fail: the part's steps get this long, and time out

# --set overrides of tools/gpu_check_resnet50.yaml: the toy scale of --cpu-smoke (a CIFAR-style
# ResNet-20 on 3x16x16 synthetic data, batch 2) and the latency part's run.
SMOKE_SETS = (
    "device=cpu",
    "model.source=builtin",
    "model.name=resnet20",
    "model.num_classes=10",
    "data.kwargs={num_classes: 10, input_shape: [3, 16, 16], num_train: 8, num_val: 4}",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "pruning.score_batches=1",
    "pruning.channels_per_step=200",
    "pruning.max_steps=3",
    "pruning.round_to=1",
    "finetune.amp=null",  # fp16 autocast needs CUDA
    "measure.latency_batch_size=2",
    "measure.latency_runs=2",
)
GPU_LATENCY = {"device": "cuda", "dtype": "float16", "batch": 64, "threads": 8, "runs": 20}
# keep 0.9 on the CPU: a ResNet-20 at batch 2 is mostly per-layer overhead, and 0.6 is at times
# predicted out of reach there (the run then stops before pruning, as it should)
SMOKE_LATENCY = {"device": "cpu", "dtype": "float32", "batch": 2, "threads": 1, "runs": 3}
SMOKE_LATENCY_KEEP = 0.9


def latency_sets(smoke: bool) -> list[str]:
    """The latency part's ``--set`` overrides of :data:`RECIPE` (without the table file)."""
    lat = SMOKE_LATENCY if smoke else GPU_LATENCY
    sets = [
        *(SMOKE_SETS if smoke else ()),
        "name=gpu-check-latency",
        f"pruning.target={{latency: {SMOKE_LATENCY_KEEP if smoke else LATENCY_KEEP}}}",
        "pruning.schedule=oneshot",
        f"pruning.score_batches={2 if smoke else 4}",
        "finetune.epochs=0",
        # measure.channels_last is false: a model fine-tuned in channels_last keeps that layout
        # and would be timed against a contiguous baseline (see tools/results/gpu/README.md).
        "finetune.channels_last=false",
        "measure.latency=false",  # the CPU/CUDA comparison at batch 64 is not this part's
        f"measure.device={lat['device']}",
        f"measure.dtype={lat['dtype']}",
        f"measure.latency_batch_size={lat['batch']}",
        f"measure.latency_runs={lat['runs']}",
        f"measure.threads={lat['threads']}",
        "data.workers=0",
    ]
    if not smoke:
        sets += [
            f"data.batch_size={lat['batch']}",
            f"data.eval_batch_size={lat['batch']}",
            "data.kwargs={num_classes: 1000, input_shape: [3, 224, 224], num_train: 256, "
            "num_val: 128}",
        ]
    return sets


# -- arguments -------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, no usage block: the caller is often a script reading stderr.
        self.exit(2, f"gpu_check: error: {' '.join(message.split())}\n")


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpu_check", description=__doc__.split("\n")[0])
    cli.add_out(p, "gpu")  # with --cpu-smoke and no --out: a temporary folder instead
    p.add_argument("--work", type=Path, default=None, help="run folders (default: a temp folder)")
    p.add_argument("--keep-work", action="store_true", help="keep --work at the end")
    p.add_argument(
        "--cpu-smoke",
        "--dry-run",
        action="store_true",
        help="every part at toy scale on the CPU; what needs CUDA is skipped with its reason",
    )
    p.add_argument("--parts", nargs="+", choices=SELECTABLE, default=list(SELECTABLE))
    p.add_argument("--budget", type=_positive(float), default=BUDGET_S, help="seconds (465)")
    p.add_argument("--min-throughput-ratio", type=_positive(float), default=MIN_THROUGHPUT_RATIO)
    p.add_argument("--python", default=sys.executable, help="interpreter of every step")
    p.add_argument(
        "--force-fail",
        choices=PARTS,
        default=None,
        help=f"give this part's steps {FORCED_LIMIT_S:g} s (tests the failure path)",
    )
    p.add_argument("--worker", choices=("env", "plain-loop"), help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    cli.add_recipe(p, None, argparse.SUPPRESS)  # the plain-loop worker's
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--pruned", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--resident", type=int, default=20, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return args
    if args.cpu_smoke and "--out" not in (argv if argv is not None else sys.argv[1:]):
        args.out = Path(tempfile.gettempdir()) / "gpu_check-cpu-smoke"  # never the committed one
    for key in ("out", "work"):
        path = getattr(args, key)
        if path is not None and path.exists() and not path.is_dir():
            parser.error(f"--{key} {path}: exists and is not a folder")
    if not (os.path.isfile(args.python) and os.access(args.python, os.X_OK)):
        parser.error(f"--python {args.python}: not an executable file")
    return args


# -- running steps ---------------------------------------------------------------------------------
@dataclass
class StepResult:
    """One subprocess: its command, exit code (None: not started), seconds, and its output's
    end. ``stdout`` and ``stderr`` are the files its output went to."""

    name: str
    command: list[str]
    rc: int | None = None
    seconds: float = 0.0
    timeout_s: float = 0.0
    timed_out: bool = False
    skipped: str | None = None
    stdout: str = ""
    stderr: str = ""
    tail: str = ""

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.rc == 0 and not self.timed_out

    def problem(self) -> str:
        """One line: why the step did not succeed."""
        if self.skipped:
            return f"{self.name}: {self.skipped}"
        if self.timed_out:
            return f"{self.name}: timed out after {self.timeout_s:.0f} s"
        last = [ln for ln in self.tail.splitlines() if ln.strip()]
        return f"{self.name}: exit code {self.rc}" + (f": {last[-1].strip()}" if last else "")


class Session:
    """Runs the steps of the parts within the budget; holds folders and the mode."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke: bool = args.cpu_smoke
        self.out: Path = args.out
        self.work: Path = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
        self.times = SMOKE_TIMES if self.smoke else GPU_TIMES
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        selected = ["env", *args.parts]
        self.pending = [s for part in PARTS if part in selected for s in STEPS_OF[part]]
        self.log = self.out / "gpu_check.log"
        self.out.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        self.env = self._environment()
        self.workers = 0  # DataLoader workers of the pipeline part (set by the env part)

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(
            PYTHONUNBUFFERED="1",
            TAYLORPRUNE_CACHE=str(self.work / "cache"),  # tables measured here, nothing reused
            TAYLORPRUNE_OFFLINE="1",
            MPLBACKEND="Agg",
        )
        return env

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def python(self, *argv: str | Path) -> list[str]:
        return [self.args.python, *map(str, argv)]

    def run(self, name: str, command: list[str], forced: bool = False) -> StepResult:
        """Run one step (cwd: the repository root) unless the budget is spent."""
        self.pending.remove(name)
        step = StepResult(name, command)
        expected, limit = self.times[name]
        later = sum(self.times[s][0] for s in self.pending)
        remaining = self.deadline - time.monotonic()
        timeout = step_timeout(remaining, expected, limit, later)
        if timeout is None and not forced:
            step.skipped = f"not run: {max(remaining, 0):.0f} s left of the --budget"
            return step
        step.timeout_s = FORCED_LIMIT_S if forced else timeout
        out_path = self.path("logs", f"{name}.out")
        err_path = self.path("logs", f"{name}.err")
        step.stdout, step.stderr = str(out_path), str(err_path)
        t0 = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: loader workers die with it
            )
            try:
                step.rc = proc.wait(timeout=step.timeout_s)
            except subprocess.TimeoutExpired:
                step.timed_out = True
                step.rc = _kill_group(proc)
            finally:
                if proc.poll() is None:  # interrupted: leave nothing running
                    _kill_group(proc)
        step.seconds = time.monotonic() - t0
        text = _read_tail(err_path, 200_000) + _read_tail(out_path, 20_000)
        step.tail = text[-3000:]
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(
                f"==== {name}: rc {step.rc}, {step.seconds:.1f} s (limit {step.timeout_s:.0f} s)"
                f"{', TIMED OUT' if step.timed_out else ''}\n$ {' '.join(command)}\n{text}\n"
            )
        return step


def step_timeout(remaining: float, expected: float, limit: float, later: float) -> float | None:
    """Seconds a step may run: up to its ``limit`` out of what the ``remaining`` budget holds
    beyond the ``later`` steps' expected times, and at least its own ``expected`` time while the
    budget lasts (a budget too small for every step squeezes the last ones, not the first).
    None: under 5 s left, not worth starting."""
    if remaining < min(5.0, expected):
        return None
    return min(limit, max(remaining - later, min(expected, remaining)))


def _kill_group(proc: subprocess.Popen) -> int | None:
    """SIGTERM to the step's process group (the CLI stops cleanly), then SIGKILL to the group and
    to every descendant: torchrun starts its workers in sessions of their own. None when even
    that leaves the step's process alive (a process stuck in the driver)."""
    tree = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        rc = proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        rc = None
        tree.update(_descendants(proc.pid))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid, started in tree.items():
        if _started(pid) == started:  # the same process, not a later one given its id
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    if rc is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            rc = proc.wait(timeout=5.0)
    return rc


def _proc_stat(pid: int | str) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state, ppid, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _started(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return None if fields is None else fields[19]  # starttime, in clock ticks since boot


def _descendants(pid: int) -> dict[int, str | None]:
    """Every process below ``pid`` with its start time (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(entry.name)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: dict[int, str | None] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = _started(child)
            todo.append(child)
    return out


def _read_tail(path: Path, limit: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")


# -- parts -----------------------------------------------------------------------------------------
@dataclass
class PartResult:
    """``status``: passed, failed or skipped; ``checks``: ``{name, value, bar, ok}`` with ``ok``
    None where this mode does not judge it (timings on the CPU)."""

    status: str = "passed"
    reason: str | None = None
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, value: Any, bar: str, ok: bool | None) -> None:
        self.checks.append({"name": name, "value": value, "bar": bar, "ok": ok})

    def add(self, step: StepResult) -> StepResult:
        self.steps.append({k: v for k, v in asdict(step).items() if k != "tail"})
        self.steps[-1]["ok"] = step.ok
        if not step.ok:
            self.fail(step.problem())
            self.steps[-1]["tail"] = step.tail
        return step

    def fail(self, reason: str) -> None:
        if self.status != "failed":
            self.status, self.reason = "failed", reason

    def settle(self) -> None:
        bad = [c["name"] for c in self.checks if c["ok"] is False]
        if bad and self.status != "failed":
            self.fail("below the bar: " + ", ".join(bad))


def part_env(s: Session, forced: bool) -> PartResult:
    r = PartResult()
    step = r.add(s.run("env", s.python(__file__, "--worker", "env"), forced))
    if not step.ok:
        return r
    # The last line: an import that prints must not hide the worker's JSON.
    info = json.loads(Path(step.stdout).read_text().strip().splitlines()[-1])
    r.figures.update(info)
    r.check("imports", info["import_errors"] or "all", "all import", not info["import_errors"])
    cuda = info["cuda"]
    if s.smoke:
        r.check("CUDA device", cuda["available"], "not needed (cpu-smoke)", None)
    else:
        r.check("CUDA device", cuda.get("name"), "present, fp16 conv ran", cuda["ok"])
        if not cuda["available"]:
            r.fail(f"torch {info['versions'].get('torch')} sees no CUDA device")
    batch_bytes = 256 * 3 * 224 * 224 * 4
    s.workers = 0 if s.smoke else loader_workers(batch_bytes, info["cpus"], info["shm_free_bytes"])
    r.figures["pipeline_loader_workers"] = s.workers
    return r


def loader_workers(batch_bytes: int, cpus: int, shm_free: int, most: int = 8) -> int:
    """DataLoader workers for batches of ``batch_bytes``: at most ``most`` and half the CPUs, and
    no more than half of /dev/shm holds at two batches in flight per worker (the loader's
    default prefetch; a full /dev/shm kills workers with a bus error)."""
    workers = min(most, cpus // 2)
    while workers > 0 and 2 * workers * batch_bytes > shm_free // 2:
        workers -= 1
    return workers


def part_tests(s: Session, forced: bool) -> PartResult:
    r = PartResult()
    files = cuda_test_files(REPO / "tests")
    junit = s.path("pytest.xml")
    command = s.python(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "gpu or cuda",
        f"--junitxml={junit}", *files,
    )  # fmt: skip
    step = r.add(s.run("pytest", command, forced))
    if junit.is_file():
        counts = junit_counts(junit)
        r.figures["pytest"] = counts
        ran = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        skips_ok = s.smoke or counts["skipped"] == 0
        r.check("CUDA tests", ran, "none fails; none skips on a GPU", step.ok and skips_ok)
        if not skips_ok:
            r.fail("skipped on a GPU machine: " + "; ".join(counts["skipped_tests"]))
    if s.smoke:
        r.check("NCCL run", "skipped: needs CUDA", "backend nccl, ranks agree", None)
        s.pending.remove("nccl")
        return r
    out = s.path("nccl")
    sets = ["device=cuda", "finetune.amp=fp16", "finetune.channels_last=true"]
    command = s.python(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        "-m", "taylorprune", "run", TINY_RECIPE, "-o", out, *_set_args(sets),
    )  # fmt: skip
    step = r.add(s.run("nccl", command, forced))
    if step.ok:
        dist = _read_json(out / "report.json")["distributed"] or {}
        r.figures["nccl"] = dist
        backend = dist.get("backend")
        r.check("NCCL run", backend, "backend nccl, ranks agree", backend == "nccl")
        r.check("ranks agree", dist.get("ranks_agree"), "true", dist.get("ranks_agree") is True)
        # DDP is wrapped before the model turns channels_last: worth knowing, not a failure.
        stderr = Path(step.stderr).read_text(encoding="utf-8", errors="replace")
        r.figures["ddp_grad_stride_warning"] = "Grad strides do not match" in stderr
    return r


def cuda_test_files(tests: Path) -> list[str]:
    """Test files that mention CUDA or the gpu marker (this file's own tests excluded)."""
    out = []
    for path in sorted(tests.glob("test_*.py")):
        if path.name == "test_gpu_check.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "cuda" in text or "mark.gpu" in text:
            out.append(str(path.relative_to(REPO)))
    return out


def junit_counts(path: Path) -> dict[str, Any]:
    """Passed, failed (failures and errors), skipped tests of a pytest JUnit XML file, with the
    names and reasons of the skipped and failed ones."""
    root = ET.parse(path).getroot()
    out: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0}
    out["skipped_tests"], out["failed_tests"] = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            out["passed"] += 1
        elif outcome.tag == "skipped":
            out["skipped"] += 1
            out["skipped_tests"].append(f"{name} ({outcome.get('message', '')})")
        else:
            out["failed"] += 1
            out["failed_tests"].append(f"{name} ({(outcome.get('message') or '')[:200]})")
    return out


def _set_args(sets: list[str]) -> list[str]:
    return [arg for x in sets for arg in ("--set", x)]


def pipeline_sets(smoke: bool, workers: int) -> list[str]:
    """The pipeline part's ``--set`` overrides of :data:`RECIPE`: fine-tuning on the labels
    alone, as the plain loop it is held to trains (no teacher's forward pass)."""
    plain = "finetune.distill=null"
    return [*SMOKE_SETS, "data.workers=0", plain] if smoke else [f"data.workers={workers}", plain]


def part_pipeline(s: Session, forced: bool) -> PartResult:
    r = PartResult()
    overrides = _set_args(pipeline_sets(s.smoke, s.workers))
    run_dir = s.path("pipeline")
    command = s.python("-m", "taylorprune", "run", "--no-plots", RECIPE, "-o", run_dir, *overrides)
    run = r.add(s.run("run", command, forced))
    plain_json = s.path("plain.json")
    worker = s.python(
        __file__, "--worker", "plain-loop", "--recipe", RECIPE, *overrides, "--json", plain_json
    )
    if s.smoke:
        worker += ["--warmup", "1", "--resident", "2"]
    if (run_dir / "model.pt").is_file():
        worker += ["--pruned", str(run_dir / "model.pt")]
    plain = r.add(s.run("plain", worker, forced))
    if not (run.ok and plain.ok):
        return r
    report = _read_json(run_dir / "report.json")
    recipe = _read_recipe(run_dir / "recipe.yaml")
    judge_pipeline(r, report, recipe, _read_json(plain_json), s.smoke, s.args.min_throughput_ratio)
    return r


def judge_pipeline(
    r: PartResult,
    report: dict[str, Any],
    recipe: dict[str, Any],
    plain: dict[str, Any],
    smoke: bool,
    min_ratio: float,
) -> None:
    """Figures and checks of the pipeline part from its run's report.json and resolved recipe and
    the plain loop's results."""
    ft_cfg, batch = recipe["finetune"], recipe["data"]["batch_size"]
    rows = [m for m in report["metrics"] if m.get("phase") == "finetune"]
    if not rows:
        r.fail("report.json has no fine-tuning epoch in metrics")
        return
    row = rows[-1]
    pipeline_sps = row["iters"] * batch / row["time_s"]
    unpruned = plain["unpruned"]["samples_per_s"]
    ratio = pipeline_sps / unpruned
    pruned = plain.get("pruned", {}).get("samples_per_s")
    amp = "none" if ft_cfg["amp"] is None else ft_cfg["amp"]
    r.figures.update(
        compared=(
            f"taylorprune fine-tuning epoch of the pruned model ({row['iters']} iterations of "
            f"batch {batch}, amp {amp}, channels_last {ft_cfg['channels_last']}; report.json "
            "metrics, phase finetune: iters x batch / time_s) against a plain loop on the "
            f"unpruned {recipe['model']['source']} {recipe['model']['name']} (same data through "
            "a pinned-memory DataLoader, same batch, amp and layout, SGD, the same number of "
            "iterations timed the same way)"
        ),
        finetune_samples_per_s=pipeline_sps,
        finetune_epoch_s=row["time_s"],
        finetune_iters=row["iters"],
        finetune_loss=row["train_loss"],
        plain_unpruned_samples_per_s=unpruned,
        plain_unpruned_resident_samples_per_s=plain["unpruned"]["resident_samples_per_s"],
        plain_pruned_samples_per_s=pruned,
        throughput_ratio=ratio,
        overhead_ratio=None if pruned is None else pipeline_sps / pruned,
        macs_kept=report["target"]["achieved_keep"],
        pruning_steps=len(report["steps"]),
        timings_s=report["timings"],
        latency_speedup=(report.get("latency") or {}).get("speedup"),
        latency_device=(report.get("latency") or {}).get("device"),
        plain=plain,
    )
    loss = row["train_loss"]
    r.check("fine-tuning loss finite", loss, "finite", math.isfinite(loss))
    target = report["target"]
    reached = target["stopped_short"] is None
    r.check("MACs target reached", target["achieved_keep"], f"{target['keep']} (±1%)", reached)
    layout = f"{amp}, {ft_cfg['channels_last']}"
    want = "none, True" if smoke else "fp16, True"  # fp16 autocast needs CUDA
    r.check("amp, channels_last", layout, want, layout == want)
    bar, judged = f">= {min_ratio:g}", not smoke
    r.check("fine-tuning samples/s ÷ plain loop", round(ratio, 3), bar + _unjudged(smoke),
            ratio >= min_ratio if judged else None)  # fmt: skip


def _unjudged(smoke: bool) -> str:
    return " (not judged on the CPU)" if smoke else ""


def part_scoring(s: Session, forced: bool) -> PartResult:
    r = PartResult()
    out = s.path("scoring")
    scale = ["--batch", "2", "--size", "32", "--repeats", "2"]
    if not s.smoke:
        scale = ["--batch", "256", "--size", "224", "--repeats", "15"]
    command = s.python(
        REPO / "tools" / "bench_scoring.py", "--device", "cpu" if s.smoke else "cuda", *scale,
        "--variants", "plain", SCORING_CRITERION, "--no-memory", "--out", out,
    )  # fmt: skip
    if r.add(s.run("bench", command, forced)).ok:
        judge_scoring(r, _read_json(out / "results.json"), s.smoke)
    return r


def judge_scoring(r: PartResult, results: dict[str, Any], smoke: bool) -> None:
    rows = {row["variant"]: row for row in results["rows"]}
    row = rows[SCORING_CRITERION]
    r.figures.update(
        meta=results["meta"],
        plain_step_s=rows["plain"]["median_s"],
        scoring_step_s=row["median_s"],
        ratio=row["ratio"],
        times_s={v: rows[v]["times_s"] for v in rows},
    )
    ok = None if smoke else row["ratio"] <= row["bar"]
    bar = f"<= {row['bar']:g}" + _unjudged(smoke)
    r.check(f"{SCORING_CRITERION} step ÷ plain step", round(row["ratio"], 3), bar, ok)


def part_latency(s: Session, forced: bool) -> PartResult:
    r = PartResult()
    lat = SMOKE_LATENCY if s.smoke else GPU_LATENCY
    model = ["resnet20", "--num-classes", "10", "--input-size", "3", "16", "16"]
    if not s.smoke:
        model = ["torchvision:resnet50", "--num-classes", "1000", "--input-size", "3", "224", "224"]
    table_file = s.path("latency-table.json")
    command = s.python(
        "-m", "taylorprune", "latency-table", *model, "--batch-size", lat["batch"],
        "--device", lat["device"], "--dtype", lat["dtype"], "--threads", lat["threads"],
        "--runs", lat["runs"], "--output", table_file, "--json",
    )  # fmt: skip
    table = r.add(s.run("table", command, forced))
    if table.ok:
        judge_table(r, _read_json(Path(table.stdout)), s.smoke)
    sets = latency_sets(s.smoke)
    if table_file.is_file():
        sets.append(f"measure.latency_table={table_file}")  # else the run measures its own
    run_dir = s.path("latency")
    command = s.python(
        "-m", "taylorprune", "run", "--no-plots", RECIPE, "-o", run_dir, *_set_args(sets)
    )
    if r.add(s.run("latency_run", command, forced)).ok:
        judge_latency(r, _read_json(run_dir / "report.json"), s.smoke)
    return r


def judge_table(r: PartResult, table: dict[str, Any], smoke: bool) -> None:
    stats = table["stats"]
    r.figures["table"] = {
        "device": table["device"],
        "settings": table["settings"],
        "points": stats["points"],
        "measured": stats["measured"],
        "seconds": stats["seconds"],
        "spread": stats["spread"],
        "table_sum_ms": table["table_sum_ms"],
        "measured_ms": table["measured_ms"],
        "residual_ms": table["residual_ms"],
    }
    want, where = "cpu" if smoke else "cuda", table["device"]["type"]
    ok = where == want and stats["measured"] > 0
    r.check("latency table", f"{stats['measured']} points on {where}", f"measured on {want}", ok)


def judge_latency(r: PartResult, report: dict[str, Any], smoke: bool) -> None:
    lt = report["latency_target"]
    final, keep = report["latency"], lt["keep"]
    fraction = final["fraction"]
    r.figures["latency_target"] = {
        "keep": lt["keep"],
        "final": final,
        "achieved_keep": report["target"]["achieved_keep"],
        "stopped_short": report["target"]["stopped_short"],
        "baseline_ms": lt["baseline_ms"],
        "settings": lt["settings"],
        "device": lt["device"],
        "trials": len(lt["checks"]),
        "macs_kept": report["finetuned"]["macs"] / report["baseline"]["macs"],
        "timings_s": report["timings"],
    }
    within = abs(fraction - keep) <= LATENCY_TOLERANCE * keep
    bar = f"{keep} ± {LATENCY_TOLERANCE:.0%}" + _unjudged(smoke)
    r.check("final latency fraction", round(fraction, 4), bar, None if smoke else within)


PART_FUNCTIONS: dict[str, Callable[[Session, bool], PartResult]] = {
    "env": part_env,
    "tests": part_tests,
    "pipeline": part_pipeline,
    "scoring": part_scoring,
    "latency": part_latency,
}


def run_part(s: Session, name: str) -> PartResult:
    """One part, whatever goes wrong inside it: a bug or an unreadable result fails the part
    with one line, and the next part runs."""
    t0 = time.monotonic()
    try:
        r = PART_FUNCTIONS[name](s, s.args.force_fail == name)
    except Exception as exc:
        r = PartResult()
        r.fail(f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500])
    for step in STEPS_OF[name]:  # steps a part left before failing are not waited for
        if step in s.pending:
            s.pending.remove(step)
    r.settle()
    r.seconds = time.monotonic() - t0
    return r


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_recipe(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


# -- results ---------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a
    reader (or a kill) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the results from other users
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def markdown(result: dict[str, Any]) -> str:
    env = result["parts"]["env"].get("figures", {})
    cuda = env.get("cuda") or {}
    versions = env.get("versions") or {}
    device = cuda.get("name") or "no CUDA device"
    verdict = "PASSED" if result["ok"] else "FAILED: " + ", ".join(result["failed_parts"])
    lines = [
        f"# GPU check ({result['mode']}), {device}, {result['started'][:16]}",
        "",
        f"torch {versions.get('torch', '?')} (CUDA {cuda.get('cuda_version') or '-'}, cuDNN "
        f"{cuda.get('cudnn') or '-'}), taylorprune {env.get('taylorprune', '?')}; "
        f"{result['duration_s']:.0f} s of a {result['budget_s']:.0f} s budget. {verdict}",
        "",
        "| part | status | check | value | bar | s |",
        "|---|---|---|---|---|---|",
    ]
    for name, part in result["parts"].items():
        seconds = f"{part['seconds']:.0f}"
        checks = part["checks"] or [None]
        for i, c in enumerate(checks):
            status = part["status"] if i == 0 else ""
            if c is None:
                reason = _cell(part["reason"] or "")
                lines.append(f"| {name} | {status} | {reason} | | | {seconds} |")
                continue
            mark = {True: "ok", False: "FAIL", None: "-"}[c["ok"]]
            lines.append(
                f"| {name if i == 0 else ''} | {status} | {c['name']} ({mark}) | "
                f"{_cell(c['value'])} | {_cell(c['bar'])} | {seconds if i == 0 else ''} |"
            )
        if part["status"] == "failed" and part["checks"]:
            lines.append(f"| | | why: {_cell(part['reason'])} | | | |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """A table cell: numbers to four digits, no '|' or line break to split the row."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return " ".join(text.replace("|", "/").split())


def _summary(env: PartResult) -> dict[str, Any]:
    """What the top of gpu_check.json says of the machine (the env part has the rest)."""
    f, cuda = env.figures, env.figures.get("cuda") or {}
    keys = ("name", "memory_gib", "capability", "cuda_version", "cudnn", "nvidia_smi")
    return {
        "device": {k: cuda.get(k) for k in keys} if cuda.get("available") else None,
        "versions": {
            "python": f.get("python"),
            "taylorprune": f.get("taylorprune"),
            **(f.get("versions") or {}),
        },
    }


def write_results(s: Session, result: dict[str, Any]) -> None:
    result["duration_s"] = time.monotonic() - s.start
    failed = [n for n, p in result["parts"].items() if p["status"] == "failed"]
    result["failed_parts"], result["ok"] = failed, not failed
    write_atomic(s.out / "gpu_check.json", json.dumps(result, indent=1, default=str) + "\n")
    write_atomic(s.out / "gpu_check.md", markdown(result))


def orchestrate(args: argparse.Namespace, argv: list[str]) -> int:
    s = Session(args)
    result: dict[str, Any] = {
        "tool": "tools/gpu_check.py",
        "mode": "cpu-smoke" if s.smoke else "gpu",
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "budget_s": args.budget,
        "command": [sys.executable, __file__, *argv],
        "host": {"machine": platform.machine(), "python": sys.executable},
        "work": str(s.work),
        "parts": {},
    }
    try:
        for name in PARTS:
            env = result["parts"].get("env")
            if name != "env" and name not in args.parts:
                part = PartResult(status="skipped", reason="not selected (--parts)")
            elif name != "env" and env["status"] == "failed":
                part = PartResult(status="failed", reason=f"not run: env failed ({env['reason']})")
            else:
                print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
                part = run_part(s, name)
            result["parts"][name] = asdict(part)
            if name == "env":
                result.update(_summary(part))
            print(f"gpu_check: {name} {part.status}" + (f": {part.reason}" if part.reason else ""),
                  file=sys.stderr, flush=True)  # fmt: skip
            write_results(s, result)
    finally:
        result["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        write_results(s, result)
        if args.work is None and not args.keep_work:
            shutil.rmtree(s.work, ignore_errors=True)
    print((s.out / "gpu_check.md").read_text(), end="")
    return 0 if result["ok"] else 1


# -- workers (subprocesses; they import torch, the orchestrator does not) --------------------------
PACKAGES = {  # distribution: module
    "torch": "torch",
    "torchvision": "torchvision",
    "torch-pruning": "torch_pruning",
    "fvcore": "fvcore",
    "timm": "timm",
    "pydantic": "pydantic",
    "PyYAML": "yaml",
    "numpy": "numpy",
    "scipy": "scipy",
    "scikit-learn": "sklearn",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "pytest": "pytest",
    "hypothesis": "hypothesis",
}


def env_worker(_args: argparse.Namespace) -> int:
    """Print one JSON object: versions, import errors, CPUs, /dev/shm, the CUDA device."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
    versions, errors = {}, {}
    for dist, module in PACKAGES.items():
        try:
            importlib.import_module(module)
            versions[dist] = version(dist)
        except (ImportError, PackageNotFoundError, RuntimeError, OSError) as exc:
            errors[dist] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
    try:
        import taylorprune

        info["taylorprune"] = taylorprune.__version__
        info["taylorprune_path"] = str(Path(taylorprune.__file__).parent)
    except Exception as exc:
        errors["taylorprune"] = f"{type(exc).__name__}: {exc}"[:300]
    info.update(versions=versions, import_errors=errors, platform=platform.platform())
    info["cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    try:
        st = os.statvfs("/dev/shm")
        info["shm_free_bytes"] = st.f_bavail * st.f_frsize
    except OSError:
        info["shm_free_bytes"] = 0
    info["cuda"] = _cuda_info() if "torch" in versions else {"available": False, "ok": False}
    print(json.dumps(info, default=str))
    return 0


def _cuda_info() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"available": torch.cuda.is_available(), "ok": False}
    out["cuda_version"] = torch.version.cuda
    if not out["available"]:
        return out
    props = torch.cuda.get_device_properties(0)
    out.update(
        count=torch.cuda.device_count(),
        name=torch.cuda.get_device_name(0),
        capability=list(torch.cuda.get_device_capability(0)),
        memory_gib=props.total_memory / 2**30,
        cudnn=torch.backends.cudnn.version(),
        cudnn_benchmark=torch.backends.cudnn.benchmark,
    )
    # What the pipeline does on every step: fp16 autocast, channels_last, forward and backward.
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 64, 56, 56, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.float16):
        y = conv(x)
    y.float().square().mean().backward()
    torch.cuda.synchronize()
    out["ok"] = bool(y.dtype == torch.float16 and torch.isfinite(conv.weight.grad).all())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        out["nvidia_smi"] = smi.stdout.strip()
    return out


def plain_loop_worker(args: argparse.Namespace) -> int:
    """Time a plain training loop on the recipe's unpruned model (and on ``--pruned``): the same
    data, batch, amp, layout and optimiser as the recipe's fine-tuning; write ``--json``."""
    import torch
    from torch.utils.data import DataLoader

    from taylorprune.data import build_data
    from taylorprune.models import build_model
    from taylorprune.pipeline.context import model_spec, resolve_device
    from taylorprune.recipe import load_recipe
    from taylorprune.serialization import load_pruned

    recipe = load_recipe(args.recipe, args.set)
    d, ft = recipe.data, recipe.finetune
    device = resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)
    bundle = build_data(
        d.name, root=d.root, batch_size=d.batch_size, workers=0, seed=recipe.seed,
        input_size=d.input_size, augment=d.augment, **d.kwargs,
    )  # fmt: skip
    # What torchvision's reference training script does: pinned memory, non-blocking copies.
    loader = DataLoader(
        bundle.train.dataset,
        batch_size=d.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=d.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(recipe.seed),
    )
    iters = len(loader) if ft.max_iters is None else min(len(loader), ft.max_iters)
    models = {"unpruned": lambda: build_model(model_spec(recipe.model.model_dump(), bundle))}
    if args.pruned is not None and args.pruned.is_file():
        models["pruned"] = lambda: load_pruned(args.pruned)
    out: dict[str, Any] = {
        "device": str(device),
        "batch": d.batch_size,
        "iters": iters,
        "workers": d.workers,
        "amp": ft.amp,
        "channels_last": ft.channels_last,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    for name, build in models.items():
        out[name] = _time_plain(build(), loader, iters, device, ft, args.warmup, args.resident)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write_atomic(args.json, json.dumps(out, indent=1))
    return 0


def _time_plain(model, loader, iters, device, ft, warmup: int, resident: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from taylorprune.train import AMP_DTYPES

    model.to(device).train()
    if ft.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type) if ft.amp == "fp16" else None
    losses: list[float] = []

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if ft.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device.type, dtype=AMP_DTYPES[ft.amp])
            if ft.amp
            else contextlib.nullcontext()
        )
        with autocast:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        losses.append(loss.item())  # per step, as the reference script logs it

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    x0, y0 = next(iter(loader))
    for _ in range(warmup):  # CUDA context, kernels, allocator: warm as after pruning
        step(x0, y0)
    sync()
    t0 = time.perf_counter()  # an epoch: the loader's iterator (workers) starts inside it
    n = seen = 0
    for x, y in loader:
        if n == iters:
            break
        step(x, y)
        n, seen = n + 1, seen + y.shape[0]
    sync()
    epoch_s = time.perf_counter() - t0
    xg, yg = x0.to(device), y0.to(device)
    sync()
    t0 = time.perf_counter()
    for _ in range(resident):  # the same batch already on the device: compute alone
        step(xg, yg)
    sync()
    resident_s = time.perf_counter() - t0
    return {
        "iters": n,
        "samples": seen,
        "epoch_s": epoch_s,
        "samples_per_s": seen / epoch_s,
        "resident_iters": resident,
        "resident_samples_per_s": resident * x0.shape[0] / resident_s if resident else None,
        "losses_finite": all(math.isfinite(v) for v in losses),
    }


WORKERS = {"env": env_worker, "plain-loop": plain_loop_worker}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return WORKERS[args.worker](args)
    return orchestrate(args, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    cli.run(main)
