"""The LLVM-IR building blocks that the encodings' vector dot products (numba `@intrinsic`) share.

LLVM's auto-vectoriser never forms `vpmaddubsw` (u8 × i8 → i16 pair sums, 32 multiply-adds per
instruction) from numba loops, and numba's loops reduce every group horizontally; so the hot
row dots are written as vector IR, each in its encoding's module (`ternary`, `onebit`, `q8`,
`grouped`, `affine`). This module holds what they have in common:

- the IR types, constant splats and a scalar broadcast;
- the intrinsic declarations (x86 `pmaddubsw` / `pmaddwd` / `psign` / `vpdpbusd`, and the
  portable `fmuladd`, `abs` and vector reductions) and the horizontal sums;
- `loop`, the one counted-loop builder every dot uses, and `when` for a step run at most once;
- `stream_dot`, the u8-codes × int8-activations loop of the ternary and OneBit rows: stream j of
  code byte k pairs with x[k + j·stride]; AVX2 sums the streams' `vpmaddubsw` pairs and widens
  them with one `vpmaddwd` by ones per 32 bytes, VNNI runs one `vpdpbusd` per stream (OneBit
  2B-shaped decode layers: 22.8 → 17.3 ms/token);
- `vectors` / `codes_and_int8`, the type checks of the dots' array arguments;
- the AArch64 side: `sdot` / `smmla` declarations and `neon_stream_dot`, the same stream loop on
  16-byte NEON vectors (one `sdot` per stream and half: 16 int8 products summed four to a lane),
  built on raw pointers so that `neon.aarch64_asm` can compile it on any host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llvmlite import ir
from numba import types
from numba.core import cgutils

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
V32I8 = ir.VectorType(I8, 32)
V16I16 = ir.VectorType(I16, 16)
V8I32 = ir.VectorType(I32, 8)
V8F32 = ir.VectorType(F32, 8)
V4F32 = ir.VectorType(F32, 4)
V16I8 = ir.VectorType(I8, 16)
V4I32 = ir.VectorType(I32, 4)
V64I8 = ir.VectorType(I8, 64)
V16I32 = ir.VectorType(I32, 16)

VNNI_ACCUMULATORS = 4  # streams j go to accumulator j % 4: two dependent vpdpbusd per step, not 4-8


def const(value: int) -> ir.Constant:
    """An i64 constant (indices, counts)."""
    return ir.Constant(I64, value)


def splat(ty: ir.Type, n: int, value: int | float) -> ir.Constant:
    """<n x ty> with every lane `value`."""
    return ir.Constant(ir.VectorType(ty, n), [ir.Constant(ty, value)] * n)


def broadcast(builder: ir.IRBuilder, value: ir.Value, n: int = 8) -> ir.Value:
    """<n x T> with every lane the scalar `value` (insertelement + shufflevector)."""
    vt = ir.VectorType(value.type, n)
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(
        one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(I32, n), [0] * n)
    )


def load(builder: ir.IRBuilder, ptr: ir.Value, offset: ir.Value, vt: ir.Type = V32I8, align: int = 1):
    """An unaligned vector load of type vt from ptr[offset] (ptr to the element type)."""
    return builder.load(builder.bitcast(builder.gep(ptr, [offset]), vt.as_pointer()), align=align)


def _declare(builder: ir.IRBuilder, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def maddubs(builder: ir.IRBuilder) -> ir.Function:
    """x86 `vpmaddubsw`: u8 × i8 → saturating i16 sums of adjacent pairs."""
    return _declare(builder, "llvm.x86.avx2.pmadd.ub.sw", V16I16, [V32I8, V32I8])


def maddwd(builder: ir.IRBuilder) -> ir.Function:
    """x86 `vpmaddwd`: i16 × i16 → i32 sums of adjacent pairs (by ones: widen pair sums)."""
    return _declare(builder, "llvm.x86.avx2.pmadd.wd", V8I32, [V16I16, V16I16])


def widen_pairs(builder: ir.IRBuilder, pairs: ir.Value) -> ir.Value:
    """i16 pair sums (`vpmaddubsw`'s result) → i32 lanes of four products: `vpmaddwd` by ones."""
    return builder.call(maddwd(builder), [pairs, splat(I16, 16, 1)])


def dpbusd(builder: ir.IRBuilder) -> ir.Function:
    """x86 VNNI `vpdpbusd`: acc + Σ of four u8 × i8 products per i32 lane."""
    return _declare(builder, "llvm.x86.avx512.vpdpbusd.256", V8I32, [V8I32] * 3)


def dpbusd512(builder: ir.IRBuilder) -> ir.Function:
    """`vpdpbusd` on 512-bit vectors (64 u8 × i8 products into 16 i32 lanes)."""
    return _declare(builder, "llvm.x86.avx512.vpdpbusd.512", V16I32, [V16I32] * 3)


def permi2b(builder: ir.IRBuilder) -> ir.Function:
    """AVX-512 VBMI `vpermi2b`: byte k of the result is byte idx[k] & 127 of the 128-byte table
    (a, b): a 128-entry lookup of 64 bytes at once."""
    return _declare(builder, "llvm.x86.avx512.vpermi2var.qi.512", V64I8, [V64I8] * 3)


def lookup256(builder: ir.IRBuilder, table: Sequence[int], idx: ir.Value) -> ir.Value:
    """table[idx] for each byte of idx (<64 x i8>), table 256 bytes: two `vpermi2b` over its
    halves and a blend on each index's top bit."""
    fn = permi2b(builder)
    quarters = [ir.Constant(V64I8, [ir.Constant(I8, v) for v in table[k : k + 64]]) for k in range(0, 256, 64)]
    low = builder.call(fn, [quarters[0], idx, quarters[1]])
    high = builder.call(fn, [quarters[2], idx, quarters[3]])
    top = builder.icmp_signed("<", idx, ir.Constant(V64I8, None))
    return builder.select(top, high, low)


def widen_to_64(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """<32 x i8> → <64 x i8>, zero in the upper half."""
    zero = ir.Constant(V32I8, None)
    return builder.shuffle_vector(v, zero, ir.Constant(ir.VectorType(I32, 64), list(range(64))))


def psign_b(builder: ir.IRBuilder) -> ir.Function:
    """x86 `vpsignb`: a with the sign of b (0 where b is 0)."""
    return _declare(builder, "llvm.x86.avx2.psign.b", V32I8, [V32I8, V32I8])


def abs_v32i8(builder: ir.IRBuilder) -> ir.Function:
    return _declare(builder, "llvm.abs.v32i8", V32I8, [V32I8, I1])


def fma(builder: ir.IRBuilder, vt: ir.VectorType = V8F32) -> ir.Function:
    """a · b + c on <n x float> (`llvm.fmuladd`: one FMA where the target has it)."""
    return _declare(builder, f"llvm.fmuladd.v{vt.count}f32", vt, [vt] * 3)


def hsum_i32(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """Σ of the lanes of a <n x i32>."""
    name = f"llvm.vector.reduce.add.v{v.type.count}i32"
    return builder.call(_declare(builder, name, I32, [v.type]), [v])


def hsum_f32(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """0.0 + Σ of the lanes of a <n x float> (reassociation allowed under fastmath)."""
    fn = _declare(builder, f"llvm.vector.reduce.fadd.v{v.type.count}f32", F32, [F32, v.type])
    return builder.call(fn, [ir.Constant(F32, 0.0), v])


def sdot(builder: ir.IRBuilder) -> ir.Function:
    """AArch64 DotProd `sdot`: acc + Σ of four i8 × i8 products per i32 lane (16 bytes)."""
    return _declare(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", V4I32, [V4I32, V16I8, V16I8])


def smmla(builder: ir.IRBuilder) -> ir.Function:
    """AArch64 i8mm `smmla`: acc (2×2 i32) + A (2×8 i8, row-major) × Bᵀ (B: 2×8 i8, row-major)."""
    return _declare(builder, "llvm.aarch64.neon.smmla.v4i32.v16i8", V4I32, [V4I32, V16I8, V16I8])


def tree_sum(builder: ir.IRBuilder, values: Sequence[ir.Value]) -> ir.Value:
    """Σ values (float) as a balanced tree of fadds: independent accumulators stay independent."""
    vs = list(values)
    while len(vs) > 1:
        vs = [builder.fadd(vs[i], vs[i + 1]) if i + 1 < len(vs) else vs[i] for i in range(0, len(vs), 2)]
    return vs[0]


def loop(
    builder: ir.IRBuilder,
    count: ir.Value,
    step: int,
    inits: Sequence[ir.Value],
    body: Callable[[ir.Value, list[ir.Value]], list[ir.Value]],
    name: str = "loop",
    guard: bool = True,
) -> list[ir.Value]:
    """`for i in range(0, count, step): values = body(i, values)` (i an i64 phi); the builder is
    left after the loop and the values after it are returned. With `guard` the loop may run zero
    times (count <= 0: the inits come back); without, count > 0 is the caller's promise and the
    test is skipped. `body` may open blocks of its own; the block it ends in closes the loop."""
    pre = builder.block
    head = builder.append_basic_block(f"{name}.loop")
    done = builder.append_basic_block(f"{name}.done")
    if guard:
        builder.cbranch(builder.icmp_signed(">", count, const(0)), head, done)
    else:
        builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(I64)
    i.add_incoming(const(0), pre)
    phis = []
    for v in inits:  # all phis first: LLVM wants them at the top of the block
        p = builder.phi(v.type)
        p.add_incoming(v, pre)
        phis.append(p)
    nxt = list(body(i, phis))
    latch = builder.block
    i_next = builder.add(i, const(step))
    i.add_incoming(i_next, latch)
    for p, v in zip(phis, nxt, strict=True):
        p.add_incoming(v, latch)
    builder.cbranch(builder.icmp_signed("<", i_next, count), head, done)
    builder.position_at_end(done)
    if not guard:
        return nxt
    return _merge(builder, inits, pre, nxt, latch)


def when(
    builder: ir.IRBuilder,
    cond: ir.Value,
    values: Sequence[ir.Value],
    body: Callable[[list[ir.Value]], list[ir.Value]],
    name: str = "when",
) -> list[ir.Value]:
    """`if cond: values = body(values)` (a step that runs at most once: no loop for LLVM to keep)."""
    pre = builder.block
    then = builder.append_basic_block(f"{name}.then")
    done = builder.append_basic_block(f"{name}.done")
    builder.cbranch(cond, then, done)
    builder.position_at_end(then)
    nxt = list(body(list(values)))
    end = builder.block
    builder.branch(done)
    builder.position_at_end(done)
    return _merge(builder, values, pre, nxt, end)


def _merge(
    builder: ir.IRBuilder,
    skipped: Sequence[ir.Value],
    skipped_from: ir.Block,
    taken: Sequence[ir.Value],
    taken_from: ir.Block,
) -> list[ir.Value]:
    """One phi per value where a skipped and a taken branch meet (the value each path leaves)."""
    outs = []
    for v0, v1 in zip(skipped, taken, strict=True):
        p = builder.phi(v0.type)
        p.add_incoming(v0, skipped_from)
        p.add_incoming(v1, taken_from)
        outs.append(p)
    return outs


def vectors(*pairs: tuple[types.Type, types.Type]) -> bool:
    """Each (argument type, dtype): a 1-D C-contiguous array of that dtype (an IR dot's typing)."""
    return all(
        isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == dt
        for a, dt in pairs
    )


def arrays(context, builder, sig, args, n: int | None = None) -> list:
    """numba's array structs (.data, .shape) of an intrinsic's first n arguments (default: all)."""
    n = len(args) if n is None else n
    return [context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:n], args[:n], strict=True)]


def codes_and_int8(codes: types.Type, x: types.Type) -> bool:
    """codes uint8 [n] and x int8 [m]: the stream dots' arguments."""
    return vectors((codes, types.uint8), (x, types.int8))


def stream_dot(
    context, builder, sig, args, streams: int, unpack, stride=None, vnni: bool = False, tail=None,
    shifts: Sequence[int] | None = None,
) -> ir.Value:
    """Σ over 32-byte steps of the codes (args[0], uint8) against x (args[1], int8): `unpack`
    turns 32 code bytes into `streams` <32 x i8> vectors of small unsigned values, stream j of
    byte k pairing with x[k + j·stride] (stride = the number of code bytes by default).
    AVX2: acc += pmaddwd(Σ_j pmaddubsw(code_j, x_j), 1) (the caller keeps the pair sums within
    int16); VNNI: acc = vpdpbusd(acc, code_j, x_j) into VNNI_ACCUMULATORS accumulators (one
    would chain every stream through the instruction's latency), summed after the loop. With
    `tail` (the index of a uint8 [32] argument holding the codes' last len % 32 bytes, zero
    beyond), a last partial step reads its codes from there instead of past the codes' end.
    `shifts` (VNNI only: one accumulator per stream): stream j's values arrive multiplied by
    2^shifts[j] (codes masked in place, not shifted down), so its exact sum is shifted back
    (arithmetically) after the loop. Returns the i32 total (one horizontal sum per row)."""
    ca = context.make_array(sig.args[0])(context, builder, args[0])
    xa = context.make_array(sig.args[1])(context, builder, args[1])
    ta = None if tail is None else context.make_array(sig.args[tail])(context, builder, args[tail])
    q = builder.extract_value(ca.shape, 0)
    step = q if stride is None else stride
    pmaddubsw = maddubs(builder)
    vpdpbusd = dpbusd(builder) if vnni else None
    n_acc = min(streams, VNNI_ACCUMULATORS) if vnni else 1
    if shifts is not None:
        assert vnni and len(shifts) == streams, "shifts: VNNI, one per stream"
        n_acc = streams

    def body(i, accs):
        if ta is None:
            codes = unpack(builder, load(builder, ca.data, i))
        else:
            partial = builder.icmp_signed(">", builder.add(i, const(32)), q)
            src = builder.select(partial, ta.data, builder.gep(ca.data, [i]))
            codes = unpack(builder, load(builder, src, const(0)))
        xs = [load(builder, xa.data, builder.add(i, builder.mul(step, const(j)))) for j in range(streams)]
        if vnni:
            nexts = list(accs)
            for j in range(streams):
                a = j % n_acc
                c32, x32 = builder.bitcast(codes[j], V8I32), builder.bitcast(xs[j], V8I32)
                nexts[a] = builder.call(vpdpbusd, [nexts[a], c32, x32])
            return nexts
        pairs = None
        for j in range(streams):
            p = builder.call(pmaddubsw, [codes[j], xs[j]])
            pairs = p if pairs is None else builder.add(pairs, p)
        return [builder.add(accs[0], widen_pairs(builder, pairs))]

    totals = loop(builder, q, 32, [ir.Constant(V8I32, None)] * n_acc, body, "tdot")
    if shifts is not None:
        totals = [builder.ashr(t, splat(I32, 8, k)) if k else t for t, k in zip(totals, shifts, strict=True)]
    total = totals[0]
    for t in totals[1:]:
        total = builder.add(total, t)
    return hsum_i32(builder, total)


def neon_stream_dot(builder, codes, x, q, stride, streams: int, unpack, tail=None) -> ir.Value:
    """`stream_dot` for AArch64 on raw pointers (codes: i8*, q code bytes; x: i8*; stride: i64):
    per 32-byte step, two 16-byte halves, `unpack` turning each into `streams` <16 x i8>
    vectors (unsigned values < 128, or 0/-1 masks) and one `sdot` per stream and half into one
    <4 x i32> accumulator per stream (each chain then waits on itself only). `tail`: a uint8
    [32] pointer whose bytes replace the codes in a last partial step. Returns the i32 total."""
    dot = sdot(builder)

    def body(i, accs):
        src, off = codes, i
        if tail is not None:
            partial = builder.icmp_signed(">", builder.add(i, const(32)), q)
            src = builder.select(partial, tail, builder.gep(codes, [i]))
            off = const(0)
        out = list(accs)
        for h in range(2):
            cs = unpack(builder, load(builder, src, builder.add(off, const(16 * h)), V16I8))
            for j in range(streams):
                xo = builder.add(builder.add(i, const(16 * h)), builder.mul(stride, const(j)))
                out[j] = builder.call(dot, [out[j], cs[j], load(builder, x, xo, V16I8)])
        return out

    totals = loop(builder, q, 32, [ir.Constant(V4I32, None)] * streams, body, "ndot")
    total = totals[0]
    for t in totals[1:]:
        total = builder.add(total, t)
    return hsum_i32(builder, total)
