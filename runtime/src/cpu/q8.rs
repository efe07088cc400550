//! Activation rows quantized to 32-element int8 blocks, the left operand of the q8_0/q4_0 integer dot products.
//!
//! Like llama.cpp, a q8_0/q4_0 matmul quantizes its activations once per call and then multiplies int8 by int8.
//! Unlike GGML's `block_q8_0` the scale stays f32 (it never leaves memory we own, so there is no reason to round
//! it), and each block also carries `m = sum(q)` (an i32, ready for a broadcast from memory), which lets
//! q4_0 weights enter the dot product as their unsigned nibbles `q` instead of `q - 8`, and q8_0 weights as `w + 128`
//! (VNNI wants an unsigned operand): `sum((q - 8) * x) = sum(q * x) - 8 * m` in exact integer arithmetic, before
//! anything is scaled, so every kernel family computes the same integer for a block.
//!
//! Quantization: `amax = max |x|`, `q = round_ties_even(x * 127 / amax)`, `d = amax / 127`. The AVX2 and portable
//! versions perform the same f32 operations, so they produce identical blocks. Each element is off by at most
//! `d / 2` (plus an f32 rounding of `x * 127 / amax`).

use super::isa::Isa;
use super::pool::{self, SendPtr};
use unicorn_ir::types::QK;

/// Quantized activations: `rows` rows of `k` elements.
#[derive(Default)]
pub struct Q8Acts {
    /// `rows * k` quants.
    pub qs: Vec<i8>,
    /// Per-block scales, `rows * (k / QK)`.
    pub d: Vec<f32>,
    /// Per-block `sum(q)`, laid out like `d`.
    pub m: Vec<i32>,
    pub k: usize,
}

impl Q8Acts {
    /// Quantizes `x` (`rows * k`, `k` a multiple of [`QK`]) into `self`, reusing its buffers.
    pub fn quantize(&mut self, isa: Isa, x: &[f32], rows: usize, k: usize) {
        assert!(k.is_multiple_of(QK) && x.len() == rows * k);
        let nb = k / QK;
        self.k = k;
        // `resize` only allocates when the buffers must grow.
        self.qs.resize(rows * k, 0);
        self.d.resize(rows * nb, 0.0);
        self.m.resize(rows * nb, 0);
        let qs = &mut self.qs[..rows * k];
        let d = &mut self.d[..rows * nb];
        let m = &mut self.m[..rows * nb];
        if rows > 1 && rows * k >= 1 << 15 {
            let (dp, mp) = (SendPtr(d.as_mut_ptr()), SendPtr(m.as_mut_ptr()));
            pool::parallel_chunks_mut(qs, k, |r, q| {
                // SAFETY: row `r` owns elements r*nb..(r+1)*nb of the scale and sum buffers, which outlive the loop.
                let (d, m) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(dp.get().add(r * nb), nb),
                        std::slice::from_raw_parts_mut(mp.get().add(r * nb), nb),
                    )
                };
                quantize_row(isa, &x[r * k..][..k], q, d, m);
            });
        } else {
            for (((x, q), d), m) in x.chunks(k).zip(qs.chunks_mut(k)).zip(d.chunks_mut(nb)).zip(m.chunks_mut(nb)) {
                quantize_row(isa, x, q, d, m);
            }
        }
    }
}

fn quantize_row(isa: Isa, x: &[f32], qs: &mut [i8], d: &mut [f32], m: &mut [i32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512 | Isa::Amx => {
            assert!(isa.available());
            // SAFETY: the CPU has AVX2/FMA/F16C (checked above); slice lengths are checked inside.
            unsafe { avx2::quantize_row(x, qs, d, m) }
        }
        _ => quantize_row_portable(x, qs, d, m),
    }
}

fn quantize_row_portable(x: &[f32], qs: &mut [i8], d: &mut [f32], m: &mut [i32]) {
    for (((xb, qb), d), m) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(d.iter_mut()).zip(m.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        *d = amax / 127.0;
        *m = sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::QK;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], m: &mut [i32]) {
        let nb = x.len() / QK;
        assert!(qs.len() == nb * QK && d.len() == nb && m.len() == nb);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        // packs works within 128-bit lanes; this puts the four 8-byte groups back in order.
        let unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for b in 0..nb {
            let p = x.as_ptr().add(b * QK);
            let v =
                [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
            let a01 = _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask));
            let a23 = _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask));
            let a = _mm256_max_ps(a01, a23);
            let a = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let a = _mm_max_ps(a, _mm_movehl_ps(a, a));
            let amax = _mm_cvtss_f32(_mm_max_ss(a, _mm_movehdup_ps(a)));
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            // Round explicitly (ties to even) rather than trust MXCSR's rounding mode in the conversion.
            const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            let q = [
                _mm256_cvttps_epi32(_mm256_round_ps(_mm256_mul_ps(v[0], id), RNE)),
                _mm256_cvttps_epi32(_mm256_round_ps(_mm256_mul_ps(v[1], id), RNE)),
                _mm256_cvttps_epi32(_mm256_round_ps(_mm256_mul_ps(v[2], id), RNE)),
                _mm256_cvttps_epi32(_mm256_round_ps(_mm256_mul_ps(v[3], id), RNE)),
            ];
            let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let sum = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b10_11_00_01)));
            let q16 = [_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3])];
            let q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16[0], q16[1]), unshuffle);
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * QK).cast(), q8);
            d[b] = amax / 127.0;
            m[b] = sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks with the cases rounding gets wrong: an all-zero block, exact ties at +-0.5 steps.
    fn tricky_rows() -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut x: Vec<f32> = (0..3 * 256)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
            })
            .collect();
        x[32..64].fill(0.0); // an all-zero block
        x[64..96].iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 - 16.0); // id = 127/16: x = -8 and 8 give exact ties (-63.5, 63.5)
        x[96] = 127.0; // ties at x * id = 0.5 for the next element
        x[97] = 0.5;
        x[98] = 1.5;
        x[99] = -2.5;
        x
    }

    #[test]
    fn portable_quantizer_rounds_ties_to_even_within_half_a_step() {
        let x = tricky_rows();
        let mut a = Q8Acts::default();
        a.quantize(Isa::Portable, &x, 3, 256);
        assert_eq!(&a.qs[96..100], &[127, 0, 2, -2]); // ties to even
        assert_eq!((a.qs[64 + 8], a.qs[64 + 24]), (-64, 64));
        assert!(a.qs[32..64].iter().all(|&q| q == 0) && a.d[1] == 0.0, "the zero block");
        // Every element within half a step of its value; m is the block's quant sum.
        for (r, xr) in x.chunks(256).enumerate() {
            for (bi, xb) in xr.chunks(32).enumerate() {
                let d = a.d[r * 8 + bi];
                let mut sum = 0i32;
                for (i, &v) in xb.iter().enumerate() {
                    let q = a.qs[r * 256 + bi * 32 + i];
                    sum += i32::from(q);
                    assert!((v - f32::from(q) * d).abs() <= d * 0.5001, "{v} {q} {d}");
                }
                assert_eq!(a.m[r * 8 + bi], sum);
            }
        }
    }

    #[test]
    fn every_simd_quantizer_matches_the_portable_one() {
        let x = tricky_rows();
        let mut want = Q8Acts::default();
        want.quantize(Isa::Portable, &x, 3, 256);
        let simd: Vec<Isa> = Isa::available_all().into_iter().filter(|&i| i != Isa::Portable).collect();
        eprintln!("SIMD quantizers checked here: {simd:?}");
        for isa in simd {
            let mut got = Q8Acts::default();
            got.quantize(isa, &x, 3, 256);
            assert_eq!(got.qs, want.qs, "{}", isa.name());
            assert_eq!(got.d, want.d, "{}", isa.name());
            assert_eq!(got.m, want.m, "{}", isa.name());
        }
    }
}
