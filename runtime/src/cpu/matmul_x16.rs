//! q4_0 / q8_0 tiles on 512-bit vectors: up to four activation rows by two groups of 8 interleaved weight rows
//! ([`WeightLayout::Interleaved8`](unicorn_ir::quant::WeightLayout), see [`super::matmul_x8`]).
//!
//! One 512-bit weight vector holds chunk `j` of group A in its low half and chunk `j` of group B (the next 8
//! rows, `8 * ldw` bytes further) in its high half, so lane `c` is output row `c` of the 16, as in the 8-row
//! tiles; the 4 activation bytes of chunk `j` broadcast to all 16 lanes. Per block and activation row that is
//! one `dpbusd` per chunk for 16 weight rows where the 256-bit tiles need two, and one broadcast, one integer
//! correction, one conversion and one multiply-add of the scales for 16 rows where they need two each. Keeping
//! both groups' chunks in separate halves (rather than two chunks of one group) keeps every lane's integer sum
//! whole, so the scales apply exactly as in the 8-row tiles and every family computes the same i32 per block.
//!
//! The integers and the order of the f32 operations are those of the 8-row VNNI tiles (`(dw * dx) * s + acc`
//! with `s` the block's corrected i32 sum), so a lane's result is bit for bit that of the 256-bit VNNI family.
//!
//! A decode step on Intel's cores takes these tiles for its two streams ([`super::isa::DecodeStreams`]), each
//! prefetched `TileArgs::prefetch` bytes ahead where that is set.
//!
//! `TileArgs`: `w` points at group A's first block of the k-stretch, `ldw` is the bytes of one stored row, and
//! `cols` is 9..=16 (a tile of 8 or fewer columns runs the 8-row tile instead); group B exists (the compiler
//! pads the rows to whole groups), and only the first `cols` outputs are stored.

#![cfg(target_arch = "x86_64")]

use super::matmul::{prefetch_block, TileArgs};
use std::arch::x86_64::*;
use unicorn_ir::types::QK;

const G: usize = 8;
/// Bytes of one group block.
const BG4: usize = G * (2 + QK / 2);
const BG8: usize = G * (2 + QK);

/// The 16 weight rows' f16 scales of one block (8 at `p0`, 8 at `p1`) as f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn scales(p0: *const u8, p1: *const u8) -> __m512 {
    let lo = _mm256_castsi128_si256(_mm_loadu_si128(p0.cast()));
    _mm512_cvtph_ps(_mm256_inserti128_si256(lo, _mm_loadu_si128(p1.cast()), 1))
}

/// 32 bytes at `p0` in the low half, 32 at `p1` in the high half.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn load_pair(p0: *const u8, p1: *const u8) -> __m512i {
    _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(p0.cast())), _mm256_loadu_si256(p1.cast()), 1)
}

/// 4 activation bytes (at `p`) in every i32 lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn bcast4(p: *const i8) -> __m512i {
    _mm512_set1_epi32(p.cast::<i32>().read_unaligned())
}

/// Writes the tile's `R` vectors of 16 outputs (plus bias), the first `cols` of each.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn store<const R: usize>(a: &TileArgs, acc: &[__m512; R]) {
    debug_assert!(a.cols > G && a.cols <= 2 * G);
    let m: __mmask16 = if a.cols >= 2 * G { 0xffff } else { (1u16 << a.cols) - 1 };
    for (r, &v) in acc.iter().enumerate() {
        let y = a.y.add(r * a.ldy);
        // Masked-off lanes are neither read nor written, so a ragged tile never touches memory past its row.
        let v = if a.accumulate {
            _mm512_add_ps(_mm512_maskz_loadu_ps(m, y), v)
        } else if a.bias.is_null() {
            v
        } else {
            _mm512_add_ps(_mm512_maskz_loadu_ps(m, a.bias), v)
        };
        _mm512_mask_storeu_ps(y, m, v);
    }
}

/// q4_0: the low nibbles of chunk `j` are elements `4j..4j+4`, the high ones `16+4j..`; they enter `dpbusd` as
/// unsigned `q` (the high ones as `16 q`, unshifted), and the block's i32 sum starts at `-8 * sum(x)`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; the [`TileArgs`] pointers are valid as described there.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q4<const R: usize>(a: &TileArgs) {
    let (mask, zero) = (_mm512_set1_epi8(0x0f), _mm512_setzero_si512());
    let mask_hi = _mm512_set1_epi8(0xf0u8 as i8);
    let (w0, w1) = (a.w, a.w.add(G * a.ldw));
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..a.k / QK {
        let (p0, p1) = (w0.add(b * BG4), w1.add(b * BG4));
        if a.prefetch != 0 {
            prefetch_block(p0.wrapping_add(a.prefetch), BG4);
            prefetch_block(p1.wrapping_add(a.prefetch), BG4);
        }
        let dw = scales(p0, p1);
        let mut lo = [zero; 4];
        let mut hi = [zero; 4];
        for j in 0..4 {
            let v = load_pair(p0.add(2 * G + 32 * j), p1.add(2 * G + 32 * j));
            lo[j] = _mm512_and_si512(v, mask);
            // The high nibbles in place, as 16 q (up to 240: dpbusd's sums do not saturate); the block's
            // sum shifts back once.
            hi[j] = _mm512_and_si512(v, mask_hi);
        }
        // sum((q - 8) * x) = sum(q * x) - 8 * sum(x), exactly, in i32: the high half's sum, 16 * sum(q_hi * x),
        // starts at -128 * sum(x), which keeps it a multiple of 16.
        let (mut s0, mut s1) = ([zero; R], [zero; R]);
        for (r, s1) in s1.iter_mut().enumerate() {
            *s1 = _mm512_set1_epi32(-128 * *a.xm.add(r * a.ldxd + b));
        }
        // Chunk-major over the rows: independent chains reach the multiply-add pipes in program order.
        for j in 0..4 {
            for r in 0..R {
                let x = a.x.add(r * a.ldx + b * QK + 4 * j).cast::<i8>();
                s0[r] = _mm512_dpbusd_epi32(s0[r], lo[j], bcast4(x));
                s1[r] = _mm512_dpbusd_epi32(s1[r], hi[j], bcast4(x.add(16)));
            }
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // A multiple of 16: the arithmetic shift is exact.
            let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0[r], _mm512_srai_epi32(s1[r], 4)));
            let dx = _mm512_set1_ps(*a.xd.add(r * a.ldxd + b));
            *acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), s, *acc);
        }
    }
    store(a, &acc);
}

/// q8_0: weights enter `dpbusd` as `w + 128` (one xor per weight vector, shared by the tile's rows) and
/// the block's i32 sum starts at `-128 * sum(x)`.
///
/// # Safety
/// As for [`q4`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn q8<const R: usize>(a: &TileArgs) {
    let zero = _mm512_setzero_si512();
    let off = _mm512_set1_epi8(-128);
    let (w0, w1) = (a.w, a.w.add(G * a.ldw));
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..a.k / QK {
        let (p0, p1) = (w0.add(b * BG8), w1.add(b * BG8));
        if a.prefetch != 0 {
            prefetch_block(p0.wrapping_add(a.prefetch), BG8);
            prefetch_block(p1.wrapping_add(a.prefetch), BG8);
        }
        let dw = scales(p0, p1);
        let mut wq = [zero; 8];
        for (j, w) in wq.iter_mut().enumerate() {
            *w = _mm512_xor_si512(load_pair(p0.add(2 * G + 32 * j), p1.add(2 * G + 32 * j)), off);
        }
        // sum((w + 128) * x) = sum(w * x) + 128 * sum(x): the sum starts at -128 * sum(x), exactly.
        let (mut s0, mut s1) = ([zero; R], [zero; R]);
        for (r, s0) in s0.iter_mut().enumerate() {
            *s0 = _mm512_set1_epi32(-128 * *a.xm.add(r * a.ldxd + b));
        }
        // Chunk-major over the rows, as in the q4_0 tile.
        for j in 0..4 {
            for r in 0..R {
                let x = a.x.add(r * a.ldx + b * QK + 8 * j).cast::<i8>();
                s0[r] = _mm512_dpbusd_epi32(s0[r], wq[2 * j], bcast4(x));
                s1[r] = _mm512_dpbusd_epi32(s1[r], wq[2 * j + 1], bcast4(x.add(4)));
            }
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0[r], s1[r]));
            let dx = _mm512_set1_ps(*a.xd.add(r * a.ldxd + b));
            *acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), s, *acc);
        }
    }
    store(a, &acc);
}
