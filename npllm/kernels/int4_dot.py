"""The inner loop of the int4 decode kernel (npllm.kernels.int4) written in LLVM IR: 16
outputs of an int4 x int8 product with integer sums, for Numba code to call.

    int4_tile(w, xq, dx, sq, s, b, y, t, wpb)
        y[16 t : 16 t + 16] = for its 16 outputs m:
            sum over blocks c of  s[0, c, m] * (dx[c] * isum[c, m]) + s[1, c, m] * sq[c]
            + b[m],  isum[c, m] = sum over the block's codes of code * xq (int32, exact)
        w: tile t's packed codes (int4.kernel_layout: (tiles, K / 8, 64) uint8, word j of
        a tile is four bytes of each of its 16 outputs), xq (K,) int8 activations, dx / sq
        (blocks,) their scales and scaled sums, s (2, blocks, M) scales and offsets (or
        (1, blocks, M): symmetric, offsets -8 s[0]), b and y (M,) float32;
        wpb: words a block (g / 8). A whole tile only: 16 t + 16 <= M.

Why IR: Numba types int32 * int32 as int64, and its loops over int8 stay in 64-bit lanes
(an int8-weight x int8-activation kernel written in Numba lost to the float one). Here a
word of 16 outputs is one <16 x i32> vector; its low and high nibbles (codes of elements
4q..4q+3 and 4q + g/2..) are multiplied by four int8 activations broadcast to every lane
and summed four at a time into int32 lanes: one VNNI instruction (vpdpbusd) per 64
products on CPUs with AVX-512 VNNI, pmaddubsw + pmaddwd with AVX2, and generic IR (zero/
sign-extended multiplies summed in pairs, which LLVM maps to pmaddwd) elsewhere. Which
one is chosen by the features of the target Numba compiles for (its on-disk cache is
kept per CPU), so x86 intrinsics are only emitted where they exist.
Two accumulators (low and high nibbles) halve the dependency chain per block; the block's
sum is converted to float and scaled in registers, so nothing is stored but y.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16  # outputs a tile
_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_F32 = ir.FloatType()


def _vec(t: ir.Type, n: int = LANES) -> ir.VectorType:
    return ir.VectorType(t, n)


def _consts(n: int, idx) -> ir.Constant:
    return ir.Constant(_vec(_I32, n), list(idx))


def _dot_generic(b: ir.IRBuilder, acc, a, x):
    """acc + per i32 lane the sum of its four u8(a) * s8(x) byte products, in generic IR."""
    n = 4 * LANES
    p = b.mul(
        b.zext(b.bitcast(a, _vec(_I8, n)), _vec(_I32, n)),
        b.sext(b.bitcast(x, _vec(_I8, n)), _vec(_I32, n)),
    )
    s2 = b.add(
        b.shuffle_vector(p, p, _consts(n // 2, range(0, n, 2))),
        b.shuffle_vector(p, p, _consts(n // 2, range(1, n, 2))),
    )
    s4 = b.add(
        b.shuffle_vector(s2, s2, _consts(LANES, range(0, n // 2, 2))),
        b.shuffle_vector(s2, s2, _consts(LANES, range(1, n // 2, 2))),
    )
    return b.add(acc, s4)


def _dot_vnni(b: ir.IRBuilder, acc, a, x):
    v = _vec(_I32)
    fn = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(v, [v, v, v]), "llvm.x86.avx512.vpdpbusd.512"
    )
    return b.call(fn, [acc, a, x])


def _dot_avx2(b: ir.IRBuilder, acc, a, x):
    """pmaddubsw (u8 x s8, pairs summed into i16: at most 2 * 15 * 127, no saturation),
    then pmaddwd by ones (pairs into i32), on each half of the 16 lanes."""
    v16, v32b, v8 = _vec(_I16, 16), _vec(_I8, 32), _vec(_I32, 8)
    mub = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(v16, [v32b, v32b]), "llvm.x86.avx2.pmadd.ub.sw"
    )
    mwd = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(v8, [v16, v16]), "llvm.x86.avx2.pmadd.wd"
    )
    ones = ir.Constant(v16, [1] * 16)
    halves = []
    for k in range(2):
        idx = _consts(8, range(8 * k, 8 * k + 8))
        ak = b.bitcast(b.shuffle_vector(a, a, idx), v32b)
        xk = b.bitcast(b.shuffle_vector(x, x, idx), v32b)
        halves.append(b.call(mwd, [b.call(mub, [ak, xk]), ones]))
    return b.add(acc, b.shuffle_vector(halves[0], halves[1], _consts(LANES, range(LANES))))


def dot_kind(features: str) -> str:
    """Which dot the target's LLVM feature string ("+avx2,+avx512vnni,...") allows."""
    have = set(features.split(","))
    if {"+avx512vnni", "+avx512bw", "+avx512f"} <= have:
        return "vnni"
    if "+avx2" in have:
        return "avx2"
    return "generic"


_DOTS = {"vnni": _dot_vnni, "avx2": _dot_avx2, "generic": _dot_generic}


def _splat(b: ir.IRBuilder, val):
    v = _vec(val.type)
    one = b.insert_element(ir.Constant(v, ir.Undefined), val, ir.Constant(_I32, 0))
    return b.shuffle_vector(one, ir.Constant(v, ir.Undefined), _consts(LANES, [0] * LANES))


def _data(context, builder, ty, value, elem: ir.Type):
    arr = context.make_array(ty)(context, builder, value)
    return arr, builder.bitcast(arr.data, elem.as_pointer())


def _load(builder, ptr, ty):
    return builder.load(builder.bitcast(ptr, ty.as_pointer()), align=1)


def _offsets(builder, sarr, scp, nb, m):
    """Where the tile's offsets are and what they are multiplied by: s[1] and 1, or for
    symmetric scales only (s (1, nb, M)) the scales themselves and -8."""
    sym = builder.icmp_unsigned("==", builder.extract_value(sarr.shape, 0), ir.Constant(nb.type, 1))
    offp = builder.select(sym, scp, builder.gep(scp, [builder.mul(nb, m)]))
    factor = builder.select(sym, ir.Constant(_F32, -8.0), ir.Constant(_F32, 1.0))
    return offp, _splat(builder, factor)


def _block_sums(builder, dot, wbase, xbase, c, wpb):
    """<16 x i32>: per lane the sum over block c's codes times xq (wbase: the tile's words)."""
    v = _vec(_I32)
    mask, four = ir.Constant(v, [0x0F0F0F0F] * LANES), ir.Constant(v, [4] * LANES)
    acc_lo, acc_hi = cgutils.alloca_once(builder, v), cgutils.alloca_once(builder, v)
    builder.store(ir.Constant(v, None), acc_lo)
    builder.store(ir.Constant(v, None), acc_hi)
    lanes = ir.Constant(c.type, LANES)
    with cgutils.for_range(builder, wpb) as loop:
        q = loop.index
        word = _load(
            builder,
            builder.gep(wbase, [builder.mul(builder.add(builder.mul(c, wpb), q), lanes)]),
            v,
        )
        xi = builder.add(builder.mul(c, builder.add(wpb, wpb)), q)  # block c's word q of xq
        x_lo = _splat(builder, _load(builder, builder.gep(xbase, [xi]), _I32))
        x_hi = _splat(builder, _load(builder, builder.gep(xbase, [builder.add(xi, wpb)]), _I32))
        lo = builder.and_(word, mask)
        hi = builder.and_(builder.lshr(word, four), mask)
        builder.store(dot(builder, builder.load(acc_lo), lo, x_lo), acc_lo)
        builder.store(dot(builder, builder.load(acc_hi), hi, x_hi), acc_hi)
    return builder.add(builder.load(acc_lo), builder.load(acc_hi))


def make_int4_tile(kind: str | None = None):
    """The `int4_tile` intrinsic with the dot `kind` ("vnni", "avx2", "generic"), or by
    default the one the compiling target's features allow (tests build the others)."""

    def int4_tile(typingctx, w, xq, dx, sq, s, b, y, t, wpb):
        return types.void(w, xq, dx, sq, s, b, y, t, wpb), codegen

    def codegen(context, builder, signature, args):
        ty = signature.args
        dot = _DOTS[kind or dot_kind(context.codegen()._tm_features)]
        vf = _vec(_F32)
        _, wbase = _data(context, builder, ty[0], args[0], _I32)
        _, xbase = _data(context, builder, ty[1], args[1], _I32)
        _, dxp = _data(context, builder, ty[2], args[2], _F32)
        _, sqp = _data(context, builder, ty[3], args[3], _F32)
        sarr, sp = _data(context, builder, ty[4], args[4], _F32)
        _, bp = _data(context, builder, ty[5], args[5], _F32)
        _, yp = _data(context, builder, ty[6], args[6], _F32)
        t, wpb = args[7], args[8]
        nb = builder.extract_value(sarr.shape, 1)
        m = builder.extract_value(sarr.shape, 2)
        lanes = ir.Constant(t.type, LANES)
        wbase = builder.gep(wbase, [builder.mul(builder.mul(t, builder.mul(nb, wpb)), lanes)])
        r0 = builder.mul(t, lanes)
        scp = builder.gep(sp, [r0])
        offp, factor = _offsets(builder, sarr, scp, nb, m)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fmuladd.v16f32"
        )
        acc = cgutils.alloca_once(builder, vf)
        builder.store(ir.Constant(vf, None), acc)
        with cgutils.for_range(builder, nb) as loop:
            c = loop.index
            isum = builder.sitofp(_block_sums(builder, dot, wbase, xbase, c, wpb), vf)
            cm = builder.mul(c, m)
            sc = _load(builder, builder.gep(scp, [cm]), vf)
            off = builder.fmul(_load(builder, builder.gep(offp, [cm]), vf), factor)
            d = _splat(builder, builder.load(builder.gep(dxp, [c])))
            e = _splat(builder, builder.load(builder.gep(sqp, [c])))
            a = builder.call(fma, [sc, builder.fmul(isum, d), builder.load(acc)])
            builder.store(builder.call(fma, [off, e, a]), acc)
        bias = _load(builder, builder.gep(bp, [r0]), vf)
        out = builder.bitcast(builder.gep(yp, [r0]), vf.as_pointer())
        builder.store(builder.fadd(builder.load(acc), bias), out, align=1)
        return context.get_dummy_value()

    return intrinsic(int4_tile)


int4_tile = make_int4_tile()


@intrinsic
def int4_dequant(typingctx, w, s, wt, t, col, wpb):
    """wt[:, col : col + 16] = the float weights of tile t's 16 outputs, row k of wt (K, n)
    float32 being input k (a BLAS tile of prompts; a whole tile only, 16 t + 16 <= M)."""
    sig = types.void(w, s, wt, t, col, wpb)

    def codegen(context, builder, signature, args):
        ty = signature.args
        v, vf = _vec(_I32), _vec(_F32)
        _, wbase = _data(context, builder, ty[0], args[0], _I32)
        sarr, sp = _data(context, builder, ty[1], args[1], _F32)
        warr, wtp = _data(context, builder, ty[2], args[2], _F32)
        t, col, wpb = args[3], args[4], args[5]
        nb = builder.extract_value(sarr.shape, 1)
        m = builder.extract_value(sarr.shape, 2)
        row = builder.extract_value(warr.shape, 1)  # floats a row of wt
        lanes = ir.Constant(t.type, LANES)
        wbase = builder.gep(wbase, [builder.mul(builder.mul(t, builder.mul(nb, wpb)), lanes)])
        scp = builder.gep(sp, [builder.mul(t, lanes)])
        offp, factor = _offsets(builder, sarr, scp, nb, m)
        wtp = builder.gep(wtp, [col])
        h = builder.mul(wpb, ir.Constant(wpb.type, 4))  # bytes a block
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fmuladd.v16f32"
        )
        mask = ir.Constant(v, [15] * LANES)
        with cgutils.for_range(builder, nb) as loop_c:
            c = loop_c.index
            cm = builder.mul(c, m)
            sc = _load(builder, builder.gep(scp, [cm]), vf)
            off = builder.fmul(_load(builder, builder.gep(offp, [cm]), vf), factor)
            with cgutils.for_range(builder, wpb) as loop_q:
                q = loop_q.index
                j = builder.add(builder.mul(c, wpb), q)
                word = _load(builder, builder.gep(wbase, [builder.mul(j, lanes)]), v)
                k0 = builder.add(
                    builder.mul(builder.add(c, c), h), builder.mul(q, ir.Constant(q.type, 4))
                )
                for u in range(4):  # byte u of each word: inputs k0 + u (low), + h (high)
                    for shift, k in ((8 * u, k0), (8 * u + 4, builder.add(k0, h))):
                        code = builder.and_(
                            builder.lshr(word, ir.Constant(v, [shift] * LANES)), mask
                        )
                        f = builder.call(fma, [builder.sitofp(code, vf), sc, off])
                        dst = builder.gep(
                            wtp, [builder.mul(builder.add(k, ir.Constant(k.type, u)), row)]
                        )
                        builder.store(f, builder.bitcast(dst, vf.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen
