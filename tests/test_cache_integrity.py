"""Cache and baseline integrity, from the user's side: forged entries, stale keys, faults and model identity.

Most tests run pytest through pytester on a tiny random model (``--quant=none``: the quantized side is a
second load of the reference), with a user test that caches a value through ``qxai_pair.cached``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("torch")
import tokenizers  # noqa: E402,F401 - imported once here: pytester drops modules first imported inside a run
import transformers  # noqa: E402,F401

from pytest_qxai.storage import CacheWarning, DiskCache, encode_entry  # noqa: E402
from tiny import build_tiny_model  # noqa: E402

USER_TEST = """
import os
import numpy as np
from pytest_qxai.metrics import Metric

SCORE = Metric("user", "score", "a score", "continuous", tolerance="abs:0.05")

def test_cached_value(qxai_pair, qxai_check):
    def compute():
        with open(os.environ["QXAI_TEST_CALLS"], "a") as calls:
            calls.write("computed\\n")
        return {"scores": np.array([0.25, 0.5]), "label": "ok"}

    value = qxai_pair.cached(qxai_pair.reference, "user/demo", {"n": 2}, compute)
    print("VALUE", value["scores"].tolist(), value["label"])
    qxai_check(SCORE, value["scores"], value["scores"], item_ids=["a", "b"])
"""


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny model for the session (built before pytester snapshots ``sys.modules``: torch is imported once)."""
    return build_tiny_model(tmp_path_factory.mktemp("template"))


@pytest.fixture
def tiny(tiny_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model for each test (tests change its files)."""
    return Path(shutil.copytree(tiny_template, tmp_path_factory.mktemp("model") / "tiny-llama"))


class UserRun:
    """Runs the user's test with one cache and counts how often the value was computed.

    Runs are in-process (seconds, not a fresh interpreter each); what a new process would not remember is
    forgotten before each run: the loaded model pair and the memoised code hashes.
    """

    def __init__(self, pytester: pytest.Pytester, model: Path) -> None:
        self.pytester = pytester
        self.model = model
        self.cache = pytester.path / "cache"
        self.calls = pytester.path / "calls.txt"
        self.runs = 0
        pytester.makepyfile(test_user=USER_TEST)

    def __call__(self, *args: str) -> pytest.RunResult:
        from pytest_qxai.models import identity, pair

        os.environ["QXAI_TEST_CALLS"] = str(self.calls)
        pair._PAIRS.clear()
        identity.code_hash.cache_clear()
        self.runs += 1
        return self.pytester.runpytest(
            f"--qxai-model={self.model}", "--quant=none", "--qxai-device=cpu", f"--qxai-cache-dir={self.cache}",
            "--qxai-update-baselines", f"--qxai-baseline-dir={self.pytester.path / f'baselines-{self.runs}'}",
            "-p", "no:cacheprovider", "-p", "no:randomly", "-rP", "-W", "always::pytest_qxai.storage.CacheWarning",
            "--qxai-skip-sanity",  # a tiny random model is no usable language model: the sanity check refuses it
            *args)

    @property
    def computed(self) -> int:
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0


@pytest.fixture
def user_run(pytester: pytest.Pytester, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> UserRun:
    monkeypatch.setenv("QXAI_CACHE_SECRET", "a secret only this test's runs know")
    return UserRun(pytester, tiny)


def _entries(cache: Path, pattern: str) -> list[Path]:
    return sorted((cache / "results").rglob(pattern))


# --- 1. nothing executable, nothing forged ------------------------------------------------------------------

class _Payload:
    """Unpickling this would create a file: proof that the cache ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("forgery", ["pickle", "forged-values", "moved-entry", "truncated"])
def test_a_forged_result_entry_is_rejected_and_recomputed(user_run: UserRun, forgery: str) -> None:
    """Whatever a writer of the cache folder plants in a result entry, the value is recomputed, with one warning."""
    assert user_run().ret == 0 and user_run.computed == 1
    [entry] = _entries(user_run.cache, "*.qxai")
    marker = user_run.pytester.path / "PWNED"
    if forgery == "pickle":
        entry.write_bytes(pickle.dumps(_Payload(marker)))
    elif forgery == "forged-values":  # a well-formed entry with other numbers, signed without the secret
        entry.write_bytes(b"QXAI2\n" + b"0" * 64 + encode_entry({"scores": [9.0, 9.0], "label": "forged"}))
    elif forgery == "moved-entry":  # a genuine entry of another key copied over this one
        DiskCache(user_run.cache).store("user/demo", {"another": "key"}, {"scores": [9.0, 9.0], "label": "moved"})
        [other] = [p for p in _entries(user_run.cache, "*.qxai") if p != entry]
        entry.write_bytes(other.read_bytes())
    else:
        entry.write_bytes(entry.read_bytes()[:-7])
    result = user_run()
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*VALUE [[]0.25, 0.5[]] ok*"])
    result.stdout.fnmatch_lines([f"*CacheWarning: qxai cache: rejected {entry}: *; recomputing"])
    assert user_run.computed == 2
    assert not marker.exists()


def test_a_forged_hash_memo_is_not_trusted(user_run: UserRun) -> None:
    """A memo claiming another content hash for the model's files is rejected: the files are hashed again."""
    assert user_run().ret == 0
    memos = sorted((user_run.cache / "hashes").glob("*.txt"))
    assert memos
    for memo in memos:
        text, _, mac = memo.read_text().rpartition("\n")
        memo.write_text(f"{'0' * 64}\n{mac}")
    result = user_run()
    assert result.ret == 0 and user_run.computed == 1  # same hashes after re-hashing: the entry is still valid
    result.stdout.fnmatch_lines(["*CacheWarning: qxai cache: rejected *hashes*: signature does not match*"])


def test_a_cached_checkpoint_with_a_planted_pickle_is_rebuilt(tmp_path: Path) -> None:
    """A cached model folder (quantized checkpoint or converted GGUF) is used only as its signed manifest lists it."""
    from pytest_qxai.backends.base import QuantContext, checkpoint_slot

    ctx = QuantContext(reference_dir=tmp_path, device="cpu", dtype=None, tokenizer=None,  # type: ignore[arg-type]
                       calibration=[], seed=0, trust_remote_code=False,
                       cache_dir=tmp_path / "cache" / "quantized" / "x-1")
    with checkpoint_slot(ctx) as slot:
        (slot.path / "config.json").write_text("{}")
    (ctx.cache_dir / "checkpoint" / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    with pytest.warns(CacheWarning, match="rejected .*checkpoint: files differ from its manifest"), \
            checkpoint_slot(ctx) as slot:
        assert not slot.found
        (slot.path / "config.json").write_text("{}")
    with checkpoint_slot(ctx) as slot:
        assert slot.found and not (slot.path / "pytorch_model.bin").exists()
    (slot.path / "config.json").write_text('{"changed": 1}')
    with pytest.warns(CacheWarning, match="config.json changed since it was written"), checkpoint_slot(ctx) as slot:
        assert not slot.found


def test_pickled_weights_are_never_cached(tmp_path: Path) -> None:
    """A checkpoint that would hold pickles or code is not kept in the cache (one warning)."""
    from pytest_qxai.backends.base import QuantContext, checkpoint_slot

    ctx = QuantContext(reference_dir=tmp_path, device="cpu", dtype=None, tokenizer=None,  # type: ignore[arg-type]
                       calibration=[], seed=0, trust_remote_code=False,
                       cache_dir=tmp_path / "cache" / "quantized" / "x-1")
    with pytest.warns(CacheWarning, match="not data-only .*model.pt"), checkpoint_slot(ctx) as slot:
        (slot.path / "model.pt").write_bytes(b"pickle")
    assert not (ctx.cache_dir / "checkpoint").exists()


# --- 2. complete, minimal keys ------------------------------------------------------------------------------

def _same_mtime_rewrite(path: Path, data: bytes) -> None:
    """Replace a file's bytes keeping its size and mtime (what ``rsync -t`` or a careless copy leaves)."""
    info = path.stat()
    assert len(data) == info.st_size
    path.write_bytes(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


@pytest.mark.parametrize("change", ["weights-same-size-and-mtime", "tokenizer", "chat-template", "generation-config",
                                    "method-code", "nothing"])
def test_every_input_of_a_value_is_in_its_key(user_run: UserRun, change: str) -> None:
    """Changing any file or code the value depends on recomputes it; changing nothing reuses it."""
    assert user_run().ret == 0 and user_run.computed == 1
    model = user_run.model
    if change == "weights-same-size-and-mtime":
        [weights] = model.glob("*.safetensors")
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        _same_mtime_rewrite(weights, bytes(data))
    elif change == "tokenizer":
        config = json.loads((model / "tokenizer_config.json").read_text())
        (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 77}))
    elif change == "chat-template":
        (model / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    elif change == "generation-config":
        (model / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 3}))
    elif change == "method-code":
        user_run.pytester.makepyfile(test_user=USER_TEST.replace('"label": "ok"', '"label": "ok" '))
    report = user_run.pytester.path / "report.json"
    assert user_run(f"--qxai-report-json={report}").ret == 0
    assert user_run.computed == (1 if change == "nothing" else 2)
    used = json.loads(report.read_text())["metadata"]["cache"]
    assert [e.split()[:2] for e in used["reused" if change == "nothing" else "computed"]] == [["user/demo", "reference"]]


def test_switching_backend_reuses_the_reference_side(make_config: Callable[..., Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference side's key holds no backend library version; the quantized side's does; core versions key both."""
    from pytest_qxai.backends.base import get_backend
    from pytest_qxai.models import pair as pair_module
    from pytest_qxai.specs import parse_spec

    monkeypatch.setenv("QXAI_CACHE_SECRET", "s")
    tiny = build_tiny_model(tmp_path)
    cache = tmp_path / "cache"
    calls: list[str] = []

    def side_values(spec: str) -> tuple[Any, Any]:
        pair = pair_module._load_pair(make_config(model=str(tiny), quant=parse_spec(spec), cache_dir=cache,
                                                      skip_sanity=True))  # a tiny random model fails it
        return tuple(pair.cached(side, "demo", {}, lambda role=side.role: calls.append(role) or [1.0])
                     for side in pair.sides)

    side_values("none")  # "none": the quantized side is the reference itself
    assert calls == ["reference"]
    backend = type(get_backend("quanto"))
    monkeypatch.setattr(backend, "versions", lambda self: {"optimum-quanto": "0.0.1"})
    side_values("quanto-int8")
    assert calls == ["reference", "quantized"]
    monkeypatch.setattr(backend, "versions", lambda self: {"optimum-quanto": "0.0.2"})
    side_values("quanto-int8")
    assert calls == ["reference", "quantized", "quantized"]
    monkeypatch.setattr(pair_module, "value_versions", lambda: {"torch": "0.0.0"})
    side_values("quanto-int8")
    assert calls == ["reference", "quantized", "quantized", "reference", "quantized"]


# --- 3. faults ------------------------------------------------------------------------------------------------

def test_a_failed_cache_write_warns_and_the_run_goes_on(user_run: UserRun) -> None:
    """A cache whose results folder cannot be written: the value is computed, used, and a warning says so."""
    user_run.cache.mkdir()
    (user_run.cache / "results").write_text("a file where the results folder should be")
    result = user_run()
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*CacheWarning: qxai cache: could not store user/demo*"])
    result.stdout.fnmatch_lines(["*VALUE [[]0.25, 0.5[]] ok*"])
    assert "rejected" not in result.stdout.str()


def test_a_second_process_waits_for_the_lock_with_progress_lines(user_run: UserRun) -> None:
    """While one run computes an entry, another waits for it (no timeout), says so, and reuses the result."""
    release = user_run.pytester.path / "release"
    slow = USER_TEST.replace("calls.write(", "wait_for_release(); calls.write(") + (
        "\ndef wait_for_release():\n    import time\n"
        f"    while not os.path.exists({str(release)!r}):\n        time.sleep(0.1)\n")
    user_run.pytester.makepyfile(test_user=slow)
    user_run.pytester.makeconftest("import pytest_qxai.storage\npytest_qxai.storage.LOCK_NOTICE_SECONDS = 0.5\n")
    os.environ["QXAI_TEST_CALLS"] = str(user_run.calls)
    command = [sys.executable, "-m", "pytest", f"--qxai-model={user_run.model}", "--quant=none",
               "--qxai-device=cpu", f"--qxai-cache-dir={user_run.cache}", "-p", "no:cacheprovider", "-s",
               "--qxai-update-baselines", "--qxai-skip-sanity"]  # the tiny random model fails the sanity check
    run = {"cwd": user_run.pytester.path, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    first = subprocess.Popen(command, **run)  # type: ignore[call-overload]
    second = None
    try:
        deadline = time.monotonic() + 120
        while not list((user_run.cache / "results").rglob("*.lock")):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.Popen(command, **run)  # type: ignore[call-overload]
        waiting: list[str] = []
        while len(waiting) < 2:  # two progress lines: it goes on waiting past a notice
            line = second.stderr.readline()
            assert line, "the second run ended without waiting for the lock"
            if "qxai: waiting" in line:
                waiting.append(line)
        release.touch()
        second_out, second_err = second.communicate(timeout=300)
        first.communicate(timeout=300)
    finally:
        release.touch()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert first.returncode == 0 and second.returncode == 0, second_out[-2000:]
    assert "for another process to finish user/demo" in "".join(waiting) + second_err
    assert "VALUE [0.25, 0.5] ok" in second_out and user_run.computed == 1


def test_staging_left_by_a_killed_run_is_removed_on_the_next_start(user_run: UserRun) -> None:
    """A staging folder and a temporary entry of a killed run (old, lock free) are gone after the next run."""
    staging = user_run.cache / "quantized" / "x-1" / ".checkpoint.abc12345"
    temporary = user_run.cache / "results" / "user" / ".0123.qxai.k3j_x9aa.tmp"
    fresh = user_run.cache / "models" / ".gguf-1-2.zzzzzzzz"  # a conversion still being written: too young
    for path in (staging, fresh):
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"0" * 1000)
    temporary.parent.mkdir(parents=True)
    temporary.write_bytes(b"partial")
    old = time.time() - 3600
    for path in (staging, temporary):
        os.utime(path, (old, old))
    assert user_run().ret == 0
    assert not staging.exists() and not temporary.exists() and fresh.exists()


def test_qxai_cache_info_and_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``qxai cache info`` shows sizes and ages per area and model side; ``prune`` removes the least recently used."""
    from pytest_qxai.cli import main

    cache = DiskCache(tmp_path)
    for n, label in enumerate(("reference abc", "quantized def", "quantized def")):
        cache.store("ns", {"n": n}, {"scores": [float(n)] * 1000}, label)
        path = cache.path_for("ns", {"n": n})
        assert path is not None
        os.utime(path, (time.time() - 86400 * (3 - n),) * 2)  # entry 0 is the least recently used
    (tmp_path / "models" / "gguf-1-2").mkdir(parents=True)
    (tmp_path / "models" / "gguf-1-2" / "model.safetensors").write_bytes(b"0" * 50_000)
    assert main(["cache", "info", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 entries" in out and "results   quantized def: 2 entries" in out and "models    gguf-1-2: 1 entries" in out
    assert main(["cache", "prune", "--dir", str(tmp_path), "--older-than", "2.5"]) == 0
    assert capsys.readouterr().out.startswith("removed 1 entries")
    assert not cache.path_for("ns", {"n": 0}).exists()  # type: ignore[union-attr]
    assert main(["cache", "prune", "--dir", str(tmp_path), "--max-size", "55K"]) == 0
    assert (tmp_path / "models" / "gguf-1-2").exists() and not cache.path_for("ns", {"n": 1}).exists()  # type: ignore[union-attr]
    assert main(["cache", "prune", "--dir", str(tmp_path), "--max-size", "lots"]) == 2


SUITES = """
import os
import pytest
from pytest_qxai.metrics import Metric, register_metric

SIM = register_metric(Metric("mysuite", "similarity", "how similar", "continuous", tolerance="abs:0.05"))

def test_other(FAULT, qxai_check):
    pass

def test_similarity(qxai_check):
    qxai_check(SIM, reference=[0.5, 0.6, 0.7, 0.8], quantized=[0.5, 0.6, 0.7, 0.8], item_ids=list("abcd"))
"""


@pytest.mark.parametrize("fault, workers", [("worker-crash", "1"), ("worker-crash", "2"), ("fixture-error", ""),
                                            ("none", "")])
def test_pruning_never_follows_a_crash_or_an_error(pytester: pytest.Pytester, fault: str, workers: str) -> None:
    """``--qxai-prune-baselines`` drops records of checks that did not run, only when every test and worker finished.

    With one worker the crash is reported before any gate test (the case a two-worker run meets by chance)."""
    fixture = {"worker-crash": "@pytest.fixture\ndef FAULT():\n    os._exit(3)\n",
               "fixture-error": "@pytest.fixture\ndef FAULT():\n    raise RuntimeError('broken')\n",
               "none": "@pytest.fixture\ndef FAULT():\n    return None\n"}[fault]
    pytester.makepyfile(test_suite=SUITES + fixture)
    baseline = pytester.path / "baselines" / "default" / "bnb4.json"
    args = ["-p", "no:cacheprovider", "-p", "no:randomly", "--qxai-update-baselines"]
    xdist = ["-n", workers] if workers else []
    assert pytester.runpytest_subprocess(*args, "-k", "similarity").ret == 0
    doc = json.loads(baseline.read_text())
    doc["checks"]["mysuite.gone"] = {**doc["checks"]["mysuite.similarity"], "metric": "gone"}
    baseline.write_text(json.dumps(doc))
    result = pytester.runpytest_subprocess(*args, "--qxai-prune-baselines", *xdist)
    kept = "mysuite.gone" in json.loads(baseline.read_text())["checks"]
    if fault == "none":
        assert result.ret == 0 and not kept
    else:
        assert result.ret != 0 and kept
        result.stdout.fnmatch_lines(["*the run had errors*so nothing was pruned from the baseline*"])


# --- 4. identity ----------------------------------------------------------------------------------------------

GATED = """
from pytest_qxai.metrics import Metric, register_metric

SIM = register_metric(Metric("mysuite", "similarity", "how similar", "continuous", tolerance="abs:0.05"))

def test_similarity(qxai_pair, qxai_check):
    qxai_check(SIM, reference=[0.5, 0.6, 0.7, 0.8], quantized=[0.5, 0.6, 0.7, 0.8], item_ids=list("abcd"))
"""


def test_a_renamed_model_keeps_its_baseline_and_another_model_is_refused(
    pytester: pytest.Pytester, tiny_template: Path, tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Baselines follow the model's content hash: renaming the folder keeps it; other weights under the name fail."""
    monkeypatch.setenv("QXAI_CACHE_SECRET", "s")
    pytester.makepyfile(test_gated=GATED)
    model = pytester.path / "release"
    shutil.copytree(tiny_template, model)

    def run(*args: str) -> pytest.RunResult:
        from pytest_qxai.models import pair

        pair._PAIRS.clear()  # as a new process would
        return pytester.runpytest(f"--qxai-model={model}", "--quant=none", "--qxai-device=cpu",
                                  f"--qxai-cache-dir={pytester.path / 'cache'}", "-p", "no:cacheprovider",
                                  "--qxai-skip-sanity", *args)  # tiny random models fail the sanity check

    assert run("--qxai-update-baselines").ret == 0
    recorded = json.loads((pytester.path / "baselines" / "release" / "none.json").read_text())
    assert recorded["model_hash"].startswith("sha256:")
    model = model.rename(pytester.path / "release-v2")
    result = run()
    assert result.ret == 0, result.stdout.str()[-2000:]
    assert not (pytester.path / "baselines" / "release-v2").exists()
    other = build_tiny_model(tmp_path_factory.mktemp("b"), seed=1)
    model = other.rename(pytester.path / "release")
    result = run()
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*recorded for another model with the same name 'release': content hash "
                                 f"{recorded['model_hash']}, this model sha256:*"])
