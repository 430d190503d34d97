"""Every qxai setting: the option table, its parsing and the resolved :class:`QxaiConfig` (no pytest, no torch).

Precedence for every option: command line > ini (``[tool.pytest.ini_options]``) > built-in default. The
pytest glue that registers these options is :mod:`pytest_qxai.options`; this module only reads them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from .datasets import BUNDLED_NAMES
from .errors import QxaiUsageError
from .specs import QuantSpec, describe_schemes, parse_spec

GROUP = "qxai"
PROFILES = ("smoke", "standard", "full")
DEVICES_HELP = "auto, cpu, cuda or cuda:N"
DTYPES = ("auto", "float32", "bfloat16", "float16")
UPDATE_MODES = ("all", "missing")
DEFAULT_QUANT = "bnb4"
DATA_NAMES = BUNDLED_NAMES
MULTIPLE_TESTING = ("holm", "bh", "none")


@dataclass(frozen=True)
class Budget:
    """``--qxai-budget``: the most items a suite may use in sequential mode, and optionally the most time."""

    items: int | None = None
    """The same item count for every suite; None: each suite's count in :attr:`profile`."""
    profile: str = "standard"
    """Under a profile budget, the profile whose per-suite counts (and part counts) are the budgets."""
    seconds: float | None = None
    """A suite starts no look that its measured pace says would end past this many seconds of the suite's time."""

    def __str__(self) -> str:
        parts = [str(self.items) if self.items is not None else self.profile]
        if self.seconds is not None:
            parts.append(f"{self.seconds:g}s")
        return ",".join(parts)


LOOKS = 5
"""Planned looks per suite in sequential mode, at equal fractions of the budget."""


def look_counts(limit: int, looks: int = LOOKS, first: int = 2, head: int | None = None) -> tuple[int, ...]:
    """The items at each of ``looks`` equal steps up to ``limit``, each at least ``first`` (a paired test's minimum),
    after an earlier look of ``head`` items when that is below the first step (a time budget's first look)."""
    counts = {max(first, math.ceil(limit * j / looks)) for j in range(1, looks + 1)}
    if head is not None and first <= head < min(counts):
        counts.add(head)
    return tuple(sorted(counts))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|min)", re.IGNORECASE)


def parse_budget(text: str, profile: str) -> Budget:
    """Parse ``--qxai-budget``: ``N`` items, a profile name, and/or a duration (``5min``, ``90s``), comma-joined.

    A duration alone caps the items at the run's ``--qxai-profile`` counts (``profile``)."""
    items: int | None = None
    seconds: float | None = None
    chosen: str | None = None
    for part in (p.strip().lower() for p in text.split(",")):
        duration = _DURATION.fullmatch(part)
        if duration and seconds is None:
            seconds = float(duration[1]) * (60.0 if duration[2].lower() == "min" else 1.0)
            if seconds <= 0:
                raise QxaiUsageError(f"--qxai-budget {text!r}: a time budget must be above 0")
        elif part.isdecimal() and items is None and chosen is None:
            items = int(part)
            if items < 2:
                raise QxaiUsageError(f"--qxai-budget must be at least 2 items, got {items}")
        elif part in PROFILES and items is None and chosen is None:
            chosen = part
        else:
            raise QxaiUsageError(f"--qxai-budget {text!r}: give N items or a profile ({', '.join(PROFILES)}), "
                                 "and/or a time such as 5min or 90s, joined by a comma")
    return Budget(items, chosen or profile, seconds)


@dataclass(frozen=True)
class OptionDef:
    """One plugin option: its flags, ini twin, default, help and argparse extras."""

    flags: tuple[str, ...]
    dest: str
    help: str
    default: Any = None
    ini_type: str | None = None  # pytest ini type: None (string), "bool", "args", "linelist"
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def ini(self) -> str:
        """The ini key, e.g. ``qxai_model``."""
        return self.dest


BLAME_OPTIONS = (
    OptionDef(("--qxai-blame",), "qxai_blame",
              "Blame failing checks on decoder layers and propose a keep= spec; name checks as SUITE.METRIC,... "
              "to blame those only (off by default)", kwargs={"nargs": "?", "const": "failing", "metavar": "CHECKS"}),
    OptionDef(("--qxai-blame-verify",), "qxai_blame_verify",
              "With --qxai-blame: quantize the proposed spec and gate the blamed metric's suite on it", False,
              ini_type="bool", kwargs={"action": "store_true"}),
    OptionDef(("--qxai-blame-target",), "qxai_blame_target",
              "Share of a regression the proposed keep= set must recover (default: 0.5)", "0.5",
              kwargs={"metavar": "SHARE"}),
)
"""Layer blame (docs/blame.md)."""

OPTIONS: tuple[OptionDef, ...] = (
    OptionDef(("--qxai-model",), "qxai_model",
              "Model under test: a hub id, a local HF folder, or a GGUF file/folder "
              "(default: the embedded SmolLM2-135M-Instruct)", kwargs={"metavar": "ID_OR_PATH"}),
    OptionDef(("--quant",), "qxai_quant",
              f"Quantization spec, e.g. gptq4:group_size=128,calibration=64. Schemes: {describe_schemes()} "
              f"(default: {DEFAULT_QUANT})", kwargs={"metavar": "SPEC"}),
    OptionDef(("--qxai-quantized",), "qxai_quantized",
              "Test an existing quantized checkpoint (GPTQ, AWQ, compressed-tensors, serialized "
              "bitsandbytes) instead of quantizing on the fly", kwargs={"metavar": "PATH_OR_ID"}),
    OptionDef(("--qxai-revision",), "qxai_revision", "Pinned hub revision (commit) of --qxai-model",
              kwargs={"metavar": "REV"}),
    OptionDef(("--qxai-device",), "qxai_device", f"Device: {DEVICES_HELP} (default: auto)", "auto",
              kwargs={"metavar": "DEVICE"}),
    OptionDef(("--qxai-dtype",), "qxai_dtype", "Reference dtype (default: auto = float32 on CPU, bfloat16 on GPU)",
              "auto", kwargs={"choices": DTYPES}),
    OptionDef(("--qxai-profile",), "qxai_profile", "Item counts per suite (default: standard)", "standard",
              kwargs={"choices": PROFILES}),
    OptionDef(("--qxai-samples",), "qxai_samples", "Override the item count of every suite",
              kwargs={"type": int, "metavar": "N"}),
    OptionDef(("--qxai-budget",), "qxai_budget",
              "Sequential mode: at most N items per suite, or each suite's count in a profile (smoke, standard, "
              "full), and/or minutes per suite (e.g. 5min, 90s; joined by a comma), checked in 5 looks; a suite "
              "stops once all its checks are decided (docs/sequential.md)", kwargs={"metavar": "BUDGET"}),
    OptionDef(("--qxai-seed",), "qxai_seed", "Seed for data subsets, sampling estimators and calibration (default: 0)",
              "0", kwargs={"type": int, "metavar": "N"}),
    OptionDef(("--qxai-batch-size",), "qxai_batch_size", "Batch size for model calls (default: auto)",
              kwargs={"type": int, "metavar": "N"}),
    OptionDef(("--qxai-cache-dir",), "qxai_cache_dir",
              "Cache for converted/quantized models and reference outputs "
              "(default: $QXAI_CACHE_DIR or ~/.cache/pytest-qxai)", kwargs={"metavar": "DIR"}),
    OptionDef(("--qxai-no-cache",), "qxai_no_cache", "Recompute everything; read and write no cache", False,
              ini_type="bool", kwargs={"action": "store_true"}),
    OptionDef(("--qxai-trust-remote-code",), "qxai_trust_remote_code",
              "Allow model repositories to run their own Python code (off by default)", False,
              ini_type="bool", kwargs={"action": "store_true"}),
    OptionDef(("--qxai-judge",), "qxai_judge",
              "Judge model for explanation coherence/trust ratings (default: the reference model)",
              kwargs={"metavar": "ID_OR_PATH"}),
    OptionDef(("--qxai-offload",), "qxai_offload",
              "Keep only one model on the GPU at a time (default: automatic when both do not fit)", False,
              ini_type="bool", kwargs={"action": "store_true"}),
    OptionDef(("--qxai-skip-sanity",), "qxai_skip_sanity",
              "Run the suites even when the reference fails its sanity checks (tokenizer, perplexity, "
              "generation on bundled English text)", False, ini_type="bool", kwargs={"action": "store_true"}),
    OptionDef(("--qxai-data",), "qxai_data",
              "Run on these datasets only (repeatable): NAME=PATH for your JSONL file (names "
              f"{', '.join(DATA_NAMES)} take their bundled format, any other name a classification file), "
              f"or a bundled NAME alone (default: {', '.join(DATA_NAMES)})", ini_type="args",
              kwargs={"action": "append", "metavar": "NAME=PATH"}),
    OptionDef(("--qxai-baseline-dir",), "qxai_baseline_dir", "Folder of stored baselines (default: ./baselines)",
              kwargs={"metavar": "DIR"}),
    OptionDef(("--qxai-baseline-name",), "qxai_baseline_name",
              "Baseline to compare with and record into (default: the quant spec, plus -PROFILE unless standard)",
              kwargs={"metavar": "NAME"}),
    OptionDef(("--qxai-update-baselines",), "qxai_update_baselines",
              "Record baselines: 'all' (default when given bare) refreshes what ran, 'missing' adds only absent ones",
              kwargs={"nargs": "?", "const": "all", "choices": UPDATE_MODES}),
    OptionDef(("--qxai-prune-baselines",), "qxai_prune_baselines",
              "With --qxai-update-baselines: drop stored checks that did not run", False,
              ini_type="bool", kwargs={"action": "store_true"}),
    OptionDef(("--qxai-tolerance",), "qxai_tolerance",
              "Override a tolerance band: [SUITE.]METRIC=BAND, e.g. accuracy=abs:0.03 or "
              "cc_shap=rel:0.1,two-sided,alpha=0.01 (repeatable)", ini_type="args",
              kwargs={"action": "append", "metavar": "METRIC=BAND"}),
    OptionDef(("--qxai-multiple-testing",), "qxai_multiple_testing",
              "Multiplicity control over the run's fail decisions: holm (family-wise error), bh (false-discovery "
              "rate) or none (default: holm)", "holm", kwargs={"metavar": "METHOD"}),
    OptionDef(("--qxai-shard",), "qxai_shard",
              "Run only shard I of N (e.g. 2/4) of the collected test modules, each module whole; "
              "merge the shards' JSON reports with `qxai merge`", kwargs={"metavar": "I/N"}),
    OptionDef(("--qxai-strict",), "qxai_strict",
              "Treat an inconclusive check as a failure: its test fails and the run exits 1 (default: it passes, "
              "exit 0)", False, ini_type="bool", kwargs={"action": "store_true"}),
    OptionDef(("--qxai-report-json",), "qxai_report_json", "Write the machine-readable report here",
              kwargs={"metavar": "PATH"}),
    OptionDef(("--qxai-report-md",), "qxai_report_md", "Write a Markdown report (for a pull-request comment)",
              kwargs={"metavar": "PATH"}),
    OptionDef(("--qxai-report-html",), "qxai_report_html", "Write a self-contained HTML report with plots",
              kwargs={"metavar": "PATH"}),
    *BLAME_OPTIONS,
)


class OptionSource(Protocol):
    """Where option values come from: ``pytest.Config`` is one (command line, ini file, root folder)."""

    @property
    def rootpath(self) -> Path:
        """The run's root folder (stored baselines default to ``rootpath / "baselines"``)."""

    def getoption(self, name: str) -> Any:
        """The command-line value of option ``name`` (None when not given)."""

    def getini(self, name: str) -> Any:
        """The ini value of ``name``."""


def raw_value(config: OptionSource, opt: OptionDef) -> Any:
    """The option's value: command line, else ini, else its default.

    Any value given on the command line wins, ``0`` included (flags are None unless given).
    """
    value = config.getoption(opt.dest)
    if value is not None and value != []:
        return value
    ini = config.getini(opt.ini)
    if ini not in (None, "", []):
        return ini
    return opt.default if value is None else value


MODEL_OPTIONS = ("qxai_model", "qxai_quant", "qxai_quantized", "qxai_revision", "qxai_device", "qxai_judge")


def explicitly_requested(config: OptionSource) -> bool:
    """Whether the user chose a model, spec or device: then they are validated at start-up.

    Gate-only options (tolerances, baselines, reports) do not count: a test file that gates its own
    numbers with ``qxai_check`` never needs a model.
    """
    return any(
        raw_value(config, opt) not in (None, [], False, opt.default) for opt in OPTIONS if opt.dest in MODEL_OPTIONS
    )


def default_cache_dir() -> Path:
    """The cache folder when none is configured."""
    env = os.environ.get("QXAI_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-qxai"


def is_ci() -> bool:
    """Whether ``$CI`` is set to a true value: unset, empty, ``0``, ``false``, ``no`` and ``off`` are not CI."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_baseline_name(name: str) -> str:
    """Reject baseline names that could escape the baseline folder or be awkward as file names."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise QxaiUsageError(
            f"--qxai-baseline-name {name!r} is not a safe file name: use letters, digits, '.', '_', '+', '-' "
            "(no path separators, no '..')"
        )
    return name


@dataclass(frozen=True)
class QxaiConfig:
    """Every qxai setting of this session, validated, with defaults applied."""

    model: str | None
    quant: QuantSpec
    quantized: str | None
    revision: str | None
    device: str
    dtype: str
    profile: str
    samples: int | None
    seed: int
    batch_size: int | None
    cache_dir: Path | None
    trust_remote_code: bool
    judge: str | None
    offload: bool
    data: dict[str, Path | None]
    """The datasets this run uses, by name: a user file, or None for a bundled one; empty = the bundled ones."""
    baseline_dir: Path
    baseline_name: str
    update_baselines: str | None
    prune_baselines: bool
    tolerances: tuple[str, ...]
    report_json: Path | None
    report_md: Path | None
    report_html: Path | None
    shard: tuple[int, int] | None
    """``(index, count)``, 1-based: this session runs test modules ``index, index + count, …`` in name order."""
    ci: bool
    rootdir: Path
    skip_sanity: bool = False
    """Run the suites even when the reference fails its sanity checks (``--qxai-skip-sanity``)."""
    strict: bool = False
    """``--qxai-strict``: an inconclusive check fails its test and the run."""
    multiple_testing: str = "holm"
    """How fail decisions are adjusted over the run: ``holm``, ``bh`` or ``none`` (docs/gate.md)."""
    budget: Budget | None = None
    """``--qxai-budget``: sequential mode's limits per suite (docs/sequential.md); None: the profile's fixed counts."""
    share: Fraction | None = None
    """The share of the profile's item counts a sequential look runs (set per look under a profile budget)."""
    blame: tuple[str, ...] | None = None
    """None: off; empty: every failing check; else the ``SUITE.METRIC`` keys to blame."""
    blame_verify: bool = False
    blame_target: float = 0.5

    @classmethod
    def from_pytest(cls, config: OptionSource) -> "QxaiConfig":
        """Resolve and validate all options; raise :class:`QxaiUsageError` with one line on bad input."""
        get = {opt.dest: raw_value(config, opt) for opt in OPTIONS}
        root = Path(str(config.rootpath))

        def as_path(value: Any) -> Path | None:
            if value in (None, ""):
                return None
            try:
                path = Path(str(value)).expanduser()
            except RuntimeError:  # "~someone" for a user that does not exist
                raise QxaiUsageError(f"path {str(value)!r}: cannot expand '~' (no such user)") from None
            return path if path.is_absolute() else (Path.cwd() / path)

        quant = parse_spec(str(get["qxai_quant"] or DEFAULT_QUANT))
        device = str(get["qxai_device"]).strip().lower()
        if not _DEVICE.match(device):
            raise QxaiUsageError(f"--qxai-device {device!r} is not valid; use {DEVICES_HELP}")
        dtype = str(get["qxai_dtype"])
        if dtype not in DTYPES:
            raise QxaiUsageError(f"qxai_dtype {dtype!r} is not valid; use one of {', '.join(DTYPES)}")
        profile = str(get["qxai_profile"])
        if profile not in PROFILES:
            raise QxaiUsageError(f"qxai_profile {profile!r} is not valid; use one of {', '.join(PROFILES)}")
        samples = _as_int(get["qxai_samples"], "--qxai-samples", minimum=2)
        budget = parse_budget(str(get["qxai_budget"]), profile) if get["qxai_budget"] not in (None, "") else None
        if budget is not None and samples is not None:
            raise QxaiUsageError("--qxai-budget and --qxai-samples both set the items per suite; give one of them")
        seed = _as_int(get["qxai_seed"], "--qxai-seed", minimum=0)
        batch = _as_int(get["qxai_batch_size"], "--qxai-batch-size", minimum=1)
        assert seed is not None
        data: dict[str, Path | None] = {}
        for item in get["qxai_data"] or []:
            name, path = parse_data(str(item), as_path)
            if name in data:
                raise QxaiUsageError(f"--qxai-data {name}: given twice")
            data[name] = path
        update = get["qxai_update_baselines"]
        if update not in (None, "", *UPDATE_MODES):
            raise QxaiUsageError(f"qxai_update_baselines {update!r}: use one of {', '.join(UPDATE_MODES)}")
        multiple_testing = str(get["qxai_multiple_testing"]).strip().lower()
        if multiple_testing not in MULTIPLE_TESTING:
            raise QxaiUsageError(f"--qxai-multiple-testing {get['qxai_multiple_testing']!r} is not valid; use one of "
                                 f"{', '.join(MULTIPLE_TESTING)}")
        no_cache = _as_bool(get["qxai_no_cache"])
        shard = parse_shard(str(get["qxai_shard"])) if get["qxai_shard"] not in (None, "") else None
        if shard is not None and _as_bool(get["qxai_prune_baselines"]):
            raise QxaiUsageError("--qxai-prune-baselines cannot be combined with --qxai-shard: a shard runs only "
                                 "part of the checks, so pruning would drop the other shards' records")
        # An existing checkpoint is named after its file or folder (model-Q4_K_M), not the unused --quant default.
        stem = _file_slug(str(get["qxai_quantized"])) if get["qxai_quantized"] else quant.slug
        default_name = stem if profile == "standard" else f"{stem}-{profile}"
        baseline_name = check_baseline_name(str(get["qxai_baseline_name"] or default_name))
        return cls(
            model=get["qxai_model"] or None,
            quant=quant,
            quantized=get["qxai_quantized"] or None,
            revision=get["qxai_revision"] or None,
            device=device,
            dtype=dtype,
            profile=profile,
            samples=samples,
            seed=seed,
            batch_size=batch,
            cache_dir=None if no_cache else (as_path(get["qxai_cache_dir"]) or default_cache_dir()),
            trust_remote_code=_as_bool(get["qxai_trust_remote_code"]),
            judge=get["qxai_judge"] or None,
            offload=_as_bool(get["qxai_offload"]),
            data=data,
            baseline_dir=as_path(get["qxai_baseline_dir"]) or root / "baselines",
            baseline_name=baseline_name,
            update_baselines=update or None,
            prune_baselines=_as_bool(get["qxai_prune_baselines"]),
            tolerances=tuple(str(t) for t in (get["qxai_tolerance"] or [])),
            report_json=as_path(get["qxai_report_json"]),
            report_md=as_path(get["qxai_report_md"]),
            report_html=as_path(get["qxai_report_html"]),
            shard=shard,
            ci=is_ci(),
            rootdir=root,
            skip_sanity=_as_bool(get["qxai_skip_sanity"]),
            strict=_as_bool(get["qxai_strict"]),
            multiple_testing=multiple_testing,
            budget=budget,
            **parse_blame(get["qxai_blame"], get["qxai_blame_verify"], get["qxai_blame_target"]),
        )


def _file_slug(location: str) -> str:
    """A baseline-name-safe form of a checkpoint's file stem or folder name."""
    path = Path(location.rstrip("/\\"))
    name = path.stem if path.suffix.lower() == ".gguf" else path.name
    return re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._+-]+", "_", name)).strip("._+-")[:100] or "checkpoint"


_CHECK_KEY = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def parse_blame(value: Any, verify: Any, target: Any) -> dict[str, Any]:
    """``--qxai-blame[=CHECKS]``, ``--qxai-blame-verify`` and ``--qxai-blame-target`` as config fields."""
    text = "" if value in (None, False) else str(value).strip()
    blame: tuple[str, ...] | None
    if text.lower() in ("", "0", "false", "no", "off"):
        blame = None
    elif text.lower() in ("failing", "1", "true", "yes", "on"):
        blame = ()
    else:
        blame = tuple(dict.fromkeys(k.strip() for k in text.split(",")))
        bad = [k for k in blame if not _CHECK_KEY.match(k)]
        if bad:
            raise QxaiUsageError(f"--qxai-blame {bad[0]!r}: name checks as SUITE.METRIC[,SUITE.METRIC], "
                                 "e.g. knowledge.recall_accuracy")
    if _as_bool(verify) and blame is None:
        raise QxaiUsageError("--qxai-blame-verify needs --qxai-blame")
    try:
        share = float(target)
    except (TypeError, ValueError):
        share = float("nan")
    if not 0 < share <= 1:
        raise QxaiUsageError(f"--qxai-blame-target {target!r}: give a share in (0, 1], e.g. 0.5")
    return {"blame": blame, "blame_verify": _as_bool(verify), "blame_target": share}


_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``1 <= I <= N``; a one-line usage error otherwise."""
    found = _SHARD.fullmatch(text)
    if found is None or not 1 <= int(found[1]) <= int(found[2]):
        raise QxaiUsageError(f"--qxai-shard {text!r}: write I/N with 1 <= I <= N, e.g. 2/4")
    return int(found[1]), int(found[2])


_DATA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def parse_data(item: str, as_path: Any) -> tuple[str, Path | None]:
    """One ``--qxai-data`` value: ``(name, file)``, or ``(name, None)`` for a bundled dataset named alone.

    The file is loaded once now, so a malformed one stops the run before any model loads.
    """
    name, eq, text = item.partition("=")
    name = name.strip()
    if not eq and name in DATA_NAMES:
        return name, None
    if not eq or not name or not text.strip():
        raise QxaiUsageError(f"--qxai-data {item!r}: write NAME=PATH (e.g. sentiment=reviews.jsonl), or a bundled "
                             f"name alone ({', '.join(DATA_NAMES)})")
    if not _DATA_NAME.match(name):
        raise QxaiUsageError(f"--qxai-data {name!r}: a dataset name is a letter, then letters, digits, '_' or '-'")
    path: Path = as_path(text.strip())
    try:
        found = path.is_file() or (name == "lre" and path.is_dir())
    except OSError as exc:  # e.g. a name too long for the file system
        raise QxaiUsageError(f"--qxai-data {name}: cannot be used as a path ({exc.strerror or exc})") from None
    if not found:
        raise QxaiUsageError(f"--qxai-data {name}: file not found: {path}")
    _check_data(name, path)
    return name, path


def _check_data(name: str, path: Path) -> None:
    """Load a user dataset once now (its format is the bundled one of ``name``, else classification)."""
    from . import datasets
    from .errors import DatasetError

    try:
        if name == "esnli":
            datasets.load_esnli(None, 0, path)
        elif name == "ecqa":
            datasets.load_ecqa(None, 0, path)
        elif name == "lre":
            datasets.load_relations(path=path)
        else:
            datasets.load_classification(None, 0, path)
    except DatasetError as exc:
        raise QxaiUsageError(f"--qxai-data {name}: {exc}") from None


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _as_int(value: Any, name: str, minimum: int) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise QxaiUsageError(f"{name} expects a whole number, got {value!r}") from None
    if number < minimum:
        raise QxaiUsageError(f"{name} must be at least {minimum}, got {number}")
    return number
