"""Reading the AArch64 dot products' instructions on any host: each encoding's NEON dot (written
beside its x86 twin: `ternary`, `onebit`, `q8`, `grouped`, `affine`) is built on raw pointers
by an `emit_*_neon` function; `aarch64_asm(name)` compiles one for an AArch64 target with
DotProd and i8mm (LLVM's own backend, no ARM machine needed) and `inner_loop` picks out the
loop that holds its `sdot` / `smmla`. The tests check every dot's loop this way on x86 too, and
`tools/arm64/neon_asm.py` prints them (numba's own assembly when run on ARM64).
"""

from __future__ import annotations

import re

from llvmlite import binding as llvm
from llvmlite import ir

from lowbit.runtime.kernels import affine, grouped, onebit, q8, ternary
from lowbit.runtime.kernels import llvm_ir as lir

_P8 = lir.I8.as_pointer()
_PF = lir.F32.as_pointer()
DOTS = {  # name: (emit, return type, argument types) of each NEON dot
    "dot_ternary": (ternary.emit_ternary_neon, lir.I32, [_P8, _P8, lir.I64]),
    "dot_ternary_1p6": (ternary.emit_ternary_1p6_neon, lir.I32, [_P8, _P8, lir.I64]),
    "dot_b1": (onebit.emit_b1_neon, lir.I32, [_P8, _P8, lir.I64, lir.I64, _P8]),
    "dot_q8": (q8.emit_q8_neon, lir.F32, [_P8, _P8, _PF, lir.I64]),
    "dot_q4_i8": (grouped.emit_q4_i8_neon, lir.F32, [_P8, _P8, _PF, _P8, lir.I64, lir.I64]),
    "dot_q4f_i8": (affine.emit_q4f_i8_neon, lir.F32, [_P8, _P8, _PF, lir.I64]),
    "dot_q4_tokens": (lambda b, *a: grouped.emit_q4_tokens(b, "neon", *a), lir.V4F32,
                      [_P8, _P8, lir.I64, _PF, _PF, lir.I64, _P8, _P8, lir.I64, lir.I64, lir.I64]),
    "dot_q8_2x2": (q8.emit_q8_2x2_neon, lir.V4F32, [_P8, _P8, _P8, _P8, _PF, lir.I64]),
}


MACS = {"sdot": 16, "udot": 16, "smmla": 32}  # int8 multiply-adds per instruction


def _loops(asm: str) -> list[list[str]]:
    """Each loop's instructions: from a label to the branch back to it."""
    lines = [ln.strip() for ln in asm.splitlines()]
    loops = []
    for k, s in enumerate(lines):
        m = re.match(r"^([.\w$]+):", s)
        if not m:
            continue
        body = []
        for t in lines[k + 1 :]:
            if not t or t.startswith((".", "//", "@")) or re.match(r"^[.\w$]+:", t):
                continue
            body.append(t)
            if re.match(r"^b(\.\w+)?\s+" + re.escape(m.group(1)) + "$", t) or re.match(
                r"^(cbn?z|tbn?z)\b.*" + re.escape(m.group(1)) + "$", t
            ):
                loops.append(body)
                break
            if t.startswith(("ret", "b\t")) or t == "ret":
                break
    return loops


def inner_loop(asm: str) -> list[str]:
    """The hot loop: of the loops holding dot instructions, the fewest instructions per MAC."""
    hot = [b for b in _loops(asm) if any(i.split()[0] in MACS for i in b)]
    macs = [sum(MACS.get(i.split()[0], 0) for i in b) for b in hot]
    return min(zip(hot, macs), key=lambda bm: len(bm[0]) / bm[1])[0] if hot else []


def aarch64_asm(name: str, features: str = "+neon,+dotprod,+i8mm") -> str:
    """LLVM's AArch64 assembly of the NEON dot `name` (a standalone function), optimised as
    numba would (-O3)."""
    emit, ret, argtys = DOTS[name]
    mod = ir.Module(name=f"neon_{name}")
    mod.triple = "aarch64-unknown-linux-gnu"
    fn = ir.Function(mod, ir.FunctionType(ret, argtys), name=name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(emit(b, *fn.args))
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    tm = llvm.Target.from_triple(mod.triple).create_target_machine(cpu="generic", features=features, opt=3)
    parsed = llvm.parse_assembly(str(mod))
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(parsed, pb)
    return tm.emit_assembly(parsed)
