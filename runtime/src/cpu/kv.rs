//! The KV cache: one layer's keys and values, a ring of positions in f32 or f16 storage.

/// Storage of keys or values: f32, or f16 (half the memory; each value rounded once, when it is appended).
pub enum KvStore {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl KvStore {
    fn zeros(n: usize, f16: bool) -> Result<Self, std::collections::TryReserveError> {
        Ok(if f16 {
            let mut v = Vec::new();
            v.try_reserve_exact(n)?;
            v.resize(n, half::f16::ZERO);
            KvStore::F16(v)
        } else {
            let mut v = Vec::new();
            v.try_reserve_exact(n)?;
            v.resize(n, 0.0);
            KvStore::F32(v)
        })
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        match self {
            KvStore::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            KvStore::F16(v) => v[at..at + src.len()].convert_from_f32_slice(src),
        }
    }

    /// `len` values from `at`, as f32: a view of f32 storage, or converted into `tmp`.
    #[inline(always)]
    pub(super) fn read<'a>(&'a self, at: usize, tmp: &'a mut [f32]) -> &'a [f32] {
        match self {
            KvStore::F32(v) => &v[at..at + tmp.len()],
            KvStore::F16(v) => {
                widen(&v[at..at + tmp.len()], tmp);
                tmp
            }
        }
    }

    /// `dst.len()` values from `at` into `dst`, as f32.
    #[inline(always)]
    pub(super) fn read_into(&self, at: usize, dst: &mut [f32]) {
        match self {
            KvStore::F32(v) => dst.copy_from_slice(&v[at..at + dst.len()]),
            KvStore::F16(v) => widen(&v[at..at + dst.len()], dst),
        }
    }

    /// `n` stored elements from `at` as little-endian bytes of their storage type (f32 or f16): as a GPU's
    /// cache of the same dtype holds them.
    pub fn bytes(&self, at: usize, n: usize) -> Vec<u8> {
        match self {
            KvStore::F32(v) => v[at..at + n].iter().flat_map(|x| x.to_le_bytes()).collect(),
            KvStore::F16(v) => v[at..at + n].iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        }
    }

    /// Overwrite stored elements from `at` with little-endian bytes of the storage type ([`KvStore::bytes`]);
    /// `bytes` holds whole elements.
    pub fn set_bytes(&mut self, at: usize, bytes: &[u8]) {
        match self {
            KvStore::F32(v) => {
                for (d, b) in v[at..].iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
            KvStore::F16(v) => {
                for (d, b) in v[at..].iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = half::f16::from_bits(u16::from_le_bytes(b.try_into().expect("2 bytes")));
                }
            }
        }
    }

    /// Bytes of one stored element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            KvStore::F32(_) => 4,
            KvStore::F16(_) => 2,
        }
    }

    /// Every stored value as f32 (tests).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            KvStore::F32(v) => v.clone(),
            KvStore::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// `src` widened into `dst` (exact: every f16 is an f32). Attention widens each cached key and value it reads,
/// a head's worth at a time: through F16C in line where the CPU's kernels are AVX2's (which
/// [`super::isa::Isa::detect`] picks only with F16C), where `half`'s slice conversion made calls per 8 values
/// that took a sixth of attention's time in a decode step over four sequences.
#[inline(always)]
fn widen(src: &[half::f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::Isa::detect() != super::isa::Isa::Portable {
        // SAFETY: an AVX2 family is detected only on a CPU with F16C.
        return unsafe { widen_f16c(src, dst) };
    }
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
#[inline]
unsafe fn widen_f16c(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    assert_eq!(src.len(), dst.len());
    let mut i = 0;
    while i + 8 <= src.len() {
        // SAFETY: 8 values from i lie within both slices.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for (d, s) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = s.to_f32();
    }
}

/// One layer's KV cache: a ring of `cap` positions (the window for sliding layers, the context otherwise).
///
/// Head-major: kv head `g`'s key at ring slot `t` is `k[(g * cap + t) * head_dim..][..head_dim]`, so the keys an
/// attention task reads (one kv head, consecutive positions) are one contiguous stretch of memory, which the
/// hardware prefetchers stream, rather than a 1/kv_heads slice of every position's row.
pub struct KvCache {
    pub cap: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub k: KvStore,
    pub v: KvStore,
}

impl KvCache {
    /// An f32 cache.
    pub fn new(cap: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self::with_storage(cap, kv_heads, head_dim, false).expect("cache memory")
    }

    /// A cache in f32 or f16; fails, rather than aborting, when the memory cannot be had.
    pub fn with_storage(
        cap: usize,
        kv_heads: usize,
        head_dim: usize,
        f16: bool,
    ) -> Result<Self, std::collections::TryReserveError> {
        let n = cap * kv_heads * head_dim;
        Ok(Self { cap, kv_heads, head_dim, k: KvStore::zeros(n, f16)?, v: KvStore::zeros(n, f16)? })
    }

    /// Element offset of kv head `g` at position `pos`.
    #[inline(always)]
    pub(super) fn at(&self, g: usize, pos: usize) -> usize {
        (g * self.cap + pos % self.cap) * self.head_dim
    }

    /// Append rows (`kv_heads * head_dim` wide) for positions `start..start+rows`; only the last `cap` positions
    /// are kept.
    pub fn append(&mut self, start: usize, k: &[f32], v: &[f32]) {
        let (hd, width) = (self.head_dim, self.kv_heads * self.head_dim);
        let rows = k.len() / width;
        for r in rows.saturating_sub(self.cap)..rows {
            for g in 0..self.kv_heads {
                let (dst, src) = (self.at(g, start + r), r * width + g * hd);
                self.k.write(dst, &k[src..src + hd]);
                self.v.write(dst, &v[src..src + hd]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_ring_keeps_the_last_positions() {
        let mut c = KvCache::new(2, 1, 1);
        c.append(0, &[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]);
        // Positions 1 and 2 survive, at slots 1 and 0.
        assert_eq!(c.k.to_f32(), [3.0, 2.0]);
        assert_eq!(c.v.to_f32(), [30.0, 20.0]);
        // Two kv heads of width 2: head-major, so head 1's slots follow all of head 0's.
        let mut c = KvCache::new(2, 2, 2);
        c.append(5, &[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]);
        // Position 5 is slot 1.
        assert_eq!(c.k.to_f32(), [0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0]);
        assert_eq!(c.v.to_f32(), [0.0, 0.0, 5.0, 6.0, 0.0, 0.0, 7.0, 8.0]);
    }

    /// Widening is exact for every f16, NaNs kept NaN, past whole vectors of 8 too (19 values), and reading
    /// into a slice gives what reading through a view does.
    #[test]
    fn f16_reads_widen_every_value_exactly() {
        let specials = [0x0000u16, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0xbc00, 0x7bff, 0x7c00, 0xfc00, 0x7e00];
        let bits: Vec<u16> = specials.iter().copied().chain((0..8).map(|i| 0x1234 + 0x0f0f * i)).collect();
        let store = KvStore::F16(bits.iter().map(|&b| half::f16::from_bits(b)).collect());
        let (mut tmp, mut into) = (vec![0.0f32; 19], vec![0.0f32; 19]);
        let read = store.read(0, &mut tmp).to_vec();
        store.read_into(0, &mut into);
        for ((&b, &r), &i) in bits.iter().zip(&read).zip(&into) {
            let want = half::f16::from_bits(b).to_f32();
            assert!(r.to_bits() == want.to_bits() || (r.is_nan() && want.is_nan()), "{b:#06x}: {r} vs {want}");
            assert_eq!(i.to_bits(), r.to_bits(), "{b:#06x}");
        }
        // From an offset, as attention reads a head of a position.
        store.read_into(11, &mut into[..8]);
        assert_eq!(into[..8], read[11..19]);
    }
}
