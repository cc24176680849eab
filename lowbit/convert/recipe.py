"""Recipes: which encoding each tensor gets.

`--method` picks the encoding of the transformer's linear layers; embeddings and lm_head default
to q8 and norms/biases to f32. A TOML recipe adds rules (first match wins) for mixes::

    method = "q3"                    # optional: the linear layers' default
    [[rules]]
    pattern = "model.layers.*.mlp.down_proj.weight"
    encoding = "q4"
    group_size = 64
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lowbit.convert.architectures import is_linear_weight
from lowbit.errors import ConversionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Method:
    """A named preset: an encoding with its default parameters."""

    name: str
    encoding: str
    params: dict[str, Any]
    description: str
    needs_training: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("f32", "f32", {}, "32-bit float, lossless reference"),
        Method("f16", "f16", {}, "16-bit float"),
        Method("bf16", "bf16", {}, "bfloat16"),
        Method("q8", "q8", {"group_size": 0}, "8-bit symmetric int, one f16 scale per row"),
        Method("q4", "q4", {"group_size": 128}, "4-bit grouped int (G=128), 8-bit group scales"),
        Method("q3", "q3", {"group_size": 128}, "3-bit grouped int (G=128), 8-bit group scales"),
        Method("q2", "q2", {"group_size": 64}, "2-bit grouped int (G=64), 8-bit group scales"),
        Method("ternary", "ternary", {"scale_mode": "tensor"}, "BitNet b1.58 ternary, 2-bit codes", True),
        Method("ternary-1.6", "ternary-1.6", {"scale_mode": "tensor"}, "ternary, 5 trits per byte (1.6 bit)", True),
        Method("onebit", "onebit", {"layernorm": False}, "OneBit sign bits + f16 value vectors (SVID)", True),
        Method("keep", "q4", {"group_size": 128}, "GGUF input: re-pack every tensor whose grid lowbit holds exactly, q4 for the rest"),
    )
}
PARAM_KEYS = {"group_size", "scale_mode", "layernorm", "refine"}  # refine: HQQ-style scales (q2-q4)


@dataclass(frozen=True)
class Rule:
    pattern: str
    encoding: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    method: str = "q4"
    rules: list[Rule] = field(default_factory=list)
    embeddings: str = "q8"
    target_bpw: float | None = None

    def choose(self, name: str, shape: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
        """The encoding and params for one tensor (by its canonical name)."""
        for rule in self.rules:
            if fnmatch.fnmatchcase(name, rule.pattern):
                if len(shape) != 2 and rule.encoding not in ("f32", "f16", "bf16"):
                    continue  # quantised encodings apply to matrices only
                return rule.encoding, {**_defaults(rule.encoding), **rule.params}
        if len(shape) != 2:
            return "f32", {}
        method = METHODS[self.method]
        if is_linear_weight(name):
            return method.encoding, fit_group(method.params, shape[1])
        if method.encoding in ("f32", "f16", "bf16"):
            return method.encoding, {}
        return self.embeddings, _defaults(self.embeddings)

    def has_rule(self, name: str) -> bool:
        """Whether a recipe rule names this tensor (it then wins over method defaults)."""
        return any(fnmatch.fnmatchcase(name, rule.pattern) for rule in self.rules)

    def to_json(self) -> dict[str, Any]:
        out = {"method": self.method, "embeddings": self.embeddings, "rules": [asdict(r) for r in self.rules]}
        if self.target_bpw is not None:
            out["target_bpw"] = self.target_bpw
        return out


def fit_group(params: dict[str, Any], n_in: int) -> dict[str, Any]:
    """A preset's group size, shrunk to a standard size that divides the row when the preset's
    does not (576 = 9 × 64: padding to 640 would waste 11 % of the codes)."""
    params = dict(params)
    group = params.get("group_size")
    if group and n_in % group:
        params["group_size"] = next((g for g in (64, 32) if g < group and n_in % g == 0), group)
    return params


def _defaults(encoding: str) -> dict[str, Any]:
    for m in METHODS.values():
        if m.encoding == encoding:
            return dict(m.params)
    raise ConversionError(f"unknown encoding {encoding!r} (known: {', '.join(METHODS)})")


def check_method(method: str) -> Method:
    if method not in METHODS:
        raise ConversionError(f"unknown method {method!r} (run `lowbit convert --list-methods`; known: {', '.join(METHODS)})")
    return METHODS[method]


def load_recipe(path: str | Path | None, method: str) -> Recipe:
    """Build the recipe from --method and an optional TOML file (its rules win)."""
    check_method(method)
    if path is None:
        return Recipe(method=method)
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConversionError(f"{path}: cannot read recipe ({e})") from None
    method = data.get("method", method)
    check_method(method)
    rules = []
    for i, r in enumerate(data.get("rules", [])):
        if not isinstance(r, dict) or "pattern" not in r or "encoding" not in r:
            raise ConversionError(f"{path}: rules[{i}] needs 'pattern' and 'encoding'")
        params = {k: v for k, v in r.items() if k in PARAM_KEYS}
        unknown = set(r) - PARAM_KEYS - {"pattern", "encoding"}
        if unknown:
            raise ConversionError(f"{path}: rules[{i}] has unknown key(s) {sorted(unknown)}")
        _defaults(r["encoding"])
        rules.append(Rule(str(r["pattern"]), str(r["encoding"]), params))
    embeddings = data.get("embeddings", "q8")
    _defaults(embeddings)
    return Recipe(method=method, rules=rules, embeddings=embeddings)
