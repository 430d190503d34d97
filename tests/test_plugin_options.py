"""The plugin's options as a user meets them: help text, ini twins, lazy imports, and one-line usage errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_qxai.errors import QxaiUsageError
from pytest_qxai.options import OPTIONS, parse_shard

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _usage_error(result: pytest.RunResult, message: str) -> None:
    """Exit code 4, the message on one ERROR line, and no traceback anywhere."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    text = result.stderr.str() + result.stdout.str()
    assert message in text
    assert "Traceback" not in text
    error_lines = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(error_lines) == 1 and message in error_lines[0]


def test_help_lists_every_option_without_importing_torch() -> None:
    code = (
        "import sys, pytest\n"
        "pytest.main(['--help', '-p', 'no:cacheprovider'])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'numpy.linalg') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for opt in OPTIONS:
        for flag in opt.flags:
            assert flag in out
    assert "HEAVY ['numpy.linalg']" in out or "HEAVY []" in out
    assert "'torch'" not in out.split("HEAVY")[1]


def test_plain_run_does_not_import_torch(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import sys
        def test_no_torch():
            assert "torch" not in sys.modules and "transformers" not in sys.modules
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_ini_twins_are_read(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        qxai_profile = smoke
        qxai_seed = 7
        qxai_quant = gptq4:group_size=64
        qxai_baseline_name = release-1.2
        qxai_tolerance =
            accuracy=abs:0.02
    """)
    pytester.makepyfile("""
        def test_cfg(qxai_config):
            assert qxai_config.profile == "smoke"
            assert qxai_config.seed == 7
            assert str(qxai_config.quant) == "gptq4:group_size=64"
            assert qxai_config.baseline_name == "release-1.2"
            assert qxai_config.tolerances == ("accuracy=abs:0.02",)
    """)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_command_line_beats_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nqxai_profile = smoke\n")
    pytester.makepyfile("""
        def test_cfg(qxai_config):
            assert qxai_config.profile == "full"
    """)
    pytester.runpytest_inprocess("--qxai-profile=full", "-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_default_quant_and_baseline_name(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_cfg(qxai_config):
            assert str(qxai_config.quant) == "bnb4" and qxai_config.baseline_name == "bnb4"
            assert qxai_config.model is None and qxai_config.device == "auto"
    """)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quant=gptq3"], "unknown --quant scheme gptq3; choose one of: none, bnb8, bnb4"),
        (["--quant=gptq4:bits=3"], "--quant gptq4: unknown parameter 'bits'"),
        (["--qxai-model=./no/such/model"], "--qxai-model ./no/such/model: no such file or folder"),
        (["--qxai-model=weights.gguf"], "--qxai-model weights.gguf: no such file or folder"),
        (["--qxai-device=tpu"], "--qxai-device 'tpu' is not valid"),
        (["--qxai-samples=0"], "--qxai-samples must be at least 2"),
        (["--qxai-baseline-name=../escape"], "is not a safe file name"),
        (["--qxai-baseline-name=a/b"], "is not a safe file name"),
        (["--qxai-data=reviews"], "write NAME=PATH"),
        (["--qxai-data=esnli=missing.jsonl"], "--qxai-data esnli: file not found"),
        (["--qxai-tolerance=accuracy=wide"], "accuracy"),
        (["--quant=torchao-int4", "--qxai-device=cpu"], "--quant torchao-int4 needs a CUDA GPU"),
    ],
)
def test_bad_input_is_one_usage_error_line(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    _usage_error(pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider"), message)


def test_folder_that_is_not_a_model(pytester: pytest.Pytester) -> None:
    (pytester.path / "empty").mkdir()
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--qxai-model=empty", "-p", "no:cacheprovider")
    _usage_error(result, "the folder is not a model (no config.json and no .gguf file)")


def test_non_gguf_file_is_rejected(pytester: pytest.Pytester) -> None:
    pytester.makefile(".bin", weights="not a model")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--qxai-model=weights.bin", "-p", "no:cacheprovider")
    _usage_error(result, "a file must be a .gguf model")


def test_hub_id_while_offline(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(pytester.path / "hf-home"))
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--qxai-model=some-org/some-model", "-p", "no:cacheprovider")
    _usage_error(result, "--qxai-model some-org/some-model: not in the local Hugging Face cache and the hub is offline")


def test_missing_backend_names_the_extra(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without_hqq(name: str, *args: object, **kwargs: object) -> object:
        return None if name.split(".")[0] == "hqq" else real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_hqq)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("--quant=hqq4", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--quant hqq4 needs the 'hqq' library: pip install 'pytest-qxai[hqq]'" in result.stderr.str()


def test_quantized_flag_on_full_precision_checkpoint(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "fp-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(f"--qxai-quantized={folder}", "-p", "no:cacheprovider")
    _usage_error(result, "not a quantized checkpoint")


def test_default_model_is_embedded_and_needs_no_options() -> None:
    from pytest_qxai.models.source import default_source

    source = default_source()
    assert source.embedded and source.kind == "gguf" and Path(source.location, source.gguf_file or "").is_file()
    assert source.slug == "SmolLM2-135M-Instruct"


@given(st.integers(min_value=1, max_value=500), st.integers(min_value=0, max_value=500))
def test_shard_parser_accepts_exactly_one_based_indices(count: int, index: int) -> None:
    if 1 <= index <= count:
        assert parse_shard(f"{index}/{count}") == parse_shard(f" {index} / {count} ") == (index, count)
    else:
        with pytest.raises(QxaiUsageError, match="write I/N with 1 <= I <= N"):
            parse_shard(f"{index}/{count}")


def test_a_bad_cache_size_is_a_usage_error_before_any_model_loads(pytester: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """It was read only when the run bounded its cache at the end: a traceback, after the whole run."""
    monkeypatch.setenv("QXAI_CACHE_MAX_SIZE", "20 gigabytes")
    pytester.makepyfile("def test_x():\n    pass\n")
    _usage_error(pytester.runpytest_subprocess("--quant=none", "-p", "no:cacheprovider"), "20 gigabytes")
