//! Reference encoders and decoders for the weight storage formats ([`WeightFormat`]).
//!
//! The compiler writes plan weights with [`encode_row`]; tests and slow paths read them back with
//! [`decode_row`]. q8_0 and q4_0 reproduce GGML's reference quantizers (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref`) bit for bit, so a plan's blocks equal a GGUF file's blocks for the same floats:
//! in particular the quants are computed with the f32 scale while the stored scale is its f16 rounding, exactly
//! as GGML does. f16 and bf16 round to nearest, ties to even. Everything is little-endian and alignment-free.

use crate::types::{WeightFormat, QK};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

/// Element type of a tensor in a source checkpoint (safetensors), before conversion to a plan format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceDType {
    F32,
    F16,
    Bf16,
}

impl SourceDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SourceDType::F32 => 4,
            SourceDType::F16 | SourceDType::Bf16 => 2,
        }
    }
}

/// Appends the encoding of `src` in `format` to `dst`.
///
/// Panics if `format` is quantized and `src.len()` is not a multiple of [`QK`].
pub fn encode_row(format: WeightFormat, src: &[f32], dst: &mut Vec<u8>) {
    let bytes = format
        .row_bytes(src.len())
        .unwrap_or_else(|| panic!("{format} row of {} elements is not a whole number of blocks", src.len()));
    dst.reserve(bytes);
    match format {
        WeightFormat::F32 => src.iter().for_each(|v| dst.extend_from_slice(&v.to_le_bytes())),
        WeightFormat::F16 => src.iter().for_each(|&v| dst.extend_from_slice(&f16::from_f32(v).to_le_bytes())),
        WeightFormat::Bf16 => src.iter().for_each(|&v| dst.extend_from_slice(&bf16::from_f32(v).to_le_bytes())),
        WeightFormat::Q8_0 => src.chunks_exact(QK).for_each(|b| encode_block_q8_0(b, dst)),
        WeightFormat::Q4_0 => src.chunks_exact(QK).for_each(|b| encode_block_q4_0(b, dst)),
    }
}

/// GGML `quantize_row_q8_0_ref` for one block.
fn encode_block_q8_0(x: &[f32], dst: &mut Vec<u8>) {
    // GGML's `MAX(amax, fabsf(v))`; NaNs are not given a meaning here either.
    let amax = x.iter().fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    dst.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    // `f32::round` is C's `roundf` (half away from zero); `as i8` saturates where C would be undefined.
    dst.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// GGML `quantize_row_q4_0_ref` for one block.
fn encode_block_q4_0(x: &[f32], dst: &mut Vec<u8>) {
    // The element of largest magnitude, sign kept; the first one wins ties (GGML's strict `<`).
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    dst.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    // C's `(int8_t)` truncates toward zero, as does `as i8` (which also saturates instead of being undefined).
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    let (lo, hi) = x.split_at(QK / 2);
    dst.extend(lo.iter().zip(hi).map(|(&a, &b)| q(a) | (q(b) << 4)));
}

/// How the rows of a q4_0 / q8_0 matrix are arranged in a plan (see `docs/plan-format.md`). The blocks' bytes are
/// GGML's either way; a layout only permutes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightLayout {
    /// Row after row, each row its blocks in order (every format; what plans without a `layout` hold).
    #[default]
    Rows,
    /// q4_0 / q8_0 matrices only: groups of [`INTERLEAVE`] rows; inside a group, for each block index, the 8
    /// rows' f16 scales, then their quant bytes interleaved 4 bytes at a time (see [`interleave_rows`]). The rows
    /// are padded with zero rows (scale 0, so every value 0) to whole groups: [`WeightLayout::stored_rows`].
    Interleaved8,
}

/// Rows per group of [`WeightLayout::Interleaved8`].
pub const INTERLEAVE: usize = 8;

impl WeightLayout {
    /// Whether a weight of `format` and `shape` can be stored in this layout.
    pub fn fits(self, format: WeightFormat, shape: &[usize]) -> bool {
        match self {
            WeightLayout::Rows => true,
            WeightLayout::Interleaved8 => format.is_quantized() && shape.len() == 2 && shape[0] > 0,
        }
    }

    /// Rows stored for a matrix of `rows` rows: whole groups for [`WeightLayout::Interleaved8`].
    pub fn stored_rows(self, rows: usize) -> usize {
        match self {
            WeightLayout::Rows => rows,
            WeightLayout::Interleaved8 => rows.next_multiple_of(INTERLEAVE),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightLayout::Rows => "rows",
            WeightLayout::Interleaved8 => "interleaved8",
        }
    }
}

/// Bytes of the quants of one block of `format` (q4_0 / q8_0).
fn block_quant_bytes(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Q8_0 => QK,
        WeightFormat::Q4_0 => QK / 2,
        _ => panic!("{format} has no interleaved layout"),
    }
}

/// Appends [`INTERLEAVE`] row-major rows of `k` elements (`rows`, `8 * row_bytes` bytes) in the
/// [`WeightLayout::Interleaved8`] order: for each block index `b`, the 8 rows' f16 scales of block `b` (row 0
/// first), then for each 4-byte chunk `c` of the block's quants, chunk `c` of rows 0..8.
pub fn interleave_rows(format: WeightFormat, k: usize, rows: &[u8], dst: &mut Vec<u8>) {
    let qb = block_quant_bytes(format);
    let (bb, rb) = (2 + qb, format.row_bytes(k).expect("whole blocks"));
    assert_eq!(rows.len(), INTERLEAVE * rb, "interleave_rows: not 8 rows");
    dst.reserve(rows.len());
    for b in 0..k / QK {
        let blk = |r: usize| &rows[r * rb + b * bb..][..bb];
        (0..INTERLEAVE).for_each(|r| dst.extend_from_slice(&blk(r)[..2]));
        for c in (0..qb).step_by(4) {
            (0..INTERLEAVE).for_each(|r| dst.extend_from_slice(&blk(r)[2 + c..][..4]));
        }
    }
}

/// Appends row `r` (0..8) of an [`interleave_rows`] group (`group`, 8 rows of `k` elements) in row-major order.
pub fn deinterleave_row(format: WeightFormat, k: usize, group: &[u8], r: usize, dst: &mut Vec<u8>) {
    let qb = block_quant_bytes(format);
    let gb = INTERLEAVE * (2 + qb);
    assert!(r < INTERLEAVE && group.len() == k / QK * gb, "deinterleave_row: not an 8-row group");
    for g in group.chunks_exact(gb) {
        dst.extend_from_slice(&g[2 * r..][..2]);
        for c in (0..qb).step_by(4) {
            dst.extend_from_slice(&g[2 * INTERLEAVE + c * INTERLEAVE + 4 * r..][..4]);
        }
    }
}

/// Decodes one row of `dst.len()` elements stored in `format`.
///
/// Panics if `src` is not exactly the encoding size of `dst.len()` elements.
pub fn decode_row(format: WeightFormat, src: &[u8], dst: &mut [f32]) {
    let bytes = format.row_bytes(dst.len());
    assert_eq!(bytes, Some(src.len()), "{format} row of {} elements: wrong byte count", dst.len());
    match format {
        WeightFormat::F32 => source_to_f32(SourceDType::F32, src, dst),
        WeightFormat::F16 => source_to_f32(SourceDType::F16, src, dst),
        WeightFormat::Bf16 => source_to_f32(SourceDType::Bf16, src, dst),
        WeightFormat::Q8_0 => {
            for (b, out) in src.chunks_exact(2 + QK).zip(dst.chunks_exact_mut(QK)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                out.iter_mut().zip(&b[2..]).for_each(|(o, &q)| *o = f32::from(q as i8) * d);
            }
        }
        WeightFormat::Q4_0 => {
            for (b, out) in src.chunks_exact(2 + QK / 2).zip(dst.chunks_exact_mut(QK)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let (lo, hi) = out.split_at_mut(QK / 2);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..]) {
                    *l = f32::from((q & 15) as i8 - 8) * d;
                    *h = f32::from((q >> 4) as i8 - 8) * d;
                }
            }
        }
    }
}

/// Converts little-endian checkpoint elements to f32. `bytes` may start at any address.
///
/// Panics if `bytes.len() != dst.len() * dtype.size()`.
pub fn source_to_f32(dtype: SourceDType, bytes: &[u8], dst: &mut [f32]) {
    assert_eq!(bytes.len(), dst.len() * dtype.size(), "{dtype:?} source: wrong byte count");
    match dtype {
        SourceDType::F32 => {
            for (o, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        SourceDType::F16 => {
            // Through an aligned buffer of bits, so that `half` can convert whole slices (with F16C when the CPU
            // has it) rather than one call, and one feature check, per element.
            let mut bits = [0u16; 64];
            for (out, b) in dst.chunks_mut(64).zip(bytes.chunks(128)) {
                let bits = &mut bits[..out.len()];
                bits.iter_mut().zip(b.chunks_exact(2)).for_each(|(h, b)| *h = u16::from_le_bytes([b[0], b[1]]));
                bits.reinterpret_cast::<f16>().convert_to_f32_slice(out);
            }
        }
        SourceDType::Bf16 => {
            // bf16 is the top half of an f32: widening is exact.
            for (o, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rng::XorShift as Rng;

    fn encode(format: WeightFormat, src: &[f32]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_row(format, src, &mut v);
        v
    }

    fn decode(format: WeightFormat, src: &[u8], len: usize) -> Vec<f32> {
        let mut v = vec![0.0; len];
        decode_row(format, src, &mut v);
        v
    }

    #[test]
    fn sizes_match_row_bytes() {
        let x = vec![0.5f32; 96];
        for f in WeightFormat::ALL {
            assert_eq!(Some(encode(f, &x).len()), f.row_bytes(96), "{f}");
        }
    }

    #[test]
    fn float_formats_round_trip() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let x: Vec<f32> = (0..77).map(|_| rng.f32() * 10.0).collect();
        assert_eq!(decode(WeightFormat::F32, &encode(WeightFormat::F32, &x), 77), x);
        for (f, rel) in [(WeightFormat::F16, 1.0 / 2048.0), (WeightFormat::Bf16, 1.0 / 256.0)] {
            let y = decode(f, &encode(f, &x), 77);
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= a.abs() * rel, "{f}: {a} -> {b}");
            }
            // Values already representable survive a second trip unchanged.
            assert_eq!(decode(f, &encode(f, &y), 77), y, "{f}");
        }
    }

    #[test]
    fn f16_bf16_round_to_nearest_even() {
        let f16_bits = |v: f32| u16::from_le_bytes(encode(WeightFormat::F16, &[v]).try_into().unwrap());
        let bf16_bits = |v: f32| u16::from_le_bytes(encode(WeightFormat::Bf16, &[v]).try_into().unwrap());
        let p = |e: i32| 2f32.powi(e);
        // f16 has 10 mantissa bits: 1 + 2^-11 is halfway between 1.0 (0x3C00, even) and 1 + 2^-10 (0x3C01).
        assert_eq!(f16_bits(1.0 + p(-11)), 0x3C00);
        // Halfway between 0x3C01 and 0x3C02 (even): goes up.
        assert_eq!(f16_bits(1.0 + 3.0 * p(-11)), 0x3C02);
        // Just above halfway goes up.
        assert_eq!(f16_bits(1.0 + p(-11) + p(-20)), 0x3C01);
        // Negative ties mirror: -(1 + 2^-11) -> -1.0.
        assert_eq!(f16_bits(-(1.0 + p(-11))), 0xBC00);
        // 65520 is halfway between 65504 (0x7BFF, odd) and 65536 (the even, overflowing, successor): infinity.
        assert_eq!(f16_bits(65520.0), 0x7C00);
        assert_eq!(f16_bits(65519.0), 0x7BFF);
        // bf16 has 7 mantissa bits: 1 + 2^-8 is halfway between 0x3F80 (even) and 0x3F81.
        assert_eq!(bf16_bits(1.0 + p(-8)), 0x3F80);
        assert_eq!(bf16_bits(1.0 + 3.0 * p(-8)), 0x3F82);
        assert_eq!(bf16_bits(1.0 + p(-8) + p(-20)), 0x3F81);
        assert_eq!(bf16_bits(-2.0), 0xC000);
    }

    #[test]
    fn q8_0_block_by_hand() {
        // x_j = j for j in 0..32. amax = 31, d = 31/127 = 0.244094..., and as f16: 0.244094 = 1.95276 * 2^-3,
        // mantissa 0.95276 * 1024 = 975.62 -> 976, exponent -3 + 15 = 12: bits (12 << 10) | 976 = 0x33D0.
        // q_j = round(j * 127/31) = 4j + round(3j/31): 3j mod 31 never equals 15.5, so no ties; see `expected`.
        let x: Vec<f32> = (0..32).map(|j| j as f32).collect();
        #[rustfmt::skip]
        let expected: [u8; 34] = [
            0xD0, 0x33,
            0, 4, 8, 12, 16, 20, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61,
            66, 70, 74, 78, 82, 86, 90, 94, 98, 102, 107, 111, 115, 119, 123, 127,
        ];
        // Cross-check the hand-written table against the integer formula round(127 j / 31) = (254 j + 31) / 62.
        for j in 0..32 {
            assert_eq!(expected[2 + j] as usize, (254 * j + 31) / 62, "j = {j}");
        }
        assert_eq!(encode(WeightFormat::Q8_0, &x), expected);
        // Decoding gives q * f16(d), with f16(d) = (1 + 976/1024) * 2^-3 = 2000/8192.
        let y = decode(WeightFormat::Q8_0, &expected, 32);
        assert_eq!(y[31], 127.0 * (2000.0 / 8192.0));
        assert_eq!(y[6], 25.0 * (2000.0 / 8192.0));
    }

    #[test]
    fn q8_0_rounds_ties_away_from_zero() {
        // amax = 127 gives d = 1 (f16 0x3C00) and id = 1, so every x*id below is exact and exactly a tie.
        let mut x = vec![0.0f32; 32];
        x[..7].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -126.5]);
        let mut expected = vec![0x00, 0x3C, 127, 1, 2, 3, (-1i8) as u8, (-2i8) as u8, (-127i8) as u8];
        expected.resize(34, 0);
        assert_eq!(encode(WeightFormat::Q8_0, &x), expected);
    }

    #[test]
    fn q4_0_block_by_hand() {
        // x_j = j - 16: the largest |x| is 16 at j = 0 (x = -16), so d = -16 / -8 = 2 (f16 0x4000) and id = 0.5.
        // q_j = min(15, trunc((j - 16) / 2 + 8.5)) = min(15, trunc(j/2 + 0.5)) = min(15, (j + 1) / 2), all exact:
        //   j:   0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 | 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
        //   q:   0 1 1 2 2 3 3 4 4 5  5  6  6  7  7  8 |  8  9  9 10 10 11 11 12 12 13 13 14 14 15 15 15
        // byte j = q_j | q_{j+16} << 4.
        let x: Vec<f32> = (0..32).map(|j| j as f32 - 16.0).collect();
        #[rustfmt::skip]
        let expected: [u8; 18] = [
            0x00, 0x40,
            0x80, 0x91, 0x91, 0xA2, 0xA2, 0xB3, 0xB3, 0xC4, 0xC4, 0xD5, 0xD5, 0xE6, 0xE6, 0xF7, 0xF7, 0xF8,
        ];
        assert_eq!(encode(WeightFormat::Q4_0, &x), expected);
        let y = decode(WeightFormat::Q4_0, &expected, 32);
        // (q - 8) * 2: j = 0 -> -16, j = 1 -> -14, j = 16 -> 0, j = 31 -> 14 (15 was clamped).
        assert_eq!((y[0], y[1], y[16], y[31]), (-16.0, -14.0, 0.0, 14.0));
    }

    #[test]
    fn q4_0_keeps_sign_of_extreme_and_first_wins() {
        // Largest |x| is +8 (first of the two 8s): d = 8 / -8 = -1 (f16 0xBC00), id = -1.
        // q = trunc(-x + 8.5): x=8 -> 0, x=-8 -> 16 -> clamped 15, x=-7 -> 15, x=0 -> 8.
        let mut x = vec![0.0f32; 32];
        x[0] = 8.0;
        x[1] = -8.0;
        x[2] = -7.0;
        x[17] = 3.0; // q = trunc(5.5) = 5, high nibble of byte 1.
        let mut expected = vec![0x00, 0xBC, 0x80, 0x5F, 0x8F];
        expected.resize(18, 0x88);
        assert_eq!(encode(WeightFormat::Q4_0, &x), expected);
    }

    #[test]
    fn zero_block_has_zero_scale() {
        let x = [0.0f32; 32];
        let q8 = encode(WeightFormat::Q8_0, &x);
        assert!(q8.iter().all(|&b| b == 0));
        let q4 = encode(WeightFormat::Q4_0, &x);
        // GGML computes d = 0 / -8 = -0.0, stored as f16 0x8000.
        assert_eq!(&q4[..2], &[0x00, 0x80]);
        assert!(q4[2..].iter().all(|&b| b == 0x88));
        assert_eq!(decode(WeightFormat::Q4_0, &q4, 32), x);
    }

    /// A block on the q8_0 grid (TESTING.md): q * d with d an f16, |q| <= 126 and one element at +-127 d.
    fn q8_grid_block(rng: &mut Rng) -> Vec<f32> {
        let d = f16::from_f32(rng.f32() * 0.1).to_f32();
        let mut x: Vec<f32> = (0..32).map(|_| (rng.below(253) as f32 - 126.0) * d).collect();
        x[rng.below(32) as usize] = if rng.below(2) == 0 { 127.0 } else { -127.0 } * d;
        x
    }

    /// A block on the q4_0 grid: (q - 8) * d with q in 1..=15 and exactly one element at -8 d.
    fn q4_grid_block(rng: &mut Rng) -> Vec<f32> {
        let d = f16::from_f32(rng.f32() * 0.1).to_f32();
        let mut x: Vec<f32> = (0..32).map(|_| (rng.below(15) as f32 + 1.0 - 8.0) * d).collect();
        x[rng.below(32) as usize] = -8.0 * d;
        x
    }

    #[test]
    fn quantized_grid_values_are_lossless() {
        let mut rng = Rng(0x0dd_b1a5_e5ca_1ab1);
        for (f, gen) in
            [(WeightFormat::Q8_0, q8_grid_block as fn(&mut Rng) -> Vec<f32>), (WeightFormat::Q4_0, q4_grid_block)]
        {
            for _ in 0..200 {
                let x: Vec<f32> = (0..3).flat_map(|_| gen(&mut rng)).collect();
                let bytes = encode(f, &x);
                assert_eq!(decode(f, &bytes, x.len()), x, "{f}");
                assert_eq!(encode(f, &x), bytes, "{f}");
            }
        }
    }

    #[test]
    fn quantized_round_trip_error_is_bounded() {
        let mut rng = Rng(42);
        for f in [WeightFormat::Q8_0, WeightFormat::Q4_0] {
            let x: Vec<f32> = (0..32 * 50).map(|_| rng.f32() * 3.0).collect();
            let bytes = encode(f, &x);
            let y = decode(f, &bytes, x.len());
            for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                // Half a step (q8_0) or a whole one (q4_0 clamps q = 16 to 15 on the side opposite the extreme),
                // plus the f16 rounding of d (relative 2^-11) applied to the largest value.
                let bound = if f == WeightFormat::Q8_0 { amax / 127.0 * 0.5 } else { amax / 8.0 } + amax / 1024.0;
                for (a, b) in xb.iter().zip(yb) {
                    assert!((a - b).abs() <= bound, "{f}: {a} -> {b} (bound {bound})");
                }
            }
            // Decoded values are on the grid: re-encoding is the identity.
            assert_eq!(encode(f, &y), bytes, "{f}");
        }
    }

    #[test]
    fn source_conversion_reads_unaligned_little_endian() {
        let vals = [1.5f32, -2.25, 65504.0, 3.0e-5];
        for dtype in [SourceDType::F32, SourceDType::F16, SourceDType::Bf16] {
            let mut buf = vec![0xAAu8]; // shift the data to an odd address
            for &v in &vals {
                match dtype {
                    SourceDType::F32 => buf.extend_from_slice(&v.to_le_bytes()),
                    SourceDType::F16 => buf.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                    SourceDType::Bf16 => buf.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
                }
            }
            let mut out = [0.0f32; 4];
            source_to_f32(dtype, &buf[1..], &mut out);
            for (&v, &o) in vals.iter().zip(&out) {
                let expect = match dtype {
                    SourceDType::F32 => v,
                    SourceDType::F16 => f16::from_f32(v).to_f32(),
                    SourceDType::Bf16 => bf16::from_f32(v).to_f32(),
                };
                assert_eq!(o, expect, "{dtype:?}");
            }
        }
        // A run longer than the 64-element conversion buffer, at an odd address: every f16 bit pattern from 0x3000.
        let bits: Vec<u16> = (0x3000..0x3000 + 150).collect();
        let mut buf = vec![0u8];
        bits.iter().for_each(|b| buf.extend_from_slice(&b.to_le_bytes()));
        let mut out = vec![0.0f32; 150];
        source_to_f32(SourceDType::F16, &buf[1..], &mut out);
        for (&b, &o) in bits.iter().zip(&out) {
            assert_eq!(o, f16::from_bits(b).to_f32());
        }
        // Explicit bytes: f16 0x3E00 = 1.5, bf16 0xC010 = -2.25, f32 0x3FC00000 = 1.5.
        let mut o = [0.0f32; 1];
        source_to_f32(SourceDType::F16, &[0x00, 0x3E], &mut o);
        assert_eq!(o[0], 1.5);
        source_to_f32(SourceDType::Bf16, &[0x10, 0xC0], &mut o);
        assert_eq!(o[0], -2.25);
        source_to_f32(SourceDType::F32, &[0x00, 0x00, 0xC0, 0x3F], &mut o);
        assert_eq!(o[0], 1.5);
    }

    #[test]
    fn interleaved_layout_permutes_whole_rows_and_round_trips() {
        let mut rng = Rng(31);
        for format in [WeightFormat::Q4_0, WeightFormat::Q8_0] {
            let k = 96;
            let rb = format.row_bytes(k).unwrap();
            let mut rows = Vec::new();
            for _ in 0..INTERLEAVE {
                let src: Vec<f32> = (0..k).map(|_| rng.f32()).collect();
                encode_row(format, &src, &mut rows);
            }
            let mut group = Vec::new();
            interleave_rows(format, k, &rows, &mut group);
            assert_eq!(group.len(), rows.len());
            for r in 0..INTERLEAVE {
                let mut back = Vec::new();
                deinterleave_row(format, k, &group, r, &mut back);
                assert_eq!(back, &rows[r * rb..(r + 1) * rb], "{format} row {r}");
            }
            // Byte by byte as docs/plan-format.md has it: block 1's scales, then chunk c of row r.
            let (qb, bb) = (rb / (k / QK) - 2, rb / (k / QK));
            let g1 = &group[INTERLEAVE * bb..];
            for r in 0..INTERLEAVE {
                assert_eq!(g1[2 * r..2 * r + 2], rows[r * rb + bb..][..2]);
                for c in 0..qb / 4 {
                    assert_eq!(g1[16 + 32 * c + 4 * r..][..4], rows[r * rb + bb + 2 + 4 * c..][..4]);
                }
            }
        }
    }

    #[test]
    fn layouts_fit_their_formats_and_shapes() {
        assert!(WeightLayout::Interleaved8.fits(WeightFormat::Q4_0, &[64, 32]));
        assert!(WeightLayout::Interleaved8.fits(WeightFormat::Q8_0, &[16, 64]));
        assert!(WeightLayout::Interleaved8.fits(WeightFormat::Q4_0, &[60, 32]));
        assert!(!WeightLayout::Interleaved8.fits(WeightFormat::Q4_0, &[0, 32]));
        assert_eq!(WeightLayout::Interleaved8.stored_rows(60), 64);
        assert_eq!(WeightLayout::Interleaved8.stored_rows(64), 64);
        assert_eq!(WeightLayout::Rows.stored_rows(60), 60);
        assert!(!WeightLayout::Interleaved8.fits(WeightFormat::F16, &[64, 32]));
        assert!(!WeightLayout::Interleaved8.fits(WeightFormat::Q8_0, &[64]));
        assert!(WeightLayout::Rows.fits(WeightFormat::Q8_0, &[60, 32]));
        assert_eq!(serde_json::to_string(&WeightLayout::Interleaved8).unwrap(), "\"interleaved8\"");
        // Messages name a layout as plan files spell it.
        for l in [WeightLayout::Rows, WeightLayout::Interleaved8] {
            assert_eq!(serde_json::to_string(&l).unwrap(), format!("\"{}\"", l.name()));
        }
        assert_eq!(serde_json::from_str::<WeightLayout>("\"rows\"").unwrap(), WeightLayout::Rows);
    }
}
