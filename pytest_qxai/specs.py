"""Quantization specs: the `--quant` grammar, the scheme table, and parsing (no torch import).

A spec is a scheme name with optional parameters: ``gptq4:group_size=128,calibration=64``. The
scheme table says which backend adapter implements a scheme, which pip extra installs it, which
import it needs, whether it runs on CPU, and which parameters it accepts with their types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Union

from .errors import QxaiUsageError

ParamValue = Union[int, float, bool, str]


@dataclass(frozen=True)
class Param:
    """One accepted parameter of a scheme: its type, default and a help phrase."""

    type: type
    default: ParamValue
    help: str
    choices: tuple[str, ...] = ()
    canonical: Callable[[str], str] | None = None
    """For list-valued text parameters: validates a value and returns its canonical text. Such a value may
    contain commas (``keep=17-19,mlp.20``); when unset it is left out of :attr:`QuantSpec.resolved`."""


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme the plugin knows: who implements it and what it accepts."""

    name: str
    backend: str
    bits: int
    description: str
    extra: str
    module: str
    cpu: bool = True
    params: dict[str, Param] = field(default_factory=dict)


def _gptq_params(default_calibration: int) -> dict[str, Param]:
    return {
        "group_size": Param(int, 128, "weights per quantization group (-1: one group per row)"),
        "calibration": Param(int, default_calibration, "number of bundled calibration texts"),
        "seed": Param(int, 0, "seed for calibration sampling"),
        "desc_act": Param(bool, False, "quantize columns in order of decreasing activation"),
        "damp": Param(float, 0.05, "dampening added to the Hessian diagonal"),
    }


GGUF_TYPES = {"q8_0": 8, "q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5}
"""GGML block types the ``gguf`` library can quantize (``gguf.quants.quantize``), with their bits per weight."""
GGUF_SCHEMES = [
    Scheme(f"gguf-{t}", "gguf", bits, f"GGUF {t.upper()} blocks (quantized and dequantized by the gguf library)",
           "ml", "gguf")
    for t, bits in GGUF_TYPES.items()
]

_CT_GROUP = {"group_size": Param(int, 128, "weights per quantization group (the preset's 128)")}
CT_SCHEMES = {
    "ct-w4a16": ("W4A16", 4, "compressed-tensors W4A16: int4 weights per group, float activations", _CT_GROUP),
    "ct-w8a16": ("W8A16", 8, "compressed-tensors W8A16: int8 weights per group, float activations", _CT_GROUP),
    "ct-w8a8": ("W8A8", 8, "compressed-tensors W8A8: int8 weights per channel, int8 activations per token", {}),
}
"""compressed-tensors presets: ``--quant`` name → (preset name, weight bits, description, parameters)."""

_BNB4 = {"double_quant": Param(bool, False, "quantize the quantization constants too")}
_HQQ = {"group_size": Param(int, 64, "weights per quantization group")}

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme("none", "none", 16, "no quantization: the reference against itself (a null check)", "", ""),
        Scheme(
            "bnb8", "bnb", 8, "bitsandbytes LLM.int8()", "bnb", "bitsandbytes",
            params={"threshold": Param(float, 6.0, "outlier threshold of LLM.int8()")},
        ),
        Scheme("bnb4", "bnb", 4, "bitsandbytes 4-bit NF4", "bnb", "bitsandbytes", params=dict(_BNB4)),
        Scheme("bnb4-fp4", "bnb", 4, "bitsandbytes 4-bit FP4", "bnb", "bitsandbytes", params=dict(_BNB4)),
        Scheme("gptq4", "gptq", 4, "GPTQ 4-bit (gptqmodel)", "gptq", "gptqmodel", params=_gptq_params(16)),
        Scheme("gptq8", "gptq", 8, "GPTQ 8-bit (gptqmodel)", "gptq", "gptqmodel", params=_gptq_params(16)),
        Scheme(
            "awq4", "gptq", 4, "AWQ 4-bit (gptqmodel; slow on CPU)", "gptq", "gptqmodel",
            params={k: v for k, v in _gptq_params(16).items() if k in ("group_size", "calibration", "seed")},
        ),
        Scheme("hqq4", "hqq", 4, "HQQ 4-bit, calibration-free", "hqq", "hqq", params=dict(_HQQ)),
        Scheme("hqq8", "hqq", 8, "HQQ 8-bit, calibration-free", "hqq", "hqq", params=dict(_HQQ)),
        Scheme("hqq2", "hqq", 2, "HQQ 2-bit (a strong degradation)", "hqq", "hqq", params=dict(_HQQ)),
        Scheme("quanto-int8", "quanto", 8, "optimum-quanto int8 weights", "quanto", "optimum.quanto"),
        Scheme("quanto-int4", "quanto", 4, "optimum-quanto int4 weights", "quanto", "optimum.quanto"),
        Scheme("quanto-int2", "quanto", 2, "optimum-quanto int2 weights (a strong degradation)", "quanto", "optimum.quanto"),
        Scheme("torchao-int8", "torchao", 8, "torchao int8 weight-only", "torchao", "torchao"),
        Scheme("torchao-int4", "torchao", 4, "torchao int4 weight-only (CUDA only)", "torchao", "torchao", cpu=False,
               params={"group_size": Param(int, 128, "weights per quantization group")}),
        *GGUF_SCHEMES,
        *(Scheme(name, "ctensors", bits, text, "ct", "compressed_tensors", params=dict(params))
          for name, (_, bits, text, params) in CT_SCHEMES.items()),
    ]
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class QuantSpec:
    """A parsed `--quant` value: the scheme and its parameters, defaults filled in."""

    scheme: Scheme
    params: tuple[tuple[str, ParamValue], ...] = ()

    @property
    def name(self) -> str:
        """The scheme name, e.g. ``gptq4``."""
        return self.scheme.name

    def get(self, key: str) -> ParamValue:
        """The value of a parameter (the given one, or the scheme's default)."""
        given = dict(self.params)
        if key in given:
            return given[key]
        return self.scheme.params[key].default

    @property
    def resolved(self) -> dict[str, ParamValue]:
        """Every parameter of the scheme with its effective value, sorted by key."""
        given = dict(self.params)
        return {k: self.get(k) for k in sorted(self.scheme.params)
                if k in given or self.scheme.params[k].canonical is None}

    def __str__(self) -> str:
        """The canonical text form, which parses back to an equal spec."""
        if not self.params:
            return self.name
        body = ",".join(f"{k}={_format(v)}" for k, v in self.params)
        return f"{self.name}:{body}"

    @property
    def slug(self) -> str:
        """A file-name-safe form of the canonical text."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", str(self)).strip("_")


def _format(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _convert(scheme: Scheme, key: str, raw: str) -> ParamValue:
    param = scheme.params[key]
    if param.canonical is not None:
        try:
            return param.canonical(raw)
        except ValueError as exc:
            raise QxaiUsageError(f"--quant {scheme.name}: {key}={raw}: {exc}") from None
    try:
        if param.type is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if param.type is int:
            return int(raw)
        if param.type is float:
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
            return value
    except ValueError:
        raise QxaiUsageError(
            f"--quant {scheme.name}: parameter '{key}' expects {param.type.__name__}, got '{raw}'"
        ) from None
    if param.choices and raw not in param.choices:
        raise QxaiUsageError(f"--quant {scheme.name}: '{key}' must be one of {', '.join(param.choices)}")
    return raw


def parse_spec(text: str) -> QuantSpec:
    """Parse ``name[:key=value,...]`` into a :class:`QuantSpec`, or raise a one-line usage error."""
    if not isinstance(text, str) or not text.strip():
        raise QxaiUsageError(f"--quant is empty; choose one of: {', '.join(SCHEMES)}")
    name, sep, body = text.strip().partition(":")
    name = name.strip().lower()
    if name not in SCHEMES:
        shown = name if _NAME.match(name) else repr(name)
        raise QxaiUsageError(f"unknown --quant scheme {shown}; choose one of: {', '.join(SCHEMES)}")
    scheme = SCHEMES[name]
    params: dict[str, ParamValue] = {}
    if sep and not body.strip():
        raise QxaiUsageError(f"--quant {name}: nothing after ':'; write {name}:key=value[,key=value]")
    for part in _parameter_parts(scheme, body):
        key, eq, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise QxaiUsageError(f"--quant {name}: malformed parameter '{part.strip()}'; write key=value")
        if not _KEY.match(key) or key not in scheme.params:
            valid = ", ".join(scheme.params) or "none"
            raise QxaiUsageError(f"--quant {name}: unknown parameter '{key}'; valid parameters: {valid}")
        if key in params:
            raise QxaiUsageError(f"--quant {name}: parameter '{key}' given twice")
        params[key] = _convert(scheme, key, raw)
    return QuantSpec(scheme, tuple(sorted(params.items())))


def _parameter_parts(scheme: Scheme, body: str) -> list[str]:
    """``key=value`` texts of a spec body; a part without ``=`` continues a list-valued parameter before it."""
    parts: list[str] = []
    for part in body.split(",") if body.strip() else []:
        previous = parts[-1].partition("=")[0].strip() if parts else ""
        param = scheme.params.get(previous)
        if "=" not in part and part.strip() and param is not None and param.canonical is not None:
            parts[-1] += "," + part
        else:
            parts.append(part)
    return parts


def describe_schemes() -> str:
    """A one-line list of the schemes for help texts."""
    return ", ".join(SCHEMES)


# --- keep=: sublayers left in full precision -------------------------------------------------------------

COMPONENTS = ("attn", "mlp")
"""The quantized sublayers of a decoder layer that ``keep=`` names: attention and MLP."""
KeepUnits = frozenset[tuple[int, str]]
_KEEP_ITEM = re.compile(r"^(?:(attn|mlp)\.)?(\d{1,4})(?:-(\d{1,4}))?$")


def parse_keep(text: str) -> KeepUnits:
    """``17-19,mlp.20,attn.3`` → ``{(17, 'attn'), (17, 'mlp'), …, (20, 'mlp'), (3, 'attn')}``; ValueError if malformed.

    A bare layer (or range) keeps both sublayers; ``attn.N`` / ``mlp.N`` keep one. Layers are 0-based.
    """
    units: set[tuple[int, str]] = set()
    for item in text.split(","):
        found = _KEEP_ITEM.match(item.strip().lower())
        if found is None:
            raise ValueError(f"'{item.strip()}' is not LAYER, FIRST-LAST, attn.LAYER or mlp.FIRST-LAST (0-based)")
        component, first, last = found[1], int(found[2]), int(found[3] if found[3] is not None else found[2])
        if last < first:
            raise ValueError(f"'{item.strip()}' is an empty range; write FIRST-LAST with FIRST <= LAST")
        units |= {(layer, c) for layer in range(first, last + 1) for c in ([component] if component else COMPONENTS)}
    return frozenset(units)


def _ranges(layers: list[int]) -> list[str]:
    """``[3, 4, 5, 9]`` → ``['3-5', '9']``."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and runs[-1][1] == layer - 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return [str(a) if a == b else f"{a}-{b}" for a, b in runs]


def format_keep(units: KeepUnits) -> str:
    """The canonical text of a keep set: whole layers first, then ``attn.`` and ``mlp.`` ranges, ascending."""
    layers = {layer for layer, _ in units}
    whole = [layer for layer in layers if all((layer, c) in units for c in COMPONENTS)]
    parts = _ranges(whole)
    for component in COMPONENTS:
        parts += [f"{component}.{r}" for r in _ranges([la for la, c in units if c == component and la not in whole])]
    return ",".join(parts)


def canonical_keep(text: str) -> str:
    """Validate a ``keep=`` value and return its canonical text (parses back to the same set)."""
    return format_keep(parse_keep(text))


def keep_units(spec: QuantSpec) -> KeepUnits:
    """The sublayers ``spec`` keeps in full precision (empty for schemes without ``keep``)."""
    if "keep" not in spec.scheme.params:
        return frozenset()
    return parse_keep(str(spec.get("keep"))) if spec.get("keep") else frozenset()


KEEP_BACKENDS = ("bnb", "hqq", "quanto", "torchao")
"""Backends whose library can leave named modules unquantized (see docs/blame.md for each mechanism)."""
KEEP = Param(str, "", "decoder sublayers left in full precision: LAYER, FIRST-LAST, attn.LAYER, mlp.FIRST-LAST",
             canonical=canonical_keep)
SCHEMES.update({name: replace(s, params={**s.params, "keep": KEEP})
                for name, s in SCHEMES.items() if s.backend in KEEP_BACKENDS})


def with_keep(spec: QuantSpec, units: KeepUnits) -> QuantSpec:
    """``spec`` keeping ``units`` in full precision as well (on top of any ``keep=`` it has)."""
    params = dict(spec.params)
    params["keep"] = format_keep(units | keep_units(spec))
    return QuantSpec(spec.scheme, tuple(sorted(params.items())))
