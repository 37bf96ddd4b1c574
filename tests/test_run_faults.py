"""``taylorprune run`` against bad output folders and faults: one line, exit code 2, nothing
written, nothing trained, nothing lost; files written with the user's umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import taylorprune.pipeline.context as context_mod
from taylorprune._io import is_temporary
from taylorprune.cli import main
from taylorprune.errors import UserError
from taylorprune.pipeline import outdir

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes/tiny/quickstart.yaml")
QUIET = ["--set", "measure.latency=false", "--set", "threads=1"]
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def _run(out: Path | str, *extra: str, plots: bool = False) -> int:
    plot = [] if plots else ["--no-plots"]
    return main(["--quiet", "run", *plot, RECIPE, "-o", str(out), *QUIET, *extra])


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run gets as far as training anything."""

    def trained(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(context_mod, "fit", trained)


# -- output folders that cannot be written --------------------------------------------------------
def test_output_below_a_regular_file(tmp_path, capsys, no_training):
    (tmp_path / "file").write_text("x")
    assert _run(tmp_path / "file" / "run") == 2
    assert "is a file, not a folder" in _one_line(capsys)
    assert _tree(tmp_path) == ["file"]


def test_a_folder_name_longer_than_the_file_system_allows(tmp_path, capsys, no_training):
    assert _run(tmp_path / ("a" * 300) / "run") == 2
    assert "folder name of 300 bytes" in _one_line(capsys)
    assert _tree(tmp_path) == []


def test_a_path_longer_than_the_file_system_allows(tmp_path, capsys, no_training):
    out = tmp_path.joinpath(*["b" * 100] * 50)  # about 5,000 characters
    assert _run(out) == 2
    assert "too long for this file system" in _one_line(capsys)
    assert _tree(tmp_path) == []


def test_output_under_proc(capsys, no_training):
    assert _run("/proc/taylorprune-test/run") == 2
    line = _one_line(capsys)
    assert "/proc/taylorprune-test/run" in line
    assert not Path("/proc/taylorprune-test").exists()


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders")
def test_output_inside_a_read_only_folder(tmp_path, capsys, no_training):
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o555)
    try:
        assert _run(parent / "run") == 2
        assert "not writable" in _one_line(capsys)
        assert _tree(parent) == []
    finally:
        parent.chmod(0o755)


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders")
def test_output_folder_itself_read_only(tmp_path, capsys, no_training):
    out = tmp_path / "run"
    out.mkdir(mode=0o555)
    try:
        assert _run(out) == 2
        assert "output folder is not writable" in _one_line(capsys)
        assert _tree(out) == []
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("which", ["parent", "itself"])
def test_read_only_folders_as_the_permission_check_sees_them(
    which, tmp_path, capsys, monkeypatch, no_training
):
    """The same two cases where the tests run as root: the check is what reports them."""
    out = tmp_path / "run"
    denied = tmp_path if which == "parent" else out
    if which == "itself":
        out.mkdir()
    real = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == denied and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(outdir.os, "access", access)
    assert _run(out) == 2
    assert "not writable" in _one_line(capsys)
    assert _tree(tmp_path) == ([] if which == "parent" else ["run"])


# -- settings a later phase needs are checked before any work -------------------------------------
def test_latency_batch_that_cannot_fit_fails_before_training(tmp_path, capsys, no_training):
    out = tmp_path / "run"
    code = _run(
        out, "--set", "measure.latency=true", "--set", "measure.latency_batch_size=1000000000"
    )
    assert code == 2
    line = _one_line(capsys)
    assert "measure.latency_batch_size" in line and "1000000000" in line
    assert not out.exists()


# -- two runs, one folder -------------------------------------------------------------------------
def test_a_second_run_on_a_locked_folder_is_refused(tmp_path, capsys, no_training):
    out = tmp_path / "run"
    with outdir.locked(out):  # another run holds the folder
        assert _run(out) == 2
        assert "in use by another taylorprune run" in _one_line(capsys)
        assert _tree(out) == [outdir.LOCK_FILE]
    assert _tree(tmp_path) == ["run"]  # the lock is gone with its holder


# -- leftovers of a run killed while it wrote its recipe ------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--resume"]], ids=["rerun", "resume"])
def test_a_folder_holding_only_a_temporary_file_is_not_a_run(mode, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".recipe.yaml.k2j4x8qz.tmp").write_text("name: half")
    assert _run(out, *mode) == 0
    assert (out / "report.json").is_file()
    assert not [p for p in out.iterdir() if is_temporary(p.name)]


def test_resume_of_a_folder_that_does_not_exist(tmp_path, capsys, no_training):
    assert _run(tmp_path / "never", "--resume") == 2
    assert "no run to resume" in _one_line(capsys)
    assert not (tmp_path / "never").exists()


# -- failures during a run ------------------------------------------------------------------------
@pytest.mark.slow
def test_overwrite_by_a_run_that_fails_leaves_no_old_results(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert _run(out) == 0
    assert (out / "report.json").is_file() and (out / "model.pt").is_file()

    fit = context_mod.RunContext.fit

    def broken(self, phase, *args, **kwargs):
        if phase == "finetune":
            raise UserError("data/train/07.png: cannot read image (truncated file)")
        return fit(self, phase, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(context_mod.RunContext, "fit", broken)
        capsys.readouterr()
        assert _run(out, "--overwrite", "--set", "seed=3") == 2
    assert "cannot read image" in _one_line(capsys)
    for name in ("report.json", "report.md", "metrics.csv", "model.pt"):
        assert not (out / name).exists(), name
    assert "seed: 3" in (out / "recipe.yaml").read_text()
    # the failed run's own checkpoints are kept: it continues once the data is fixed
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["tag"] == "finetune-000"
    assert _run(out, "--set", "seed=3", "--resume") == 0
    assert json.loads((out / "report.json").read_text())["finetuned"]["top1"] >= 0


@pytest.mark.slow
def test_run_files_follow_the_umask(tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        assert _run(out, "--set", "measure.latency=true", plots=True) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"recipe.yaml", "report.json", "report.md", "metrics.csv", "model.pt"} <= names
    assert any(p.parent.name == "checkpoints" for p in files)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE((out / "checkpoints").stat().st_mode) == 0o750


@pytest.mark.parametrize("limit_kib", [1, 100])
def test_a_file_size_limit_while_writing_is_one_line_and_no_partial_file(tmp_path, limit_kib):
    """``ulimit -f`` (a file size limit: what a full disk looks like to torch's zip writer, which
    raises RuntimeError, not OSError): exit 2, one line naming the file, no temporary file. 1 KiB
    stops the resolved recipe (a text file), 100 KiB the first checkpoint's model (torch.save).
    The run is a process of its own (forked), so that the limit binds it alone."""
    import resource

    from _forked import run_forked

    out = tmp_path / "run"
    sets = ["--set", "baseline.train.max_iters=1"]  # the first checkpoint after one minibatch

    def limited_run() -> int:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib * 1024, resource.RLIM_INFINITY))
        return _run(out, *sets)

    code = run_forked(limited_run, tmp_path / "stderr")
    stderr = (tmp_path / "stderr").read_text()
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("taylorprune: error: ") and ": cannot write: " in lines[0]
    written = Path(lines[0].removeprefix("taylorprune: error: ").split(": cannot write:")[0])
    assert written.is_relative_to(out) and not written.exists()
    assert written.suffix == (".yaml" if limit_kib == 1 else ".pt"), written
    assert not [p for p in out.rglob("*") if is_temporary(p.name)]
