"""Bad input and hostile strings, from the user's side: one line and the right exit code, escaped reports, disk full."""

from __future__ import annotations

import contextlib
import json
import re
import resource
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

torch = pytest.importorskip("torch")
import psutil  # noqa: E402 - imported once here: pytester drops modules first imported inside a run
import transformers  # noqa: E402,F401

from pytest_qxai.cli import main  # noqa: E402
from pytest_qxai.errors import QxaiUsageError  # noqa: E402
from pytest_qxai.gate.check import CheckResult  # noqa: E402
from pytest_qxai.models.loading import load_tokenizer  # noqa: E402
from pytest_qxai.models.pair import check_memory  # noqa: E402
from pytest_qxai.options import QxaiConfig, is_ci  # noqa: E402
from pytest_qxai.report import build_report, write_reports  # noqa: E402
from pytest_qxai.specs import parse_spec  # noqa: E402
from tiny import build_tiny_model  # noqa: E402

MARKUP = "<script>alert(1)</script> <img src=x onerror=alert(2)> `code` *bold* [link](javascript:x) | a & b"


# --- reports: every field escaped --------------------------------------------------------------------------

def _hostile_report() -> dict[str, Any]:
    result = CheckResult(MARKUP, MARKUP, "vs_reference", "fail", MARKUP, reference=0.5, quantized=0.25, delta=-0.25,
                         ci=(-0.3, -0.2), p_value=0.01, n=4, tolerance="abs:0.05", direction="higher",
                         scale="continuous", unit=MARKUP)
    return build_report([result], model=MARKUP, quant=MARKUP, baseline_name=MARKUP,
                        metadata={"model": MARKUP}, notes=[MARKUP])


def test_html_and_markdown_reports_escape_every_field(tmp_path: Path) -> None:
    """Strings from models, files and users never become markup in a report (a report is shared and rendered)."""
    report = _hostile_report()
    report["summary"]["verdict"] = MARKUP  # a report merged from a file someone else wrote
    write_reports(report, md_path=tmp_path / "r.md", html_path=tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<script" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    markdown = (tmp_path / "r.md").read_text()
    for raw in ("<script>", "<img", "`code`", "*bold*", "[link]", "| a &"):
        assert not re.search(r"(?<!\\)" + re.escape(raw), markdown), raw
    assert r"\<script\>alert(1)\</script\>" in markdown


def test_blame_lines_and_terminal_tables_keep_names_literal(tmp_path: Path) -> None:
    """The blame section's reason was written raw into Markdown, and rich read "acc[en]" in a check's name as
    markup: it printed "acc" (and "x[/y]" raised)."""
    from pytest_qxai.report.blame import blame_markdown
    from pytest_qxai.report.text import table_lines

    blame = {"check": "s.m", "status": "skipped", "reason": MARKUP}
    markdown = "\n".join(blame_markdown({"blame": [blame]}))
    assert "<script" not in markdown.replace(r"\<script", "") and r"\`code\`" in markdown
    rows = table_lines([CheckResult("s", name, "vs_reference", "pass", "ok") for name in ("acc[en]", "x[/y]")])
    assert any("acc[en]" in row for row in rows) and any("x[/y]" in row for row in rows)


def test_an_html_report_plots_names_with_dollar_signs_as_text(tmp_path: Path) -> None:
    """matplotlib read "a$x^{$b" as mathtext and raised, and the HTML report was not written."""
    result = CheckResult("s", "a$x^{$b", "vs_reference", "fail", "r", reference=0.5, quantized=0.25, delta=-0.25,
                         ci=(-0.3, -0.2), p_value=0.01, n=4, tolerance="abs:0.05", direction="higher",
                         scale="continuous")
    write_reports(build_report([result], model="m", quant="q", baseline_name="b", metadata={}, notes=[]),
                  html_path=tmp_path / "r.html")
    assert "a$x^{$b" in (tmp_path / "r.html").read_text()


def test_qxai_merge_of_a_hostile_report_writes_escaped_files(tmp_path: Path) -> None:
    (tmp_path / "shard.json").write_text(json.dumps(_hostile_report()))
    assert main(["merge", str(tmp_path / "out.json"), str(tmp_path / "shard.json"), "--html",
                 str(tmp_path / "out.html"), "--md", str(tmp_path / "out.md")]) == 1
    assert "<script" not in (tmp_path / "out.html").read_text()
    assert not re.search(r"(?<!\\)<script", (tmp_path / "out.md").read_text())


# --- qxai: unreadable or malformed input is exit 2, one line ---------------------------------------------------

@pytest.mark.parametrize("content", [
    '{"schema": "pytest-qxai/report/1", "checks": [{"x": 1}]}',
    '{"schema": "pytest-qxai/report/1", "checks": "zz"}',
    '{"schema": "pytest-qxai/report/1", "model": "m", "checks": [], "metadata": []}',
    '{"schema": "pytest-qxai/baseline/1", "model": "m", "checks": {"a.b": {"items": {}}}, "runs": {}}',
    '{"schema": "pytest-qxai/report/1", "checks": [{"suite": "s", "metric": "m", "kind": "vs_reference", '
    '"verdict": "pass", "reason": "", "tolerance": "not a band"}]}',
    "not json", "\xff\xfe",
])
@pytest.mark.parametrize("command", ["show", "compare", "merge"])
def test_qxai_exits_2_with_one_line_on_malformed_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       content: str, command: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    argv = {"show": ["show", str(bad)], "compare": ["compare", str(bad), str(bad)],
            "merge": ["merge", str(tmp_path / "out.json"), str(bad)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qxai: ") and err.count("\n") == 1 and "bad.json" in err, err


# --- options ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "seed"), [(("--qxai-seed", "0"), 0), (("--qxai-seed=3",), 3), ((), 7)])
def test_an_explicit_command_line_value_beats_the_ini_even_when_zero(pytester: pytest.Pytester, argv: tuple[str, ...],
                                                                     seed: int) -> None:
    pytester.makeini("[pytest]\nqxai_seed = 7\nqxai_samples = 10\n")
    assert QxaiConfig.from_pytest(pytester.parseconfig(*argv)).seed == seed


def test_samples_zero_on_the_command_line_is_not_replaced_by_the_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nqxai_samples = 10\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--qxai-samples", "0", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qxai-samples must be at least 2, got 0*"])


@pytest.mark.parametrize(("value", "ci"), [("true", True), ("1", True), ("yes", True), ("woodpecker", True),
                                           ("false", False), ("False", False), ("0", False), ("", False),
                                           ("no", False), ("off", False), (None, False)])
def test_ci_follows_the_usual_truthy_rule(monkeypatch: pytest.MonkeyPatch, value: str | None, ci: bool) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert is_ci() is ci


# --- the bad-input catalogue ---------------------------------------------------------------------------------

def test_cuda_without_a_gpu_is_a_usage_error_before_loading(pytester: pytest.Pytester) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    pytester.makepyfile("def test_x(qxai_pair): pass")
    result = pytester.runpytest_subprocess("--qxai-device=cuda", "--quant=none", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qxai-device cuda: no CUDA GPU is visible on this machine*"])


def test_a_gpu_index_past_the_visible_ones_is_a_usage_error_before_loading(
    make_config: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``cuda:3`` on a one-GPU machine was refused only at the first model load: every test failed, exit 1."""
    from pytest_qxai.models.pair import validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(QxaiUsageError, match=r"--qxai-device cuda:3: only 1 GPU\(s\) visible"):
        validate(make_config(device="cuda:3", quant=parse_spec("none")))


def test_an_unknown_metric_in_a_tolerance_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """A typo in a command-line band is exit 4 (known: built-in suites' metrics, even when not collected)."""
    pytester.makepyfile("""
        from pytest_qxai.metrics import Metric, register_metric
        SIM = register_metric(Metric("mysuite", "similarity", "how similar", "continuous", tolerance="abs:0.05"))
        def test_x(qxai_check):
            qxai_check(SIM, reference=[0.5, 0.6], quantized=[0.5, 0.6])
    """)
    result = pytester.runpytest_subprocess("--qxai-tolerance=similarty=abs:0.1", "--qxai-tolerance=nle.rouge_l=abs:1",
                                           "-p", "no:cacheprovider", "--qxai-report-json=r.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*--qxai-tolerance names no known metric: similarty*"])
    summary = json.loads((pytester.path / "r.json").read_text())["summary"]  # the report says it too (said pass)
    assert summary["verdict"] == "error" and "names no known metric: similarty" in summary["errors"][0]
    assert pytester.runpytest_subprocess("--qxai-tolerance=similarity=abs:0.1", "--qxai-update-baselines",
                                         "-p", "no:cacheprovider").ret == 0


def test_samples_beyond_the_data_say_so(tmp_path: Path) -> None:
    from pytest_qxai.datasets import load_esnli

    every = load_esnli(None, 0)
    with pytest.warns(UserWarning, match=rf"{len(every) + 5} items asked for .* e-SNLI .* has {len(every)}: "
                                         rf"using all {len(every)}"):
        assert len(load_esnli(len(every) + 5, 0)) == len(every)


def test_a_tokenizer_without_pad_and_eos_is_one_line(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(pad_token=None, eos_token=None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special = folder / "special_tokens_map.json"
    if special.exists():
        special.write_text("{}")
    with pytest.raises(QxaiUsageError, match="has neither a pad token nor an eos token"):
        load_tokenizer(folder, revision=None, trust_remote_code=False)


def test_a_model_larger_than_the_memory_is_refused_before_loading(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_tiny_model(tmp_path)
    check_memory(folder, torch.float32, "cpu")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 1024})())
    with pytest.raises(QxaiUsageError, match=r"the model needs .* of memory for its [\d,]+ parameters in float32, "
                                             r"and 1.0 KiB is available"):
        check_memory(folder, torch.float32, "cpu")


def test_a_baseline_of_another_profile_is_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        from pytest_qxai.metrics import Metric, register_metric
        SIM = register_metric(Metric("mysuite", "similarity", "how similar", "continuous", tolerance="abs:0.05"))
        def test_x(qxai_check):
            qxai_check(SIM, reference=[0.5, 0.6, 0.7], quantized=[0.5, 0.6, 0.7], item_ids=list("abc"))
    """)
    args = ["-p", "no:cacheprovider", "--qxai-baseline-name=shared", "-rA"]
    assert pytester.runpytest_subprocess(*args, "--qxai-profile=smoke", "--qxai-update-baselines").ret == 0
    result = pytester.runpytest_subprocess(*args, "--qxai-profile=full", "--qxai-report-json=r.json")
    reasons = [c["reason"] for c in json.loads((pytester.path / "r.json").read_text())["checks"]
               if c["kind"] == "vs_baseline"]
    assert reasons and all("baseline recorded at profile smoke, this run at full" in r for r in reasons), reasons
    assert result.ret == 0


# --- disk full -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _small_folder(path: Path) -> Iterator[Callable[[], None] | None]:
    """A 64 KiB tmpfs at ``path`` (needs root and mount); yields a function that fills it, or None without mount."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                             capture_output=True).returncode == 0

    def fill() -> None:
        with contextlib.suppress(OSError), open(path / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 1024)
                handle.flush()

    try:
        yield fill if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)


GATED_FILE = """
from pytest_qxai.metrics import Metric, register_metric
SIM = register_metric(Metric("mysuite", "similarity", "how similar", "continuous", tolerance="abs:0.05"))
def test_x(qxai_check):
    qxai_check(SIM, reference=[0.5, 0.6, 0.7, 0.8], quantized=VALUES, item_ids=list("abcd"))
"""


def test_disk_full_during_baseline_and_report_writes(pytester: pytest.Pytester) -> None:
    """Nothing half-written, one line each: the old baseline stays byte for byte, no report or temporary file is left.

    Uses a size-limited tmpfs when this machine lets the tests mount one; else the same run under a file-size
    limit (writes fail with EFBIG instead of ENOSPC).
    """
    folder = pytester.path / f"small-{uuid.uuid4().hex[:6]}"
    with _small_folder(folder) as fill:
        args = ["-p", "no:cacheprovider", f"--qxai-baseline-dir={folder}"]
        pytester.makepyfile(test_gate=GATED_FILE.replace("VALUES", "[0.5, 0.6, 0.7, 0.8]"))
        assert pytester.runpytest_subprocess(*args, "--qxai-update-baselines").ret == 0
        [baseline] = folder.rglob("*.json")
        before = baseline.read_bytes()
        pytester.makepyfile(test_gate=GATED_FILE.replace("VALUES", "[0.5, 0.6, 0.7, 0.7]"))
        report = folder / "report.json"
        command = [sys.executable, "-m", "pytest", *args, "--qxai-update-baselines", f"--qxai-report-json={report}"]
        if fill is not None:
            fill()
            result = subprocess.run(command, cwd=pytester.path, capture_output=True, text=True)
            reason = "No space left on device"
        else:
            def limit() -> None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) - 1, len(before) - 1))

            result = subprocess.run(command, cwd=pytester.path, capture_output=True, text=True, preexec_fn=limit)
            reason = "File too large"
        assert result.returncode == 1, result.stdout[-3000:]
        lines = result.stdout.splitlines()
        assert any(f"qxai baseline not written: {reason} (" in line for line in lines), result.stdout
        assert any(f"qxai report not written: {reason} (" in line for line in lines), result.stdout
        assert baseline.read_bytes() == before
        assert not report.exists() and not list(folder.rglob("*.tmp"))
        assert "Traceback" not in result.stdout + result.stderr
