"""Hardening: the bad-input catalogue (one exact line each), interrupted writes, corrupt cache entries, determinism.

Every case of ``docs/bad-input.md`` that no other test pins to its exact message is asserted here, at the
function the plugin calls (the plugin turns any :class:`QxaiError` raised while it configures into one
``ERROR:`` line and exit code 4; ``tests/test_plugin_options.py`` checks that path end to end, and
:func:`test_new_usage_errors_are_one_line_exit_4` repeats it for the cases added with this file).
Faults are simulated by making the write raise ``KeyboardInterrupt`` at each step, and by signalling a
process that is stuck in the middle of a baseline write.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import scipy.stats  # noqa: F401 - imported once here: pytester drops modules first imported inside a run
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qxai import storage
from pytest_qxai.backends.base import require_library
from pytest_qxai.baselines import BaselineStore
from pytest_qxai.errors import ArchitectureError, BaselineError, QxaiUsageError
from pytest_qxai.gate.check import check_vs_reference
from pytest_qxai.gate.tolerance import parse_tolerance
from pytest_qxai.metrics import Metric
from pytest_qxai.models.pair import validate
from pytest_qxai.models.source import resolve_source
from pytest_qxai.options import QxaiConfig, check_baseline_name
from pytest_qxai.session import QxaiSession
from pytest_qxai.specs import SCHEMES, parse_spec
from pytest_qxai.storage import DiskCache, atomic_write

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SIM = Metric("hard", "similarity", "cosine", "continuous", tolerance="abs:0.05")
ALL_SCHEMES = ", ".join(SCHEMES)
SAFE_NAME_HINT = "use letters, digits, '.', '_', '+', '-' (no path separators, no '..')"


def one_line(exc: BaseException, expected: str) -> None:
    """The message is exactly ``expected`` and a single line."""
    assert str(exc) == expected
    assert "\n" not in str(exc) and "\r" not in str(exc)


def fake_model_folder(folder: Path, config: dict[str, Any] | None = None) -> Path:
    """A folder that resolves as a local HF model (only ``config.json`` is looked at before loading)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config if config is not None else {"model_type": "llama"}))
    return folder


# --- catalogue: --quant ------------------------------------------------------------------------------------

SPEC_CASES = [
    ("gptq3", f"unknown --quant scheme gptq3; choose one of: {ALL_SCHEMES}"),
    ("GPTQ 4", f"unknown --quant scheme 'gptq 4'; choose one of: {ALL_SCHEMES}"),
    ("", f"--quant is empty; choose one of: {ALL_SCHEMES}"),
    ("gptq4:", "--quant gptq4: nothing after ':'; write gptq4:key=value[,key=value]"),
    ("gptq4:group_size", "--quant gptq4: malformed parameter 'group_size'; write key=value"),
    ("gptq4:=3", "--quant gptq4: malformed parameter '=3'; write key=value"),
    ("gptq4:group_size=abc", "--quant gptq4: parameter 'group_size' expects int, got 'abc'"),
    ("bnb8:threshold=nan", "--quant bnb8: parameter 'threshold' expects float, got 'nan'"),
    ("bnb4:double_quant=maybe", "--quant bnb4: parameter 'double_quant' expects bool, got 'maybe'"),
    ("gptq4:bits=3", "--quant gptq4: unknown parameter 'bits'; valid parameters: group_size, calibration, seed, "
                     "desc_act, damp"),
    ("quanto-int4:group_size=64", "--quant quanto-int4: unknown parameter 'group_size'; valid parameters: keep"),
    ("gptq4:seed=1,seed=2", "--quant gptq4: parameter 'seed' given twice"),
]


@pytest.mark.parametrize(("text", "message"), SPEC_CASES, ids=[c[0] or "empty" for c in SPEC_CASES])
def test_quant_spec_messages_are_exact(text: str, message: str) -> None:
    with pytest.raises(QxaiUsageError) as info:
        parse_spec(text)
    one_line(info.value, message)


# --- catalogue: backend library, GPU-only schemes, --qxai-quantized ------------------------------------------

@pytest.fixture
def hide_modules(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make ``find_spec`` report the named top-level modules as not installed."""

    def hide(*tops: str) -> None:
        real = importlib.util.find_spec

        def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
            return None if name.split(".")[0] in tops else real(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return hide


@pytest.mark.parametrize(
    ("scheme", "module", "message"),
    [
        ("hqq4", "hqq", "--quant hqq4 needs the 'hqq' library: pip install 'pytest-qxai[hqq]'"),
        ("gptq4", "gptqmodel", "--quant gptq4 needs the 'gptqmodel' library: pip install 'pytest-qxai[gptq]'"),
        ("bnb4", "bitsandbytes", "--quant bnb4 needs the 'bitsandbytes' library: pip install 'pytest-qxai[bnb]'"),
        ("quanto-int8", "optimum", "--quant quanto-int8 needs the 'optimum' library: "
                                   "pip install 'pytest-qxai[quanto]'"),
        ("torchao-int8", "torchao", "--quant torchao-int8 needs the 'torchao' library: "
                                    "pip install 'pytest-qxai[torchao]'"),
    ],
)
def test_missing_backend_library_names_the_extra(
    hide_modules: Callable[..., None], scheme: str, module: str, message: str
) -> None:
    hide_modules(module)
    with pytest.raises(QxaiUsageError) as info:
        require_library(SCHEMES[scheme])
    one_line(info.value, message)


def test_gpu_only_scheme_on_cpu(make_config: Callable[..., QxaiConfig], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(fake_model_folder(tmp_path / "m"))
    cfg = make_config(model=model, quant=parse_spec("torchao-int4"), device="cpu")
    with pytest.raises(QxaiUsageError) as info:
        validate(cfg)
    one_line(info.value, "--quant torchao-int4 needs a CUDA GPU, but --qxai-device is cpu")

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(QxaiUsageError) as info:
        validate(dataclasses.replace(cfg, device="auto"))
    one_line(info.value, "--quant torchao-int4 needs a CUDA GPU and none is visible on this machine")


QUANTIZED_CASES: list[tuple[str, Any, str]] = [
    ("full-precision", {"model_type": "llama"},
     "--qxai-quantized {q}: not a quantized checkpoint (config.json has no quantization_config)"),
    ("absent", None, "--qxai-quantized {q}: no such file or folder"),
    ("no-config", "folder", "--qxai-quantized {q}: no config.json in the folder"),
    ("bad-config", "{not json",
     "--qxai-quantized {q}: config.json is unreadable (Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1))"),
    ("unsupported", {"quantization_config": {"quant_method": "exl2"}},
     "--qxai-quantized {q}: unsupported quant_method 'exl2' (supported: gptq, awq, bitsandbytes, compressed-tensors)"),
    ("bnb-neither", {"quantization_config": {"quant_method": "bitsandbytes"}},
     "--qxai-quantized {q}: bitsandbytes config is neither load_in_8bit nor load_in_4bit"),
    ("compressed-tensors", {"quantization_config": {"quant_method": "compressed-tensors"}},
     "--qxai-quantized {q}: a compressed-tensors checkpoint needs the 'compressed-tensors' package: "
     "pip install compressed-tensors"),
]


@pytest.mark.parametrize(("case", "content", "message"), QUANTIZED_CASES, ids=[c[0] for c in QUANTIZED_CASES])
def test_quantized_checkpoint_messages(make_config: Callable[..., QxaiConfig], tmp_path: Path,
                                       hide_modules: Callable[..., None], case: str, content: Any,
                                       message: str) -> None:
    hide_modules("compressed_tensors")
    quantized = tmp_path / "q"
    if content == "folder":
        quantized.mkdir()
    elif isinstance(content, str):
        quantized.mkdir()
        (quantized / "config.json").write_text(content)
    elif content is not None:
        fake_model_folder(quantized, content)
    cfg = make_config(model=str(fake_model_folder(tmp_path / "m")), quantized=str(quantized))
    with pytest.raises(QxaiUsageError) as info:
        validate(cfg)
    one_line(info.value, message.format(q=quantized))


def test_quantized_checkpoint_without_its_library(make_config: Callable[..., QxaiConfig], tmp_path: Path,
                                                  hide_modules: Callable[..., None]) -> None:
    """The message names the option the user gave (``--qxai-quantized``) and the extra to install."""
    hide_modules("gptqmodel")
    quantized = fake_model_folder(tmp_path / "q", {"quantization_config": {"quant_method": "awq", "bits": 4}})
    cfg = make_config(model=str(fake_model_folder(tmp_path / "m")), quantized=str(quantized))
    with pytest.raises(QxaiUsageError) as info:
        validate(cfg)
    one_line(info.value, f"--qxai-quantized {quantized} needs the 'gptqmodel' library: pip install 'pytest-qxai[gptq]'")


# --- catalogue: --qxai-model ---------------------------------------------------------------------------------

MODEL_CASES = [
    ("./no/such/model", "--qxai-model ./no/such/model: no such file or folder"),
    ("weights.gguf", "--qxai-model weights.gguf: no such file or folder"),
    ("~no-such-user-qxai/model", "--qxai-model ~no-such-user-qxai/model: no such file or folder"),
    ("empty", "--qxai-model empty: the folder is not a model (no config.json and no .gguf file)"),
    ("two-gguf", "--qxai-model two-gguf: the folder holds several GGUF files (a.gguf, b.gguf); name one"),
    ("weights.bin", "--qxai-model weights.bin: a file must be a .gguf model; give the folder of an HF model"),
    ("x" * 300, f"--qxai-model {'x' * 300}: cannot be used as a path (File name too long)"),
    ("org/a..b", "--qxai-model org/a..b: not a valid Hugging Face repo id (Cannot have -- or .. in repo_id: "
                 "'org/a..b'.)"),
]


@pytest.mark.parametrize(("model", "message"), MODEL_CASES, ids=[c[0][:20] for c in MODEL_CASES])
def test_model_source_messages_are_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str,
                                         message: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "two-gguf").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two-gguf" / name).write_bytes(b"GGUF")
    (tmp_path / "weights.bin").write_bytes(b"not a model")
    with pytest.raises(QxaiUsageError) as info:
        resolve_source(model)
    one_line(info.value, message)


# --- catalogue: architecture the probes do not know -----------------------------------------------------------

def test_a_suite_stopped_by_a_qxai_error_reports_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite="""
        import pytest
        from pytest_qxai.errors import ArchitectureError

        @pytest.fixture(scope="module")
        def result():
            raise ArchitectureError("the probes do not know architecture BertForMaskedLM (model_type=bert)")

        def test_probe(result):
            pass
    """)
    run = pytester.runpytest_subprocess()
    run.assert_outcomes(errors=1)
    run.stdout.fnmatch_lines(["*qxai: the probes do not know architecture BertForMaskedLM (model_type=bert)*"])
    assert "Traceback" not in run.stdout.str() and "raise ArchitectureError" not in run.stdout.str()


def test_unknown_architecture_is_one_line() -> None:
    from pytest_qxai.methods.arch import model_parts

    class BertForMaskedLM:
        config = SimpleNamespace(model_type="bert")

    with pytest.raises(ArchitectureError) as info:
        model_parts(BertForMaskedLM())  # type: ignore[arg-type]
    one_line(info.value, "the probes cannot find decoder layers (blocks holding an attention module and an MLP) "
                         "in architecture BertForMaskedLM (model_type=bert)")


# --- catalogue: --qxai-data ------------------------------------------------------------------------------------

NLI_OK = {"id": "a", "premise": "A man sleeps.", "hypothesis": "A person rests.", "label": "entailment",
          "explanations": ["Sleeping is resting."]}

DATA_CASES: list[tuple[str, str, bytes | None, str]] = [
    ("classification-fields", "squad", b"{}",
     "--qxai-data squad: {path}:1: missing field(s) id, text, label (required: id, text, label)"),
    ("missing-file", "esnli", None, "--qxai-data esnli: file not found: {path}"),
    ("folder", "esnli", "folder", "--qxai-data esnli: file not found: {path}"),  # type: ignore[list-item]
    ("empty", "esnli", b"", "--qxai-data esnli: {path}: no items (the file is empty or has only blank lines)"),
    ("blank-lines", "esnli", b"\n  \n\r\n",
     "--qxai-data esnli: {path}: no items (the file is empty or has only blank lines)"),
    ("wrong-fields", "esnli", b'{"id": "a", "premise": "p"}\n',
     "--qxai-data esnli: {path}:1: missing field(s) hypothesis, label (required: id, premise, hypothesis, label)"),
    ("nli-record-in-mcq", "ecqa", json.dumps(NLI_OK).encode(),
     "--qxai-data ecqa: {path}:1: an NLI record (premise, hypothesis) in a file read as multiple-choice data"),
    ("bad-json", "esnli", json.dumps(NLI_OK).encode() + b"\n{oops\n",
     "--qxai-data esnli: {path}:2: invalid JSON: Expecting property name enclosed in double quotes at column 2"),
    ("non-utf8", "esnli", json.dumps(NLI_OK).encode() + b'\n{"id": "\xff"}\n',
     "--qxai-data esnli: {path}:2: not valid UTF-8 (byte 0xff at column 9)"),
    ("bad-relation", "lre", b'{"name": "x"}\n',
     "--qxai-data lre: {path}:1: field 'prompt_templates' must be a list of at least 1 non-empty string(s), "
     "got None"),
]


@pytest.mark.parametrize(("case", "name", "content", "message"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_user_dataset_is_checked_at_start_up(pytester: pytest.Pytester, case: str, name: str,
                                             content: bytes | str | None, message: str) -> None:
    path = pytester.path / "user.jsonl"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    config = pytester.parseconfig(f"--qxai-data={name}={path}")
    with pytest.raises(QxaiUsageError) as info:
        QxaiConfig.from_pytest(config)
    one_line(info.value, message.format(path=path))


def test_valid_user_dataset_with_blank_lines_is_accepted(pytester: pytest.Pytester) -> None:
    path = pytester.path / "user.jsonl"
    path.write_text("\n" + json.dumps(NLI_OK) + "\n\n   \n" + json.dumps({**NLI_OK, "id": "b"}) + "\n")
    config = QxaiConfig.from_pytest(pytester.parseconfig(f"--qxai-data=esnli={path}"))
    assert config.data == {"esnli": path}


def test_unknown_user_in_a_path_option(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig("--qxai-baseline-dir=~no-such-user-qxai/baselines")
    with pytest.raises(QxaiUsageError) as info:
        QxaiConfig.from_pytest(config)
    one_line(info.value, "path '~no-such-user-qxai/baselines': cannot expand '~' (no such user)")


# --- catalogue: baseline files and names ---------------------------------------------------------------------

def recorded(tmp_path: Path, model: str = "org/model") -> BaselineStore:
    """A store with one recorded check."""
    store = BaselineStore(tmp_path, model, "bnb4")
    ref = np.linspace(0.1, 0.9, 12)
    result = check_vs_reference(SIM, parse_tolerance("abs:0.05"), ref, ref - 0.01, [f"i{k}" for k in range(12)],
                                n_resamples=99)
    assert store.update([result], {"seed": 0}, mode="all").written
    return store


BASELINE_CASES: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("truncated", lambda data: data[:40],
     "baseline {path} is not valid JSON (Expecting property name enclosed in double quotes at line 4; truncated?); "
     "restore it from version control or delete it and re-record with --qxai-update-baselines"),
    ("hand-edited", lambda data: data.replace(b"{\n", b"{\n,", 1),
     "baseline {path} is not valid JSON (Expecting property name enclosed in double quotes at line 2; truncated?); "
     "restore it from version control or delete it and re-record with --qxai-update-baselines"),
    ("unknown-schema", lambda data: data.replace(b"pytest-qxai/baseline/1", b"pytest-qxai/baseline/2"),
     "baseline {path} has unknown schema 'pytest-qxai/baseline/2'; this pytest-qxai reads pytest-qxai/baseline/1"),
    ("other-model", lambda data: data.replace(b'"model": "org/model"', b'"model": "org/other"'),
     "baseline {path} was recorded for model 'org/other', not 'org/model'"),
    ("not-utf8", lambda data: b"\xff" + data,
     "baseline {path} is not UTF-8 text; restore it or re-record it"),
    ("malformed", lambda data: data.replace(b'"items": {', b'"items": {"extra": [1], ', 1),
     "baseline {path} is malformed: check 'hard.similarity', item 'extra': expected [reference, quantized] finite numbers or null"),
]


@pytest.mark.parametrize(("case", "damage", "message"), BASELINE_CASES, ids=[c[0] for c in BASELINE_CASES])
def test_damaged_baseline_messages_are_exact(tmp_path: Path, case: str, damage: Callable[[bytes], bytes],
                                             message: str) -> None:
    store = recorded(tmp_path)
    damaged = damage(store.path.read_bytes())
    store.path.write_bytes(damaged)
    with pytest.raises(BaselineError) as info:
        store.load()
    one_line(info.value, message.format(path=store.path))
    with pytest.raises(BaselineError):  # an update refuses to overwrite it, too
        store.update([], {}, mode="all")
    assert store.path.read_bytes() == damaged


def test_baseline_of_another_spec_is_used_and_named(make_config: Callable[..., QxaiConfig]) -> None:
    """``--qxai-baseline-name`` may point at another spec's baseline on purpose; every reason says so."""
    ref = np.linspace(0.1, 0.9, 20)
    first = QxaiSession(make_config(quant=parse_spec("bnb8"), baseline_name="shared", update_baselines="all"),
                        n_resamples=99)
    first.check(SIM, ref, ref - 0.01)
    first.finish()
    second = QxaiSession(make_config(quant=parse_spec("hqq4"), baseline_name="shared"), n_resamples=99)
    results = second.check(SIM, ref, ref - 0.01)
    vs_base = [r for r in results if r.kind != "vs_reference"]
    assert vs_base and all(r.reason.endswith(" (baseline recorded with bnb8, this run hqq4)") for r in vs_base)
    assert all(r.notes["baseline_quant"] == "bnb8" for r in vs_base)


@pytest.mark.parametrize("name", ["../escape", "a/b", "a\\b", "..", ".hidden", "a..b", "", "/abs", "a\x00b"])
def test_unsafe_baseline_names_are_exact(name: str) -> None:
    with pytest.raises(QxaiUsageError) as info:
        check_baseline_name(name)
    one_line(info.value, f"--qxai-baseline-name {name!r} is not a safe file name: {SAFE_NAME_HINT}")


def test_unwritable_baseline_dir_fails_naming_the_file(make_config: Callable[..., QxaiConfig], tmp_path: Path) -> None:
    """A baseline folder below a regular file (chmod cannot block root, a file in the way can)."""
    blocker = tmp_path / "somefile"
    blocker.write_text("")
    session = QxaiSession(make_config(baseline_dir=blocker / "sub"), n_resamples=99)
    ref = np.linspace(0.1, 0.9, 20)
    results = session.check(SIM, ref, ref)
    path = blocker / "sub" / "default" / "bnb4.json"
    vs_base = [r for r in results if r.kind == "vs_baseline"]
    assert [(r.verdict, r.reason) for r in vs_base] == [("fail", f"baseline {path} cannot be read: Not a directory")]
    session.finish()
    assert session.errors == [f"qxai baseline not written: Not a directory ({path})"]
    assert session.exit_failed() and blocker.read_text() == ""


def test_unwritable_report_is_a_summary_error(make_config: Callable[..., QxaiConfig], tmp_path: Path) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("")
    session = QxaiSession(make_config(report_json=blocker / "r.json", ci=True), n_resamples=99)
    ref = np.linspace(0.1, 0.9, 20)
    session.check(SIM, ref, ref)
    session.finish()
    assert session.errors == [f"qxai report not written: File exists ({blocker / 'r.json'})"]
    assert session.exit_failed() and blocker.read_text() == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--qxai-data=esnli=empty.jsonl",), "--qxai-data esnli: {root}/empty.jsonl: no items"),
        (("--qxai-data=squad=empty.jsonl",), "--qxai-data squad: {root}/empty.jsonl: no items"),
        (("--qxai-model=~no-such-user-qxai/m",), "--qxai-model ~no-such-user-qxai/m: no such file or folder"),
        (("--qxai-model=org--x/model",), "--qxai-model org--x/model: not a valid Hugging Face repo id"),
    ],
    ids=["empty-data", "empty-classification-data", "unknown-user", "bad-repo-id"],
)
def test_new_usage_errors_are_one_line_exit_4(pytester: pytest.Pytester, args: tuple[str, ...], message: str) -> None:
    """The cases added with this file take the same path as the others: exit 4, one ERROR line, nothing written."""
    (pytester.path / "empty.jsonl").write_text("")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess(*args, "--qxai-report-json=r.json", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and message.format(root=pytester.path) in errors[0], result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert not (pytester.path / "baselines").exists() and not (pytester.path / "r.json").exists()


# --- faults: interrupted writes -------------------------------------------------------------------------------

def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic_write left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_interrupted_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     step: str) -> None:
    path = tmp_path / "file.json"
    path.write_bytes(b"old content\n")

    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    if step == "write":
        real_fdopen = os.fdopen

        class Torn:
            """A handle that writes half the data, then is interrupted."""

            def __init__(self, fd: int, mode: str) -> None:
                self.handle = real_fdopen(fd, mode)

            def __enter__(self) -> Torn:
                return self

            def __exit__(self, *exc: object) -> None:
                self.handle.close()

            def write(self, data: bytes) -> None:
                self.handle.write(data[: len(data) // 2])
                self.handle.flush()
                raise KeyboardInterrupt

        monkeypatch.setattr(storage.os, "fdopen", Torn)
    else:
        monkeypatch.setattr(storage.os, step, interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, b"new content that is much longer than the old one\n" * 100)
    assert path.read_bytes() == b"old content\n"
    assert leftovers(tmp_path) == []


def test_atomic_write_keeps_permission_bits(tmp_path: Path) -> None:
    """A rewritten file keeps its mode and a new one gets the umask's, not mkstemp's private 0600."""
    path = tmp_path / "shared.json"
    path.write_bytes(b"{}")
    path.chmod(0o664)
    atomic_write(path, b"{}\n")
    assert path.stat().st_mode & 0o777 == 0o664
    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write(tmp_path / "new.json", b"{}")
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_interrupted_baseline_update_keeps_the_old_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = recorded(tmp_path)
    before = store.path.read_bytes()
    ref = np.linspace(0.1, 0.9, 12)
    changed = check_vs_reference(Metric("hard", "other", "", "continuous"), parse_tolerance("abs:0.05"), ref, ref,
                                 [f"i{k}" for k in range(12)], n_resamples=99)

    def interrupt(*args: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(storage.os, "replace", interrupt)
        with pytest.raises(KeyboardInterrupt):
            store.update([changed], {"seed": 1}, mode="all")
    assert store.path.read_bytes() == before
    loaded = store.load()
    assert loaded is not None and set(loaded.checks) == {"hard.similarity"}
    assert leftovers(store.path.parent) == []
    # the lock was released: the next writer is not blocked
    assert store.update([changed], {"seed": 1}, mode="all").written


def test_interrupted_cache_store_keeps_the_old_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = DiskCache(tmp_path)
    cache.store("ns", {"k": 1}, [1, 2, 3])
    path = cache.path_for("ns", {"k": 1})
    assert path is not None
    before = path.read_bytes()
    monkeypatch.setattr(storage.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        cache.store("ns", {"k": 1}, [4, 5, 6])
    assert path.read_bytes() == before and cache.load("ns", {"k": 1}) == (True, [1, 2, 3])
    assert leftovers(path.parent) == []


SLOW_WRITER = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job inherits SIGINT ignored
from pathlib import Path
from pytest_qxai.baselines import BaselineStore
from pytest_qxai.gate.check import CheckResult

root, ready = Path(sys.argv[1]), Path(sys.argv[2])
result = CheckResult("hard", "late", "vs_reference", "pass", "", item_ids=["a", "b"], reference_items=[1.0, 2.0],
                     quantized_items=[1.0, 2.0], n=2)

def stuck(fd):
    ready.write_text(str(os.getpid()))
    time.sleep(120)

os.fsync = stuck
BaselineStore(root, "org/model", "bnb4").update([result], {"seed": 9}, mode="all")
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signalled_writer_leaves_the_previous_baseline(tmp_path: Path, sig: signal.Signals) -> None:
    """A process stopped in the middle of a baseline write: the old file stays; the next writer sweeps up.

    SIGINT unwinds (KeyboardInterrupt) and removes the temporary file itself; SIGTERM kills without
    cleanup, so the stale temporary file is removed by the next update of that baseline.
    """
    store = recorded(tmp_path / "baselines")
    before = store.path.read_bytes()
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(tmp_path / "baselines"), str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, "the writer exited before it started writing"
            assert time.monotonic() < deadline, "the writer never reached the write"
            time.sleep(0.05)
        assert leftovers(store.path.parent)  # the new content is being written next to the old file
        proc.send_signal(sig)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert store.path.read_bytes() == before
    loaded = store.load()
    assert loaded is not None and set(loaded.checks) == {"hard.similarity"}
    if sig == signal.SIGINT:
        assert leftovers(store.path.parent) == []
    store.update([], {}, mode="all")  # the next writer of this baseline (e.g. the next run)
    assert leftovers(store.path.parent) == [] and store.path.read_bytes() == before


# --- faults: corrupt cache entries ----------------------------------------------------------------------------

def _damage(kind: str, blob: bytes) -> bytes:
    header = len(storage._MAGIC)
    if kind == "truncated":
        return blob[: len(blob) - 5]
    if kind == "flipped-payload":
        return blob[:-3] + bytes([blob[-3] ^ 0x01]) + blob[-2:]
    if kind == "flipped-checksum":
        return blob[:header] + bytes([blob[header] ^ 0x01]) + blob[header + 1:]
    if kind == "foreign-header":
        return b"PICKLE\n" + blob[header:]
    if kind == "empty":
        return b""
    assert kind == "unkeyed-checksum"  # what anyone can compute: a sha256 instead of the keyed signature
    payload = storage.encode_entry({"scores": [9.0, 9.0]})
    import hashlib

    return storage._MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload


@pytest.mark.parametrize("kind", ["truncated", "flipped-payload", "flipped-checksum", "foreign-header", "empty",
                                  "unkeyed-checksum"])
@pytest.mark.filterwarnings("ignore::pytest_qxai.storage.CacheWarning")
def test_corrupt_cache_entry_is_removed_and_recomputed(tmp_path: Path, kind: str) -> None:
    cache = DiskCache(tmp_path)
    calls: list[int] = []

    def compute() -> dict[str, list[float]]:
        calls.append(1)
        return {"scores": [0.25, 0.5]}

    assert cache.memo("ns", "key", compute) == {"scores": [0.25, 0.5]}
    path = cache.path_for("ns", "key")
    assert path is not None and path.is_file()
    path.write_bytes(_damage(kind, path.read_bytes()))
    assert cache.load("ns", "key") == (False, None)
    assert not path.exists()  # dropped, never trusted

    path.write_bytes(_damage(kind, pickle.dumps("x")))  # damaged again; memo must recompute, not return it
    assert cache.memo("ns", "key", compute) == {"scores": [0.25, 0.5]}
    assert len(calls) == 2 and cache.load("ns", "key") == (True, {"scores": [0.25, 0.5]})


# --- determinism -----------------------------------------------------------------------------------------------

DETERMINISM_CONFTEST = """
import pytest
from pytest_qxai.plugin import SESSION_KEY

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.stash[SESSION_KEY].n_resamples = 999
"""

DETERMINISM_SOURCE = """
import pytest
from pytest_qxai.metrics import Metric

METRICS = [Metric("det", f"m{k}", "", "binary" if k % 3 == 0 else "continuous", tolerance="abs:0.05")
           for k in range(6)]

@pytest.mark.parametrize("k", range(6))
def test_metric(qxai_check, k):
    ref = [float(((i * 7 + k) % 5) < 3) if k % 3 == 0 else ((i * 37 + k) % 50) / 50 for i in range(40)]
    quant = [r if (i + k) % 9 else (1.0 - r if k % 3 == 0 else r - 0.1) for i, r in enumerate(ref)]
    qxai_check(METRICS[k], ref, quant, item_ids=[f"i{i}" for i in range(40)])
"""


def without_timings(value: Any) -> Any:
    """``value`` without keys that hold wall-clock times."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith(("_seconds", "duration"))}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_two_runs_give_identical_reports_and_verdicts(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(DETERMINISM_CONFTEST)
    pytester.makepyfile(test_det=DETERMINISM_SOURCE)
    lean = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    assert pytester.runpytest_inprocess(*lean, "--qxai-update-baselines").ret == pytest.ExitCode.OK
    reports = []
    for name in ("r1.json", "r2.json"):
        pytester.runpytest_inprocess(*lean, f"--qxai-report-json={name}")
        reports.append(json.loads((pytester.path / name).read_text()))
    assert without_timings(reports[0]) == without_timings(reports[1])
    assert json.dumps(without_timings(reports[0]), sort_keys=True) == json.dumps(without_timings(reports[1]),
                                                                                sort_keys=True)
    verdicts = [[(c["suite"], c["metric"], c["kind"], c["verdict"], c["p_value"], c["ci"]) for c in r["checks"]]
                for r in reports]
    assert verdicts[0] == verdicts[1] and len(verdicts[0]) == 12
    assert {c["kind"] for c in reports[0]["checks"]} == {"vs_reference", "vs_baseline"}


# --- properties not covered elsewhere (see docs/bad-input.md for the ones that are) ---------------------------

pairs = st.lists(st.tuples(st.floats(0, 1, allow_nan=False), st.floats(-0.5, 0.5, allow_nan=False)),
                 min_size=2, max_size=40)


@settings(max_examples=30, deadline=None)
@given(data=pairs, kind=st.sampled_from(["binary", "continuous"]), band=st.sampled_from(
    ["abs:0.05", "rel:0.1", "abs:0.02,two-sided", "rel:0.2,alpha=0.01"]))
def test_check_p_value_in_unit_interval_and_interval_contains_delta(
    data: list[tuple[float, float]], kind: str, band: str
) -> None:
    ref = np.array([r for r, _ in data])
    quant = ref + np.array([s for _, s in data])
    if kind == "binary":
        ref, quant = np.round(ref), (quant > 0.5).astype(float)
    metric = Metric("prop", "m", "", kind, tolerance=band)  # type: ignore[arg-type]
    result = check_vs_reference(metric, parse_tolerance(band), ref, quant, [str(i) for i in range(ref.size)],
                                n_resamples=199)
    assert result.p_value is not None and 0.0 <= result.p_value <= 1.0
    assert result.ci is not None and result.delta is not None
    assert result.ci[0] <= result.delta <= result.ci[1]


@settings(max_examples=30, deadline=None)
@given(ref=st.lists(st.floats(0.1, 1, allow_nan=False), min_size=40, max_size=40),
       noise=st.lists(st.floats(-0.5, 0.5, allow_nan=False), min_size=40, max_size=40),
       small=st.floats(0, 0.5), extra=st.floats(0, 0.5))
def test_relative_bands_are_monotone_in_the_tolerance(ref: list[float], noise: list[float], small: float,
                                                      extra: float) -> None:
    """Widening a relative band never turns a pass into a failure (absolute bands: tests/test_gate.py)."""
    a = np.array(ref)
    b = a + np.array(noise)
    metric = Metric("prop", "m", "", "continuous")
    ids = [str(i) for i in range(a.size)]
    narrow = check_vs_reference(metric, parse_tolerance(f"rel:{small}"), a, b, ids, n_resamples=199)
    wide = check_vs_reference(metric, parse_tolerance(f"rel:{small + extra}"), a, b, ids, n_resamples=199)
    if wide.verdict == "fail":
        assert narrow.verdict == "fail"

