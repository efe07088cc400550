//! q8_0 / q4_0 tiles for CPUs with AVX-512 VNNI (Ice Lake, Zen 4 and later), on 256-bit vectors.
//!
//! The tiling and the float formats are [`super::matmul_avx2`]'s; only the int8 dot product changes:
//! `_mm256_dpbusd_epi32` multiplies unsigned by signed bytes and adds groups of four straight into i32 lanes, in
//! one instruction instead of AVX2's `maddubs` + `madd`, and without the i16 saturation.
//!
//! The unsigned side: q4_0's nibbles already are; for q8_0 tiles the activations are offset to `x + 128` (one
//! xor per row and block) and the excess `128 * sum(w)` is cancelled by starting each product from
//! `-128 * sum(w)` (one more `dpbusd` per weight block, shared by the tile's rows). A single GEMV row keeps
//! AVX2's sign trick (`|x|` against `w` carrying `x`'s signs), which costs less when nothing is shared.

#![cfg(target_arch = "x86_64")]

use super::matmul::{TileArgs, TileFn};
use super::matmul_avx2::{load_q4, splat_f16, store, with_row};
use std::arch::x86_64::*;
use unicorn_ir::types::{WeightFormat, QK};

/// q8_0 / q4_0 tile functions, indexed `[R - 1][C - 1]`; `None` for the other formats.
pub(crate) fn tiles(format: WeightFormat) -> Option<&'static [[TileFn; 4]; 4]> {
    macro_rules! table {
        ($f:ident) => {
            [
                [$f::<1, 1>, $f::<1, 2>, $f::<1, 3>, $f::<1, 4>],
                [$f::<2, 1>, $f::<2, 2>, $f::<2, 3>, $f::<2, 4>],
                [$f::<3, 1>, $f::<3, 2>, $f::<3, 3>, $f::<3, 4>],
                [$f::<4, 1>, $f::<4, 2>, $f::<4, 3>, $f::<4, 4>],
            ]
        };
    }
    static TQ8: [[TileFn; 4]; 4] = with_row(table!(q8_0_tile), q8_0_row);
    static TQ4: [[TileFn; 4]; 4] = with_row(table!(q4_0_tile), q4_0_row);
    match format {
        WeightFormat::Q8_0 => Some(&TQ8),
        WeightFormat::Q4_0 => Some(&TQ4),
        _ => None,
    }
}

/// `src + sum(u * s)` per i32 lane over its four bytes, `u` unsigned, `s` signed, as f32 after the sum.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
#[inline]
unsafe fn dot_f32(src: __m256i, u: __m256i, s: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(src, u, s))
}

/// q8_0 weights against q8 activations: per 32-block, `acc += (d_w * d_x) * sum(w * x)`.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q8_0_tile<const R: usize, const C: usize>(a: &TileArgs) {
    const BB: usize = 2 + QK;
    let bias = _mm256_set1_epi8(-128);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for b in 0..a.k / QK {
        let mut wq = [_mm256_setzero_si256(); C];
        let mut neg = [_mm256_setzero_si256(); C];
        let mut dw = [_mm256_setzero_ps(); C];
        for c in 0..C {
            let p = a.w.add(c * a.ldw + b * BB);
            dw[c] = splat_f16(p);
            wq[c] = _mm256_loadu_si256(p.add(2).cast());
            // -128 * sum(w) per lane: 0x80 as u8 is 128, and w is subtracted from zero after.
            neg[c] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), bias, wq[c]));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let xq = _mm256_loadu_si256(a.x.add(r * a.ldx + b * QK).cast());
            let xu = _mm256_xor_si256(xq, bias); // x + 128 as u8
            let dx = _mm256_broadcast_ss(&*a.xd.add(r * a.ldxd + b));
            for c in 0..C {
                acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(dw[c], dx), dot_f32(neg[c], xu, wq[c]), acc[c]);
            }
        }
    }
    store(a, &acc, &[[0.0; C]; R]);
}

/// q4_0 weights against q8 activations, with the `- 8` applied through `m = d_x * sum(q_x)` as in
/// [`super::matmul_avx2`].
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q4_0_tile<const R: usize, const C: usize>(a: &TileArgs) {
    const BB: usize = 2 + QK / 2;
    let zero = _mm256_setzero_si256();
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for b in 0..a.k / QK {
        let mut wq = [_mm256_setzero_si256(); C];
        let mut dw = [_mm256_setzero_ps(); C];
        for c in 0..C {
            let p = a.w.add(c * a.ldw + b * BB);
            dw[c] = splat_f16(p);
            wq[c] = load_q4(p.add(2));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let xq = _mm256_loadu_si256(a.x.add(r * a.ldx + b * QK).cast());
            let dx = _mm256_broadcast_ss(&*a.xd.add(r * a.ldxd + b));
            let m = _mm256_broadcast_ss(&*a.xm.add(r * a.ldxd + b));
            for c in 0..C {
                acc[c] = _mm256_fmadd_ps(dw[c], _mm256_fmsub_ps(dx, dot_f32(zero, wq[c], xq), m), acc[c]);
            }
        }
    }
    store(a, &acc, &[[0.0; C]; R]);
}

/// One q8_0 weight row against one activation row, four blocks per step into independent accumulators.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q8_0_row(a: &TileArgs) {
    const BB: usize = 2 + QK;
    let zero = _mm256_setzero_si256();
    let nb = a.k / QK;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut b = 0;
    while b < nb {
        for (u, acc) in acc.iter_mut().enumerate().take(nb - b) {
            let p = a.w.add((b + u) * BB);
            let xq = _mm256_loadu_si256(a.x.add((b + u) * QK).cast());
            let wq = _mm256_loadu_si256(p.add(2).cast());
            let p32 = dot_f32(zero, _mm256_sign_epi8(xq, xq), _mm256_sign_epi8(wq, xq));
            let d = _mm256_mul_ps(splat_f16(p), _mm256_broadcast_ss(&*a.xd.add(b + u)));
            *acc = _mm256_fmadd_ps(d, p32, *acc);
        }
        b += 4;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    store::<1, 1>(a, &[[acc]], &[[0.0]]);
}

/// One q4_0 weight row against one activation row, four blocks per step into independent accumulators.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn q4_0_row(a: &TileArgs) {
    const BB: usize = 2 + QK / 2;
    let zero = _mm256_setzero_si256();
    let nb = a.k / QK;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut b = 0;
    while b < nb {
        for (u, acc) in acc.iter_mut().enumerate().take(nb - b) {
            let p = a.w.add((b + u) * BB);
            let xq = _mm256_loadu_si256(a.x.add((b + u) * QK).cast());
            let dx = _mm256_broadcast_ss(&*a.xd.add(b + u));
            let m = _mm256_broadcast_ss(&*a.xm.add(b + u));
            let t = _mm256_fmsub_ps(dx, dot_f32(zero, load_q4(p.add(2)), xq), m);
            *acc = _mm256_fmadd_ps(splat_f16(p), t, *acc);
        }
        b += 4;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    store::<1, 1>(a, &[[acc]], &[[0.0]]);
}
