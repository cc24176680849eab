"""`lowbit convert`: stream a checkpoint tensor by tensor into one .lowbit file.

Memory stays bounded by the largest tensor: weights are memory-mapped (safetensors) or
dequantised one at a time (GGUF), quantised, appended to the writer and dropped.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowbit import __version__
from lowbit.convert.architectures import (
    SKIPPED_SUFFIXES,
    ModelSpec,
    canonical_name,
    is_linear_weight,
    model_spec,
)
from lowbit.convert.bitnet import ternary_scale, unpack_hf_ternary
from lowbit.convert.hf_source import sha256_file
from lowbit.convert.models import FEATURE_VERSIONS, CheckpointView, required_features
from lowbit.convert.models.base import llama_names, llama_optional
from lowbit.convert.recipe import METHODS, Recipe, load_recipe
from lowbit.convert.sources import check_weight, open_checkpoint
from lowbit.errors import ConversionError, LowbitError
from lowbit.formats import LowbitWriter
from lowbit.formats.encodings import EncodedTensor
from lowbit.formats.encodings.ternary import TERNARY, TERNARY_1P6
from lowbit.quant import quantize, relative_error
from lowbit.runtime.config import ModelArgs
from lowbit.runtime.validate import (
    check_config,
    check_generation,
    check_tensors,
    check_tokenizer,
    check_tokenizer_metadata,
)

if TYPE_CHECKING:
    from lowbit.quant.calibrate import CalibrationConfig

ProgressFn = Callable[[str, int, int], None]
GENERATION_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "do_sample")


@dataclass
class TensorReport:
    name: str
    encoding: str
    shape: tuple[int, ...]
    nbytes: int
    rel_error: float
    source_type: str | None = None  # the GGML type of a GGUF source tensor
    kept: bool = False  # re-packed losslessly (--method keep), not re-quantised


@dataclass
class ConvertResult:
    path: Path
    seconds: float
    file_size: int
    tensors: list[TensorReport]
    warnings: list[str] = field(default_factory=list)

    @property
    def linear_bits_per_weight(self) -> float:
        lin = [t for t in self.tensors if is_linear_weight(t.name)]
        return 8.0 * sum(t.nbytes for t in lin) / max(1, sum(int(np.prod(t.shape)) for t in lin))

    @property
    def bits_per_weight(self) -> float:
        mats = [t for t in self.tensors if len(t.shape) == 2]
        return 8.0 * sum(t.nbytes for t in mats) / max(1, sum(int(np.prod(t.shape)) for t in mats))

    def worst(self, n: int = 3) -> list[TensorReport]:
        return sorted(self.tensors, key=lambda t: -t.rel_error)[:n]


def expected_tensors(spec: ModelSpec) -> set[str]:
    """The tensors the checkpoint must have: its module's own list, else the Llama block's."""
    return set(spec.tensors.required) if spec.tensors is not None else llama_names(spec.config)


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def tokenizer_section(files: dict[str, bytes]) -> tuple[str, bytes, dict[str, Any]]:
    """(blob name, blob bytes, metadata.tokenizer) from the checkpoint's tokenizer files."""
    if "tokenizer.json" in files:
        kind, blob = "tokenizers", "tokenizer.json"
    elif "tokenizer.model" in files:
        kind, blob = "sentencepiece", "tokenizer.model"
    else:
        raise ConversionError("the checkpoint has no tokenizer.json or tokenizer.model")
    cfg: dict[str, Any] = {}
    if "tokenizer_config.json" in files:
        try:
            cfg = json.loads(files["tokenizer_config.json"])
        except ValueError:
            raise ConversionError("tokenizer_config.json is not valid JSON") from None
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None and "chat_template.jinja" in files:
        template = files["chat_template.jinja"].decode("utf-8")
    if template is None and "chat_template.json" in files:
        template = json.loads(files["chat_template.json"]).get("chat_template")
    specials = [
        v.get("content")
        for v in (cfg.get("added_tokens_decoder") or {}).values()
        if isinstance(v, dict) and v.get("special")
    ]
    meta = {
        "kind": kind,
        "blob": blob,
        "chat_template": template,
        "bos_token": _token_str(cfg.get("bos_token")),
        "eos_token": _token_str(cfg.get("eos_token")),
        "pad_token": _token_str(cfg.get("pad_token")),
        "unk_token": _token_str(cfg.get("unk_token")),
        "add_bos_token": cfg.get("add_bos_token"),
        "add_eos_token": cfg.get("add_eos_token"),
        "special_tokens": [s for s in specials if s],
    }
    return blob, files[blob], meta


def _provenance(ckpt: Any, source: str, recipe: Recipe) -> dict[str, Any]:
    if hasattr(ckpt, "file_hashes"):
        hashes = ckpt.file_hashes()
    else:
        p = Path(source)
        hashes = {p.name: sha256_file(p)}
    return {
        "source": getattr(ckpt, "source_id", None) or str(source),
        "revision": getattr(ckpt, "revision", None),
        "files": hashes,
        "converter": f"lowbit {__version__}",
        "recipe": recipe.to_json(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _native_ternary(
    ckpt: Any, name: str, w: np.ndarray, spec: ModelSpec, base3: bool
) -> EncodedTensor:
    """A BitNet linear weight, packed (uint8 + weight_scale) or latent (absmean), to trits."""
    enc = TERNARY_1P6 if base3 else TERNARY
    if spec.ternary_weights == "packed":
        scale_name = name[: -len("weight")] + "weight_scale"
        if scale_name not in ckpt:
            raise ConversionError(f"tensor {name} is ternary but {scale_name} is missing")
        if w.dtype == np.uint8:
            trits = unpack_hf_ternary(w, _out_features(spec, name, w))
        else:  # unpacked by transformers before save_pretrained: values already in {-1, 0, 1}
            trits = np.asarray(w, dtype=np.float32)
            if not np.isin(trits, (-1.0, 0.0, 1.0)).all():
                raise ConversionError(f"tensor {name} should hold ternary values but holds others")
            trits = trits.astype(np.int8)
        return enc.pack(trits, ternary_scale(ckpt.get(scale_name), spec.weight_scale_divides))
    from lowbit.quant.ternary import absmean_ternary

    trits, scale = absmean_ternary(w)
    return enc.pack(trits, scale)


def _out_features(spec: ModelSpec, name: str, packed: np.ndarray) -> int:
    cfg = spec.config
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    out = {
        "q_proj": cfg["num_attention_heads"] * cfg["head_dim"],
        "k_proj": kv,
        "v_proj": kv,
        "o_proj": cfg["hidden_size"],
        "gate_proj": cfg["intermediate_size"],
        "up_proj": cfg["intermediate_size"],
        "down_proj": cfg["hidden_size"],
    }[name.split(".")[-2]]
    if -(-out // 4) != packed.shape[0]:
        raise ConversionError(f"tensor {name}: packed shape {list(packed.shape)} does not fit {out} output rows")
    return out


def convert(
    source: str | Path,
    output: str | Path,
    method: str = "q4",
    recipe: str | Path | None = None,
    revision: str | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    calibration: CalibrationConfig | None = None,
    target_bpw: float | None = None,
    rotate: int | None = None,
    trained: dict[str, EncodedTensor] | None = None,
    training: dict[str, Any] | None = None,
) -> ConvertResult:
    """Convert a checkpoint into a .lowbit file and report what was written.

    `rotate` (a seed) folds random orthogonal rotations into the weights first
    (`lowbit.quant.rotation`). `trained` (from `lowbit.train`) holds tensors already packed by a
    learned method: they are written as they are instead of quantised here; `training` is its
    provenance record."""
    start = time.perf_counter()
    output = Path(output)
    if output.exists() and not force:
        raise ConversionError(f"{output} already exists (pass --force to overwrite)")
    if output.is_dir():
        raise ConversionError(f"{output} is a folder, expected a file path")
    rec = load_recipe(recipe, method)
    if rec.method == "keep" and (calibration is not None or target_bpw is not None):
        raise ConversionError("--method keep re-packs the GGUF's own grid: it takes no --calibrate or --target-bpw")
    if rec.method == "keep" and rotate is not None:
        raise ConversionError("--method keep re-packs the GGUF's own grid: it takes no --rotate")
    with _malformed_input(source):
        ckpt = open_checkpoint(str(source), revision)
        if rec.method == "keep" and not hasattr(ckpt, "gguf_tensor"):
            raise ConversionError("--method keep applies to GGUF input only (re-packs its quantised blocks)")
        _check_source_types(ckpt.config)
        spec = model_spec(ckpt.config)
    if spec.tensors is not None:  # the checkpoint in lowbit's tensor names (splits, renames: models/*)
        ckpt = CheckpointView(ckpt, spec.tensors)
    native = spec.ternary_weights is not None
    if rotate is not None:
        from lowbit.quant.rotation import RotatedCheckpoint, check_rotatable

        if native:
            raise ConversionError("--rotate does not apply to ternary (BitNet) checkpoints")
        if trained is not None:
            raise ConversionError("--rotate does not combine with learned tensors (--train): they were learned unrotated")
        check_rotatable(spec.config, spec.features, ckpt.tensor_names())
        ckpt = RotatedCheckpoint(ckpt, spec.config, rotate)
        if ckpt.online:
            spec.config["down_proj_hadamard"] = True
        if ckpt.residual:
            spec.config["tie_word_embeddings"] = False
    names = [n for n in ckpt.tensor_names() if not n.endswith(SKIPPED_SUFFIXES)]
    canon = {canonical_name(n): n for n in names}
    required = expected_tensors(spec)
    missing = sorted(required - set(canon))
    if missing:
        raise ConversionError(f"checkpoint lacks tensor {missing[0]} (and {len(missing) - 1} more)" if len(missing) > 1 else f"checkpoint lacks tensor {missing[0]}")
    optional = spec.tensors.optional if spec.tensors is not None else llama_optional
    unexpected = sorted(n for n in canon if n not in required and not optional(n))
    if unexpected:
        raise ConversionError(f"unexpected tensor {unexpected[0]} for {spec.source_architecture} (an unsupported variant?)")
    if target_bpw is not None and spec.ternary_weights is not None:
        raise ConversionError("--target-bpw does not apply to ternary (BitNet) checkpoints")
    with _malformed_input(source):
        blob_name, blob, tok_meta = tokenizer_section(ckpt.tokenizer_files)
        gen = {k: ckpt.generation_config[k] for k in GENERATION_KEYS if k in ckpt.generation_config}
    config = dict(spec.config)
    if "lm_head.weight" not in canon:
        config["tie_word_embeddings"] = True
    args = check_config(config)  # the runtime's checks, before anything is written
    check_generation(gen)
    check_tokenizer_metadata(tok_meta, [blob_name])
    check_tokenizer(args, _tokenizer(tok_meta, blob))
    calibrate = calibration is not None and not native
    get = tensor_getter(ckpt) if calibrate or target_bpw is not None else None
    calib_ids = _calibration_ids(calibration, blob, tok_meta) if calibrate else None
    if target_bpw is not None:
        from lowbit.convert.target_bpw import plan

        # with --calibrate, sensitivity is the output error on the calibration inputs
        measured = (ModelArgs.from_dict(spec.config), calib_ids, calibration) if calibrate else None
        done: list[str] = []

        def planned(name: str) -> None:
            done.append(name)
            if progress is not None:
                progress(f"{name} (sensitivity)", len(done), sum(map(is_linear_weight, canon)))

        rec.rules = plan(get, sorted(canon), target_bpw, progress=planned, calibration=measured) + rec.rules
        rec.target_bpw = target_bpw
    if not native and hasattr(ckpt, "shape"):  # (BitNet's packed weights have other shapes)
        with _malformed_input(source):
            check_tensors(args, {canonical_name(n): {"shape": ckpt.shape(n), "encoding": None} for n in names})
    metadata = {
        "architecture": spec.architecture,
        "config": config,
        "features": {f: FEATURE_VERSIONS[f] for f in required_features(config)},
        "tokenizer": tok_meta,
        "generation": gen,
        "provenance": _provenance(ckpt, str(source), rec),
    }
    if rotate is not None:
        metadata["provenance"]["rotation"] = ckpt.rot.provenance(ckpt.residual, ckpt.online)
    warnings: list[str] = []
    if native and rec.method != "keep" and METHODS[rec.method].encoding not in ("ternary", "ternary-1.6"):
        warnings.append(
            f"{spec.source_architecture} is a ternary (BitNet) model: its linear layers are stored "
            f"losslessly as ternary, not {rec.method}"
        )
    reports: list[TensorReport] = []
    if trained is not None and (calibrate or native or rec.method == "keep"):
        raise ConversionError("learned tensors (--train) combine with neither --calibrate, --method keep nor BitNet input")
    if training is not None:
        metadata["provenance"]["training"] = training
    with LowbitWriter(output, metadata, overwrite=force) as writer:
        writer.add_blob(blob_name, blob)
        total = len(names)

        def write(name: str, w: Any, encoded: EncodedTensor, err: float) -> None:
            info: dict[str, Any] = {"rel_error": round(err, 6)}
            src_type = _source_type(ckpt, name)
            if src_type is not None:
                info["source_type"] = src_type
                info["kept"] = isinstance(w, _Kept)
            writer.add_tensor(name, encoded, info=info)
            reports.append(TensorReport(name, encoded.encoding, tuple(encoded.shape), encoded.nbytes, err,
                                        src_type, isinstance(w, _Kept)))
            if progress is not None:
                progress(name, len(reports), total)

        if calibrate:
            metadata["provenance"]["calibration"] = _write_calibrated(get, spec, rec, calibration, calib_ids, write)
        else:
            order = set(names)
            for src_name, w in _iter_source(ckpt, rec, native):
                if src_name not in order:
                    continue
                name = canonical_name(src_name)
                if isinstance(w, _Kept):
                    write(name, w, w.encoded, 0.0)
                    continue
                if isinstance(w, _RowChunks):
                    encoded, err = w.encode()
                    write(name, w, encoded, err)
                    continue
                check_weight(name, w)
                if trained is not None and name in trained:
                    w = np.asarray(w, dtype=np.float32)
                    encoded = trained[name]
                    if tuple(encoded.shape) != tuple(w.shape):
                        raise ConversionError(f"tensor {name}: learned shape {list(encoded.shape)} is not the checkpoint's {list(w.shape)}")
                    write(name, w, encoded, relative_error(w, encoded.dequantize()))
                    del w, encoded
                    continue
                if native and is_linear_weight(name):
                    encoded = _native_ternary(ckpt, src_name, w, spec, base3=rec.method == "ternary-1.6")
                    err = 0.0 if spec.ternary_weights == "packed" else relative_error(w, encoded.dequantize())
                else:
                    encoding, params = rec.choose(name, tuple(w.shape))
                    if rec.method == "keep" and is_linear_weight(name) and not rec.has_rule(name):
                        from lowbit.convert.keep import fallback

                        encoding, params = fallback(_source_type(ckpt, name) or "") or (encoding, params)
                    w = np.asarray(w, dtype=np.float32)
                    encoded = quantize(w, encoding, params)
                    err = relative_error(w, encoded.dequantize())
                write(name, w, encoded, err)
                if hasattr(ckpt, "release"):
                    ckpt.release(src_name)
                del w, encoded
        if trained is not None:
            unwritten = sorted(set(trained) - {r.name for r in reports})
            if unwritten:
                raise ConversionError(f"learned tensor {unwritten[0]} is not in the checkpoint")
        # what the runtime will check at load, on what is about to be written (an exception
        # here aborts the writer: no file)
        check_tensors(args, {r["name"]: r for r in writer.tensor_records})
        if any(r.source_type for r in reports):
            metadata["provenance"]["source_types"] = _source_types(reports)
    lin_err = [t.rel_error for t in reports if is_linear_weight(t.name)]
    warning = None if trained else weight_error_warning(lin_err)  # learned tensors: measure them, not their weight error
    if warning:
        warnings.append(warning)
    return ConvertResult(output, time.perf_counter() - start, output.stat().st_size, reports, warnings)


# Mean relative weight error ‖W − Ŵ‖/‖W‖ of the linear layers against what it did to SmolLM2-135M
# (PPL on lowbit/data/eval.txt, f32 24.5; docs/quality.md): q8 0.009 (1.00×), q4 RTN 0.089 (1.27×),
# q3 RTN 0.184 (3.3×), q2 RTN 0.380 (666×), ternary 0.556, onebit 0.610 (10⁵×-10⁶×).
BROKEN_ERROR = 0.30
DEGRADED_ERROR = 0.15


def weight_error_warning(errors: list[float]) -> str | None:
    """What the measured weight error predicts, whatever the method's name (None: nothing to say)."""
    if not errors:
        return None
    mean = float(np.mean(errors))
    bad = sum(e >= BROKEN_ERROR for e in errors)
    if mean >= BROKEN_ERROR or bad >= max(1, len(errors) // 10):  # a few broken layers break it too
        where = f"mean {mean:.2f}" + (f", {bad} of {len(errors)} layers ≥ {BROKEN_ERROR}" if bad < len(errors) else "")
        return (
            f"this conversion destroys its quality: relative weight error of the linear layers {where} "
            f"(≥ {BROKEN_ERROR} predicts a broken model; q2 at 0.38 multiplied SmolLM2's "
            "perplexity by hundreds). Expect broken output unless the model was trained for this "
            "encoding; try more bits or --calibrate, and measure it with --eval or `lowbit eval`."
        )
    if mean >= DEGRADED_ERROR:
        return (
            f"large quantisation error: mean relative weight error {mean:.2f} of the linear layers "
            f"(≥ {DEGRADED_ERROR}: expect clearly worse output, q3 at 0.18 tripled SmolLM2's perplexity); "
            "--calibrate or more bits reduce it, --eval measures it."
        )
    return None


def perplexity_warning(ppl: float, reference: float) -> str | None:
    """What a measured PPL ratio to the f32 conversion says about the model (None: fine)."""
    ratio = ppl / reference if reference > 0 else float("inf")
    if not ratio < 3.0:
        return (f"perplexity {ppl:.1f} is {ratio:.1f}× the f32 conversion's {reference:.1f}: this model "
                "is broken for ordinary use (try more bits or --calibrate)")
    if ratio >= 1.5:
        return (f"perplexity {ppl:.1f} is {ratio:.2f}× the f32 conversion's {reference:.1f}: expect clearly "
                "worse output than the original")
    return None


def _tokenizer(tok_meta: dict[str, Any], blob: bytes) -> Any:
    from lowbit.runtime.tokenizer import Tokenizer

    return Tokenizer.from_bytes(tok_meta["kind"], blob, tok_meta)


INTEGER_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "sliding_window")


def _check_source_types(config: dict[str, Any]) -> None:
    """The checkpoint's integer hyper-parameters are integers: int() would turn "4" into 4 and
    64.5 into 64 without a word (null is left to the architecture's defaults)."""
    for key in INTEGER_FIELDS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConversionError(f"config.json: field {key!r} must be an integer, got {value!r:.40}")


@contextmanager
def _malformed_input(source: str | Path) -> Iterator[None]:
    """Reading a checkpoint's metadata: a malformed file (a field of the wrong type, a head count
    of 0, a missing key) becomes one ConversionError line instead of a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError, OverflowError,
            AttributeError, RecursionError) as e:
        if isinstance(e, LowbitError):
            raise
        text = " ".join(str(e).split())[:200]
        raise ConversionError(f"{source}: malformed checkpoint ({type(e).__name__}: {text})") from None


ROW_SEPARABLE = ("f32", "f16", "bf16", "q8", "q2", "q3", "q4")
CHUNK_WEIGHTS = 16 << 20  # tensors above this many weights are quantised in row blocks


class _RowChunks:
    """A large row-separable tensor (an embedding, lm_head) quantised block by block, so memory
    stays at one block of float32 rows instead of the whole widened matrix."""

    def __init__(self, ckpt: Any, name: str, shape: list[int], encoding: str, params: dict[str, Any]) -> None:
        self.ckpt, self.name, self.shape = ckpt, name, shape
        self.encoding, self.params = encoding, params

    def encode(self) -> tuple[EncodedTensor, float]:
        out, n_in = self.shape
        step = max(1, CHUNK_WEIGHTS // n_in)
        pieces, num, den = [], 0.0, 0.0
        for start in range(0, out, step):
            w = self.ckpt.rows(self.name, start, min(start + step, out))
            check_weight(canonical_name(self.name), w)
            enc = quantize(w, self.encoding, self.params)
            num += float(np.sum((enc.dequantize() - w) ** 2, dtype=np.float64))
            den += float(np.sum(w.astype(np.float64) ** 2))
            pieces.append(enc)
        self.ckpt.release(self.name)
        if den == 0:
            raise ConversionError(f"tensor {canonical_name(self.name)} is all zeros (a broken checkpoint?)")
        parts = {k: np.concatenate([p.parts[k] for p in pieces]) for k in pieces[0].parts}
        encoded = EncodedTensor(self.encoding, (out, n_in), pieces[0].params, parts)
        return encoded, (num**0.5 / den**0.5 if den > 0 else 0.0)


@dataclass
class _Kept:
    """A GGUF tensor re-packed losslessly (`lowbit.convert.keep`)."""

    encoded: EncodedTensor
    kind: str


def _source_type(ckpt: Any, name: str) -> str | None:
    """The GGML type of a GGUF tensor (by canonical name), None for other sources."""
    if not hasattr(ckpt, "gguf_tensor"):
        return None
    from lowbit.convert.gguf_quants import type_name

    src = {canonical_name(n): n for n in ckpt.tensor_names()}.get(name)
    t = None if src is None else ckpt.gguf_tensor(src)
    return None if t is None else type_name(t.tensor_type)


def _source_types(reports: list[TensorReport]) -> dict[str, dict[str, int]]:
    """encoding -> {GGML source type (+ " kept" when re-packed): tensor count}, for `lowbit info`."""
    out: dict[str, dict[str, int]] = {}
    for r in reports:
        if r.source_type is not None:
            key = r.source_type + (" kept" if r.kept else "")
            by = out.setdefault(r.encoding, {})
            by[key] = by.get(key, 0) + 1
    return out


def _iter_source(ckpt: Any, rec: Recipe, native: bool = False):
    """(name, float32 array, _RowChunks or _Kept) for every tensor, in the source's order."""
    if rec.method == "keep":
        from lowbit.convert.keep import keep_tensor

        for name in ckpt.tensor_names():
            encoded, kind = keep_tensor(ckpt, name)
            yield name, (ckpt.get(name) if encoded is None else _Kept(encoded, kind))
        return
    if not hasattr(ckpt, "rows"):
        yield from ckpt.iter_tensors()
        return
    for name in ckpt.tensor_names():
        shape = ckpt.shape(name)
        big = len(shape) == 2 and shape[0] * shape[1] > CHUNK_WEIGHTS
        if big and ckpt.dtype(name) in ("F32", "F16", "BF16") and not (native and is_linear_weight(canonical_name(name))):
            encoding, params = rec.choose(canonical_name(name), tuple(shape))
            if encoding in ROW_SEPARABLE:
                yield name, _RowChunks(ckpt, name, shape, encoding, params)
                continue
        yield name, ckpt.get(name)


def tensor_getter(ckpt: Any) -> Callable[[str], np.ndarray | None]:
    """Random access to float32 tensors by canonical name (GGUF sources are read once into memory)."""
    if hasattr(ckpt, "get") and hasattr(ckpt, "__contains__"):
        by_canon = {canonical_name(n): n for n in ckpt.tensor_names()}

        def get(name: str) -> np.ndarray | None:
            src = by_canon.get(name)
            if src is None:
                return None
            w = np.asarray(ckpt.get(src), dtype=np.float32)
            check_weight(name, w)
            return w

        return get
    tensors = {canonical_name(n): np.asarray(w, dtype=np.float32) for n, w in ckpt.iter_tensors()}
    for n, w in tensors.items():
        check_weight(n, w)
    return tensors.get


def _calibration_ids(cfg: CalibrationConfig, tokenizer_blob: bytes, tok_meta: dict[str, Any]) -> np.ndarray:
    """The calibration sequences [n, seq_len] of cfg's text, in the file's tokenizer."""
    from lowbit.quant.calibrate import calibration_batches
    from lowbit.runtime.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_bytes(tok_meta["kind"], tokenizer_blob, tok_meta)
    return calibration_batches(tokenizer.encode(cfg.text, add_special_tokens=False), cfg.seq_len, cfg.sequences)


def _write_calibrated(
    get: Callable[[str], np.ndarray | None],
    spec: ModelSpec,
    rec: Recipe,
    cfg: CalibrationConfig,
    ids: np.ndarray,
    write: Callable[[str, np.ndarray, EncodedTensor, float], None],
) -> dict[str, Any]:
    """Embeddings, final norm and head by round-to-nearest; every layer calibrated in order."""
    from lowbit.quant.calibrate import calibrate_layers

    args = ModelArgs.from_dict(spec.config)
    encoded = {}
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        w = get(name)
        if w is None:
            continue
        enc, params = rec.choose(name, tuple(w.shape))
        encoded[name] = quantize(w, enc, params)
        write(name, w, encoded[name], relative_error(w, encoded[name].dequantize()))
    for name, w, enc in calibrate_layers(args, get, rec.choose, ids, encoded["model.embed_tokens.weight"], cfg):
        write(name, w, enc, relative_error(w, enc.dequantize()))
    return cfg.provenance(int(ids.size))


__all__ = ["ConvertResult", "convert"]
