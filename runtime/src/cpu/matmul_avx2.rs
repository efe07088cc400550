//! AVX2 + FMA + F16C matmul tiles (see [`super::matmul`] for the tiling and the `TileArgs` contract).
//!
//! A tile computes `R` activation rows against `C` weight rows as `R x C` dot products along `k`, each held in an
//! 8-lane f32 accumulator and summed horizontally once at the end (llamafile's tinyBLAS does the same). Each weight
//! vector is loaded (and converted or unpacked) once and used for `R` rows; each activation vector is used for `C`
//! weight rows. The `1 x 1` tile is the GEMV kernel instead: one weight row, four accumulators along `k`.
//! The float formats' tiles only: weights convert to f32 on the fly (f16 through F16C, bf16 by a shift). q8_0 and
//! q4_0 matrices are always stored interleaved, and [`super::matmul_x8`] multiplies them.
//!
//! Every load is unaligned: a tile's operands start anywhere inside a row.

#![cfg(target_arch = "x86_64")]

use super::matmul::{TileArgs, TileFn};
use std::arch::x86_64::*;
use unicorn_ir::types::WeightFormat;

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

/// Tile functions for the float `format`, indexed `[R - 1][C - 1]`. Panics for q8_0 / q4_0.
pub(crate) fn tiles(format: WeightFormat) -> &'static [[TileFn; 4]; 4] {
    /// `[[f::<1, 1>, f::<1, 2>, ...], ...]` for `R, C` in `1..=4`, with optional leading generic arguments.
    macro_rules! table {
        ($f:ident $(, $g:expr)?) => {
            [
                [$f::<$($g,)? 1, 1>, $f::<$($g,)? 1, 2>, $f::<$($g,)? 1, 3>, $f::<$($g,)? 1, 4>],
                [$f::<$($g,)? 2, 1>, $f::<$($g,)? 2, 2>, $f::<$($g,)? 2, 3>, $f::<$($g,)? 2, 4>],
                [$f::<$($g,)? 3, 1>, $f::<$($g,)? 3, 2>, $f::<$($g,)? 3, 3>, $f::<$($g,)? 3, 4>],
                [$f::<$($g,)? 4, 1>, $f::<$($g,)? 4, 2>, $f::<$($g,)? 4, 3>, $f::<$($g,)? 4, 4>],
            ]
        };
    }
    static TF32: [[TileFn; 4]; 4] = with_row(table!(float_tile, F32), float_row::<F32>);
    static TF16: [[TileFn; 4]; 4] = with_row(table!(float_tile, F16), float_row::<F16>);
    static TBF16: [[TileFn; 4]; 4] = with_row(table!(float_tile, BF16), float_row::<BF16>);
    match format {
        WeightFormat::F32 => &TF32,
        WeightFormat::F16 => &TF16,
        WeightFormat::Bf16 => &TBF16,
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => panic!("{format} matrices are multiplied interleaved (matmul_x8)"),
    }
}

/// The `1 x 1` tile is a GEMV row: one sequential weight stream, which the hardware prefetchers follow best.
const fn with_row(mut t: [[TileFn; 4]; 4], row: TileFn) -> [[TileFn; 4]; 4] {
    t[0][0] = row;
    t
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The f16 at `p` (any alignment) as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_f16(p: *const u8) -> f32 {
    let bits = p.cast::<u16>().read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Eight weights of float format `F` at `p`, as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8<const F: u8>(p: *const u8) -> __m256 {
    match F {
        F32 => _mm256_loadu_ps(p.cast()),
        F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
        // bf16 is the high half of an f32.
        _ => _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())), 16)),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load1<const F: u8>(p: *const u8) -> f32 {
    match F {
        F32 => p.cast::<f32>().read_unaligned(),
        F16 => load_f16(p),
        _ => f32::from_bits(u32::from(p.cast::<u16>().read_unaligned()) << 16),
    }
}

/// Writes the tile's sums (plus bias) to `y`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store<const R: usize, const C: usize>(a: &TileArgs, acc: &[[__m256; C]; R], extra: &[[f32; C]; R]) {
    for r in 0..R {
        for c in 0..C {
            let b = if a.bias.is_null() { 0.0 } else { *a.bias.add(c) };
            let s = hsum(acc[r][c]) + extra[r][c];
            let y = a.y.add(r * a.ldy + c);
            *y = if a.accumulate { *y + s } else { s + b };
        }
    }
}

/// f32 / f16 / bf16 weights against f32 activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_tile<const F: u8, const R: usize, const C: usize>(a: &TileArgs) {
    let es = if F == F32 { 4 } else { 2 };
    let x = |r: usize| a.x.add(r * a.ldx).cast::<f32>();
    let w = |c: usize| a.w.add(c * a.ldw);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let k8 = a.k & !7;
    let mut i = 0;
    while i < k8 {
        let mut wv = [_mm256_setzero_ps(); C];
        for (c, wv) in wv.iter_mut().enumerate() {
            *wv = load8::<F>(w(c).add(i * es));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(x(r).add(i));
            for (acc, wv) in acc.iter_mut().zip(&wv) {
                *acc = _mm256_fmadd_ps(xv, *wv, *acc);
            }
        }
        i += 8;
    }
    let mut tail = [[0.0f32; C]; R];
    for i in k8..a.k {
        for (r, tail) in tail.iter_mut().enumerate() {
            for (c, t) in tail.iter_mut().enumerate() {
                *t += *x(r).add(i) * load1::<F>(w(c).add(i * es));
            }
        }
    }
    store(a, &acc, &tail);
}

/// One f32 / f16 / bf16 weight row: four independent accumulators over 32 elements per step.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_row<const F: u8>(a: &TileArgs) {
    let es = if F == F32 { 4 } else { 2 };
    let x = a.x.cast::<f32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    let k32 = a.k & !31;
    let mut i = 0;
    while i < k32 {
        for (u, acc) in acc.iter_mut().enumerate() {
            let j = i + 8 * u;
            *acc = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(j)), load8::<F>(a.w.add(j * es)), *acc);
        }
        i += 32;
    }
    while i + 8 <= a.k {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(i)), load8::<F>(a.w.add(i * es)), acc[0]);
        i += 8;
    }
    let mut tail = 0.0;
    while i < a.k {
        tail += *x.add(i) * load1::<F>(a.w.add(i * es));
        i += 1;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    store::<1, 1>(a, &[[acc]], &[[tail]]);
}
