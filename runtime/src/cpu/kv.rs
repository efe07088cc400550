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
        use half::slice::HalfFloatSliceExt;
        match self {
            KvStore::F32(v) => &v[at..at + tmp.len()],
            KvStore::F16(v) => {
                v[at..at + tmp.len()].convert_to_f32_slice(tmp);
                tmp
            }
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
}
