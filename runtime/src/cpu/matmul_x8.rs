//! q4_0 / q8_0 tiles for the [`WeightLayout::Interleaved8`](unicorn_ir::quant::WeightLayout) layout: a tile is
//! up to four activation rows by one group of 8 interleaved weight rows.
//!
//! In that layout one 32-byte load holds 4 quant bytes of each of the 8 rows, so a `dpbusd` (or AVX2's
//! `maddubs` + `madd`) against 4 activation bytes broadcast to every lane leaves row `c`'s partial dot product in
//! lane `c`: a block's 8 dot products end up in one vector, its 8 f16 scales convert with one `cvtph_ps`, and the
//! scale multiply is one vector op for the 8 rows, with no horizontal sum until the tile is stored (none at all:
//! lane `c` is output `c`).
//!
//! Group block (per block index, `8 * (2 + qb)` bytes, `qb` = 16 for q4_0 and 32 for q8_0): the 8 scales, then
//! for each 4-byte chunk `j` of the block's quants, chunk `j` of rows 0..8. q4_0 chunk `j` holds elements
//! `4j..4j+4` (low nibbles) and `16+4j..16+4j+4` (high nibbles).
//!
//! `TileArgs` as in [`super::matmul`]: `w` points at the group's first block of the k-stretch and `ldw` is
//! unused. `cols` is 8, or fewer in the last group of a matrix whose rows were padded to whole groups: the tile
//! computes all 8 lanes (the padding rows are zeros) and stores the first `cols`. The 512-bit family takes two
//! groups per tile ([`super::matmul_x16`]) and this module's VNNI tile for a lone last group.

use super::isa::Isa;
use super::matmul::{TileArgs, TileFn};
use unicorn_ir::types::{WeightFormat, QK};

/// Tile functions indexed `[R - 1][groups - 1]`, for tiles of `R` activation rows by `groups` groups of 8
/// weight rows, `groups` up to [`max_groups`] (entries past it repeat the last one and are never called).
pub(crate) fn tiles(isa: Isa, format: WeightFormat) -> &'static [[TileFn; 4]; 4] {
    macro_rules! table {
        ($f:ident) => {
            [[$f::<1> as TileFn; 4], [$f::<2> as TileFn; 4], [$f::<3> as TileFn; 4], [$f::<4> as TileFn; 4]]
        };
        // One group on 256-bit vectors, two on 512-bit ones.
        ($f:ident, $m:ident::$f2:ident) => {
            [
                [$f::<1> as TileFn, $m::$f2::<1>, $m::$f2::<1>, $m::$f2::<1>],
                [$f::<2> as TileFn, $m::$f2::<2>, $m::$f2::<2>, $m::$f2::<2>],
                [$f::<3> as TileFn, $m::$f2::<3>, $m::$f2::<3>, $m::$f2::<3>],
                [$f::<4> as TileFn, $m::$f2::<4>, $m::$f2::<4>, $m::$f2::<4>],
            ]
        };
    }
    static P4: [[TileFn; 4]; 4] = table!(portable_q4);
    static P8: [[TileFn; 4]; 4] = table!(portable_q8);
    #[cfg(target_arch = "x86_64")]
    {
        use super::matmul_x16 as x16;
        static A4: [[TileFn; 4]; 4] = table!(avx2_q4);
        static A8: [[TileFn; 4]; 4] = table!(avx2_q8);
        static V4: [[TileFn; 4]; 4] = table!(vnni_q4);
        static V8: [[TileFn; 4]; 4] = table!(vnni_q8);
        static Z4: [[TileFn; 4]; 4] = table!(vnni_q4, x16::q4);
        static Z8: [[TileFn; 4]; 4] = table!(vnni_q8, x16::q8);
        match (isa, format) {
            (Isa::Avx2, WeightFormat::Q4_0) => return &A4,
            (Isa::Avx2, WeightFormat::Q8_0) => return &A8,
            (Isa::Avx512Vnni, WeightFormat::Q4_0) => return &V4,
            (Isa::Avx512Vnni, WeightFormat::Q8_0) => return &V8,
            (Isa::Avx512 | Isa::Amx, WeightFormat::Q4_0) => return &Z4,
            (Isa::Avx512 | Isa::Amx, WeightFormat::Q8_0) => return &Z8,
            _ => {}
        }
    }
    match format {
        WeightFormat::Q4_0 => &P4,
        WeightFormat::Q8_0 => &P8,
        _ => panic!("{format} has no interleaved layout"),
    }
}

/// The most groups of 8 weight rows one tile of `isa` takes: 2 on 512-bit vectors ([`super::matmul_x16`]), else 1.
pub(crate) fn max_groups(isa: Isa) -> usize {
    if matches!(isa, Isa::Avx512 | Isa::Amx) {
        2
    } else {
        1
    }
}

const G: usize = 8;
/// Bytes of one group block.
const BG4: usize = G * (2 + QK / 2);
const BG8: usize = G * (2 + QK);

/// Writes `sums[r][c]` (plus bias) to the tile's outputs.
unsafe fn store_portable<const R: usize>(a: &TileArgs, sums: &[[f32; G]; R]) {
    for (r, s) in sums.iter().enumerate() {
        for (c, &s) in s.iter().enumerate().take(a.cols) {
            let b = if a.bias.is_null() { 0.0 } else { *a.bias.add(c) };
            let y = a.y.add(r * a.ldy + c);
            *y = if a.accumulate { *y + s } else { s + b };
        }
    }
}

fn f16_at(p: &[u8]) -> f32 {
    half::f16::from_le_bytes([p[0], p[1]]).to_f32()
}

unsafe fn portable_q4<const R: usize>(a: &TileArgs) {
    let mut sums = [[0.0f32; G]; R];
    for b in 0..a.k / QK {
        let g = std::slice::from_raw_parts(a.w.add(b * BG4), BG4);
        for c in 0..G {
            let dw = f16_at(&g[2 * c..]);
            let mut wq = [0i32; QK];
            for j in 0..QK / 2 {
                let byte = g[2 * G + (j / 4) * 4 * G + 4 * c + j % 4];
                wq[j] = i32::from(byte & 15);
                wq[j + QK / 2] = i32::from(byte >> 4);
            }
            for (r, s) in sums.iter_mut().enumerate() {
                let xq = std::slice::from_raw_parts(a.x.add(r * a.ldx + b * QK).cast::<i8>(), QK);
                let dot: i32 = xq.iter().zip(&wq).map(|(&x, &w)| i32::from(x) * w).sum();
                let (dx, m) = (*a.xd.add(r * a.ldxd + b), *a.xm.add(r * a.ldxd + b));
                s[c] += dw * dx * (dot - 8 * m) as f32;
            }
        }
    }
    store_portable(a, &sums);
}

unsafe fn portable_q8<const R: usize>(a: &TileArgs) {
    let mut sums = [[0.0f32; G]; R];
    for b in 0..a.k / QK {
        let g = std::slice::from_raw_parts(a.w.add(b * BG8), BG8);
        for c in 0..G {
            let dw = f16_at(&g[2 * c..]);
            let wq: [i32; QK] = std::array::from_fn(|j| i32::from(g[2 * G + (j / 4) * 4 * G + 4 * c + j % 4] as i8));
            for (r, s) in sums.iter_mut().enumerate() {
                let xq = std::slice::from_raw_parts(a.x.add(r * a.ldx + b * QK).cast::<i8>(), QK);
                let dot: i32 = xq.iter().zip(&wq).map(|(&x, &w)| i32::from(x) * w).sum();
                s[c] += dw * *a.xd.add(r * a.ldxd + b) * dot as f32;
            }
        }
    }
    store_portable(a, &sums);
}

#[cfg(target_arch = "x86_64")]
use super::matmul::prefetch_block;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Writes the tile's `R` vectors of 8 outputs (plus bias).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store_x8<const R: usize>(a: &TileArgs, acc: &[__m256; R]) {
    if a.cols < G {
        let mut sums = [[0.0f32; G]; R];
        for (s, &v) in sums.iter_mut().zip(acc) {
            _mm256_storeu_ps(s.as_mut_ptr(), v);
        }
        return store_portable(a, &sums);
    }
    for (r, &v) in acc.iter().enumerate() {
        let y = a.y.add(r * a.ldy);
        let v = if a.accumulate {
            _mm256_add_ps(_mm256_loadu_ps(y), v)
        } else if a.bias.is_null() {
            v
        } else {
            _mm256_add_ps(_mm256_loadu_ps(a.bias), v)
        };
        _mm256_storeu_ps(y, v);
    }
}

/// 4 activation bytes (at `p`) in every i32 lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn bcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32(p.cast::<i32>().read_unaligned())
}

/// The instantiation of the q4_0 / q8_0 tiles for one ISA: `$feat` its target features, `$dot4(acc, u, s)` adds
/// per i32 lane the sum of 4 products of unsigned `u` and signed `s` bytes. q8_0 weights are signed: with VNNI
/// they enter as `w + 128` (one xor per weight vector, shared by the tile's rows), so that the activations stay
/// the signed operand, broadcast straight from memory, and the i32 sums start at `-128 * sum(x)`;
/// with AVX2 as `w` with `x`'s signs against `|x|` (AVX2's `maddubs` would saturate on `w + 128`).
#[cfg(target_arch = "x86_64")]
macro_rules! x8_tiles {
    ($q4:ident, $q8:ident, $feat:literal, $dot4:ident, $vnni:expr) => {
        #[target_feature(enable = $feat)]
        unsafe fn $q4<const R: usize>(a: &TileArgs) {
            let (mask, zero) = (_mm256_set1_epi8(0x0f), _mm256_setzero_si256());
            let mask_hi = _mm256_set1_epi8(0xf0u8 as i8);
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..a.k / QK {
                let p = a.w.add(b * BG4);
                if a.prefetch != 0 {
                    prefetch_block(p.wrapping_add(a.prefetch), BG4);
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
                let mut lo = [zero; 4];
                let mut hi = [zero; 4];
                for j in 0..4 {
                    let v = _mm256_loadu_si256(p.add(2 * G + 32 * j).cast());
                    lo[j] = _mm256_and_si256(v, mask);
                    // VNNI takes the high nibbles in place, as 16 q (up to 240: dpbusd's sums do not saturate),
                    // and the block's sum shifts back once; AVX2's maddubs would saturate, so it shifts each.
                    hi[j] = if $vnni {
                        _mm256_and_si256(v, mask_hi)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(v, 4), mask)
                    };
                }
                // sum((q - 8) * x) = sum(q * x) - 8 * sum(x), exactly, in i32: the high half's sum starts at
                // -8 * sum(x) (times 16 where it is 16 * sum(q_hi * x), which keeps it a multiple of 16).
                let corr = if $vnni { -128 } else { -8 };
                let (mut s0, mut s1) = ([zero; R], [zero; R]);
                for (r, s1) in s1.iter_mut().enumerate() {
                    *s1 = _mm256_set1_epi32(corr * *a.xm.add(r * a.ldxd + b));
                }
                // Chunk-major over the rows: the rows' dot products are independent chains, so ready work
                // reaches the multiply-add pipes in program order rather than waiting behind one row's chain.
                for j in 0..4 {
                    for r in 0..R {
                        let x = a.x.add(r * a.ldx + b * QK + 4 * j).cast::<i8>();
                        s0[r] = $dot4(s0[r], lo[j], bcast4(x));
                        s1[r] = $dot4(s1[r], hi[j], bcast4(x.add(16)));
                    }
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    // 16 * (sum(q_hi * x) - 8 * sum(x)) is a multiple of 16: the arithmetic shift is exact.
                    let s1 = if $vnni { _mm256_srai_epi32(s1[r], 4) } else { s1[r] };
                    let s = _mm256_cvtepi32_ps(_mm256_add_epi32(s0[r], s1));
                    let dx = _mm256_broadcast_ss(&*a.xd.add(r * a.ldxd + b));
                    *acc = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), s, *acc);
                }
            }
            store_x8(a, &acc);
        }

        #[target_feature(enable = $feat)]
        unsafe fn $q8<const R: usize>(a: &TileArgs) {
            let zero = _mm256_setzero_si256();
            let off = _mm256_set1_epi8(-128);
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..a.k / QK {
                let p = a.w.add(b * BG8);
                if a.prefetch != 0 {
                    prefetch_block(p.wrapping_add(a.prefetch), BG8);
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
                let mut wq = [zero; 8];
                for (j, w) in wq.iter_mut().enumerate() {
                    *w = _mm256_loadu_si256(p.add(2 * G + 32 * j).cast());
                    if $vnni {
                        *w = _mm256_xor_si256(*w, off); // w + 128 as u8
                    }
                }
                let (mut s0, mut s1) = ([zero; R], [zero; R]);
                if $vnni {
                    // sum((w + 128) * x) = sum(w * x) + 128 * sum(x): the sum starts at -128 * sum(x), exactly.
                    for (r, s0) in s0.iter_mut().enumerate() {
                        *s0 = _mm256_set1_epi32(-128 * *a.xm.add(r * a.ldxd + b));
                    }
                }
                // Chunk-major over the rows, as in the q4_0 tile.
                for j in 0..4 {
                    for r in 0..R {
                        let x = a.x.add(r * a.ldx + b * QK + 8 * j).cast::<i8>();
                        if $vnni {
                            s0[r] = $dot4(s0[r], wq[2 * j], bcast4(x));
                            s1[r] = $dot4(s1[r], wq[2 * j + 1], bcast4(x.add(4)));
                        } else {
                            let (x0, x1) = (bcast4(x), bcast4(x.add(4)));
                            s0[r] = $dot4(s0[r], _mm256_sign_epi8(x0, x0), _mm256_sign_epi8(wq[2 * j], x0));
                            s1[r] = $dot4(s1[r], _mm256_sign_epi8(x1, x1), _mm256_sign_epi8(wq[2 * j + 1], x1));
                        }
                    }
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let s = _mm256_cvtepi32_ps(_mm256_add_epi32(s0[r], s1[r]));
                    let dx = _mm256_broadcast_ss(&*a.xd.add(r * a.ldxd + b));
                    *acc = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), s, *acc);
                }
            }
            store_x8(a, &acc);
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
#[inline]
unsafe fn dot4_vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot4_avx2(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    // |products| <= 255 * 127 for q4_0 nibbles and 127 * 127 for q8_0's |x|: pairs fit i16.
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
}

#[cfg(target_arch = "x86_64")]
x8_tiles!(vnni_q4, vnni_q8, "avx2,fma,f16c,avx512vnni,avx512vl", dot4_vnni, true);
#[cfg(target_arch = "x86_64")]
x8_tiles!(avx2_q4, avx2_q8, "avx2,fma,f16c", dot4_avx2, false);
