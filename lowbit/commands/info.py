"""`lowbit info FILE` and `lowbit verify FILE`. The summary itself is lowbit.file_info.summarize();
these commands only format it."""

from __future__ import annotations

import json
from typing import Any

import click

PROGRESS_MIN_BYTES = 64 << 20  # below this, verifying is too quick for a progress bar


def _safe(value: Any) -> str:
    """A header string as printable text (JSON allows lone surrogates, stdout does not)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _size(n: float) -> str:
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.2f} {unit}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _bpw(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _source_types(by: dict[str, int] | None) -> str:
    """`  from GGUF Q4_1 kept ×210, Q6_K re-quantised ×2` for tensors converted from a GGUF."""
    if not by:
        return ""
    return "  from GGUF " + ", ".join(f"{_safe(k)} ×{n}" for k, n in sorted(by.items(), key=lambda kv: -kv[1]))


def _format_summary(s: dict[str, Any]) -> list[str]:
    lines = []

    def row(label: str, text: str) -> None:
        lines.append(f"{label:<14}{text}")

    row("file", f"{_safe(s['path'])} ({_size(s['file_size'])}, format {s['format_version']})")
    row("architecture", _safe(s["architecture"] or "unknown"))
    row("source arch", _safe(s["source_architecture"] or "unknown"))
    row(
        "parameters",
        f"{s['parameters']:,} in {_n(s['tensor_count'], 'tensor')}, {_n(s['blob_count'], 'blob')}",
    )
    row(
        "bits/weight",
        f"{_bpw(s['bits_per_weight'])} overall, {_bpw(s['linear_bits_per_weight'])} linear layers "
        f"({s['linear_parameters']:,} weights), {_bpw(s['file_bits_per_weight'])} whole file",
    )
    for i, (name, e) in enumerate(s["encodings"].items()):
        row(
            "encodings" if i == 0 else "",
            f"{_safe(name):<12} {e['weights']:>14,} weights {_size(e['bytes']):>10}  {_bpw(e['bits_per_weight'])} bpw"
            + _source_types(e.get("source_types")),
        )
    tok = s["tokenizer"]
    kind = _safe(tok["kind"] or "unknown") + (f" ({_safe(tok['blob'])})" if tok["blob"] else "")
    row("tokenizer", kind)
    row("chat template", "yes" if tok["chat_template"] else "no")
    ctx = s["context_length"]
    row("context", f"{ctx:,} tokens" if ctx is not None else "unknown")
    p = s["provenance"]
    src = _safe(p["source"] or "unknown") + (f" @ {_safe(p['revision'])}" if p["revision"] else "")
    row("source", src)
    row("converter", _safe(p["converter"] or "unknown"))
    row("created", _safe(p["created"] or "unknown"))
    method = _safe(p["recipe_method"] or "unknown")
    row("recipe", method + (" (calibrated)" if p["calibrated"] else ""))
    if s["quality"]:
        items = ", ".join(f"{_safe(k)} {_safe(v)}" for k, v in s["quality"].items())
        row("quality", items)
    return lines


def _format_tensors(rows: list[dict[str, Any]]) -> list[str]:
    table = [("name", "encoding", "shape", "bpw", "rel_error")]
    for r in rows:
        rel = r["rel_error"]
        table.append(
            (
                _safe(r["name"]),
                _safe(r["encoding"]),
                "x".join(str(d) for d in r["shape"]) or "scalar",
                _bpw(r["bits_per_weight"]),
                "-" if rel is None else f"{rel:.4g}",
            )
        )
    widths = [max(len(t[i]) for t in table) for i in range(5)]
    lines = []
    for t in table:
        lines.append(
            f"{t[0]:<{widths[0]}}  {t[1]:<{widths[1]}}  {t[2]:>{widths[2]}}  {t[3]:>{widths[3]}}  {t[4]:>{widths[4]}}"
        )
    return lines


@click.command()
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--tensors", "show_tensors", is_flag=True, help="Also list every tensor.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(file: str, show_tensors: bool, as_json: bool) -> None:
    """Show what a .lowbit FILE holds: model, size, bits/weight, tokenizer and provenance."""
    from lowbit.file_info import summarize

    summary = summarize(file, tensors=show_tensors)
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=True))
        return
    for line in _format_summary(summary):
        click.echo(line)
    if show_tensors:
        click.echo("")
        for line in _format_tensors(summary["tensors"]):
            click.echo(line)


@click.command()
@click.argument("file", type=click.Path(dir_okay=True))
def verify(file: str) -> None:
    """Check a .lowbit FILE's structure and the checksum of every tensor and blob."""
    from tqdm import tqdm

    from lowbit.formats import LowbitReader

    with LowbitReader(file) as reader:  # opening validates the whole structure (SPEC.md 5)
        n_tensors, n_blobs = len(reader.tensors), len(reader.blob_names())
        small = reader.file_size < PROGRESS_MIN_BYTES
        sizes = {name: t.nbytes for name, t in reader.tensors.items()}
        # progress in tensor bytes (blobs, checked last, are the small tokenizer files);
        # disable=None: a bar only on a terminal; leave=False: an error line is not mixed with it
        bar = tqdm(
            total=sum(sizes.values()),
            unit="B",
            unit_scale=True,
            desc="verifying",
            disable=True if small else None,
            leave=False,
        )
        with bar:
            for kind, name in reader.iter_verify():
                bar.update(sizes[name] if kind == "tensor" else 0)
    click.echo(f"OK: {n_tensors} tensors, {n_blobs} blobs, checksums match")
