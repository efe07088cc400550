//! The CPU kernels besides matmul: norms, rotary embedding, attention over the KV cache, activations.
//! All arithmetic is f32, as in the float32 reference.

use super::pool::parallel_chunks_mut;

/// RMSNorm over each `w.len()`-element group of `x` (a whole row, or one head of it).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, unit_offset: bool, y: &mut [f32]) {
    let n = w.len();
    let work = |xs: &[f32], ys: &mut [f32]| {
        let ms = xs.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((y, &x), &w) in ys.iter_mut().zip(xs).zip(w) {
            let g = if unit_offset { 1.0 + w } else { w };
            *y = x * r * g;
        }
    };
    if x.len() >= 1 << 16 {
        parallel_chunks_mut(y, n, |i, ys| work(&x[i * n..][..n], ys));
    } else {
        x.chunks(n).zip(y.chunks_mut(n)).for_each(|(xs, ys)| work(xs, ys));
    }
}

/// Rotary embedding, rotate-half convention: within each head, element `i` pairs with `i + head_dim/2`.
/// Row `r` is at absolute position `start + r`.
pub fn rope(x: &[f32], width: usize, head_dim: usize, start: usize, inv_freq: &[f32], y: &mut [f32]) {
    let half = head_dim / 2;
    parallel_chunks_mut(y, width, |r, yr| {
        let xr = &x[r * width..][..width];
        let pos = (start + r) as f32;
        for (f, &inv) in inv_freq.iter().enumerate().take(half) {
            // The reference computes the angle in f32 too.
            let (sin, cos) = (pos * inv).sin_cos();
            for h in (0..width).step_by(head_dim) {
                let (a, b) = (xr[h + f], xr[h + f + half]);
                yr[h + f] = a * cos - b * sin;
                yr[h + f + half] = b * cos + a * sin;
            }
        }
    });
}

/// One layer's KV cache: a ring of `cap` positions (the window for sliding layers, the context otherwise).
pub struct KvCache {
    pub cap: usize,
    pub width: usize,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    pub fn new(cap: usize, width: usize) -> Self {
        Self { cap, width, k: vec![0.0; cap * width], v: vec![0.0; cap * width] }
    }

    /// Append rows for positions `start..start+rows`; only the last `cap` positions are kept.
    pub fn append(&mut self, start: usize, k: &[f32], v: &[f32]) {
        let rows = k.len() / self.width;
        for r in rows.saturating_sub(self.cap)..rows {
            let slot = (start + r) % self.cap;
            let w = self.width;
            self.k[slot * w..(slot + 1) * w].copy_from_slice(&k[r * w..(r + 1) * w]);
            self.v[slot * w..(slot + 1) * w].copy_from_slice(&v[r * w..(r + 1) * w]);
        }
    }
}

/// Geometry of one attention op.
#[derive(Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
    pub scale: f32,
}

/// Dot product with eight independent partial sums, so the compiler can keep them in vector registers
/// (a single running f32 sum is a serial dependency chain).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len() / 8 * 8;
    let mut acc = [0f32; 8];
    for (x, y) in a[..n].chunks_exact(8).zip(b[..n].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a[n..].iter().zip(&b[n..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

thread_local! {
    /// Scores of one (row, head), reused across calls so attention allocates nothing per token.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Causal attention for rows at positions `start..start+rows`: keys before `start` come from the cache, the
/// rest from this execution's `k`/`v`. Per (row, head): the scores, a max-subtracted softmax, then the
/// weighted sum of the values.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], cache: &KvCache, start: usize, s: AttnShape, out: &mut [f32]) {
    let hd = s.head_dim;
    let (qw, kw) = (s.heads * hd, s.kv_heads * hd);
    let group = s.heads / s.kv_heads;
    let key = |j: usize, off: usize| -> (&[f32], &[f32]) {
        if j < start {
            let slot = (j % cache.cap) * kw + off;
            (&cache.k[slot..slot + hd], &cache.v[slot..slot + hd])
        } else {
            let row = (j - start) * kw + off;
            (&k[row..row + hd], &v[row..row + hd])
        }
    };
    parallel_chunks_mut(out, hd, |i, o| {
        let (r, h) = (i / s.heads, i % s.heads);
        let p = start + r;
        let first = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
        let qh = &q[r * qw + h * hd..r * qw + (h + 1) * hd];
        let off = (h / group) * hd;
        SCORES.with_borrow_mut(|scores| {
            scores.clear();
            scores.extend((first..=p).map(|j| dot(qh, key(j, off).0) * s.scale));
            let m = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut l = 0.0;
            for x in scores.iter_mut() {
                *x = (*x - m).exp();
                l += *x;
            }
            o.fill(0.0);
            for (j, &e) in (first..=p).zip(scores.iter()) {
                let vj = key(j, off).1;
                o.iter_mut().zip(vj).for_each(|(a, &b)| *a += e * b);
            }
            let inv = 1.0 / l;
            o.iter_mut().for_each(|a| *a *= inv);
        });
    });
}

/// Gated linear units.
pub fn glu_silu(gate: &[f32], up: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(gate).zip(up).for_each(|((y, &g), &u)| *y = g / (1.0 + (-g).exp()) * u);
}

pub fn glu_gelu_tanh(gate: &[f32], up: &[f32], y: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    y.iter_mut().zip(gate).zip(up).for_each(|((y, &g), &u)| {
        *y = 0.5 * g * (1.0 + (C * (g + 0.044715 * g * g * g)).tanh()) * u;
    });
}

pub fn add(a: &[f32], b: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(a).zip(b).for_each(|((y, &a), &b)| *y = a + b);
}

pub fn scale(x: &[f32], f: f32, y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * f);
}

pub fn softcap(x: &[f32], cap: f32, y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = (x / cap).tanh() * cap);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_hand_computation() {
        // mean(x^2) = (9 + 16) / 2 = 12.5; 1/sqrt(12.5) = 0.28284
        let mut y = [0.0; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, false, &mut y);
        assert!((y[0] - 0.848_528).abs() < 1e-5 && (y[1] - 2.262_742).abs() < 1e-5, "{y:?}");
        rms_norm(&[3.0, 4.0], &[0.0, 1.0], 0.0, true, &mut y);
        assert!((y[0] - 0.848_528).abs() < 1e-5 && (y[1] - 2.262_742).abs() < 1e-5, "{y:?}");
    }

    #[test]
    fn rope_rotates_pairs_by_position_times_frequency() {
        // head_dim 4: pairs (0,2) at frequency 1 and (1,3) at frequency 0.5; position 2 -> angles 2 and 1.
        let x = [1.0, 1.0, 0.0, 0.0];
        let mut y = [0.0; 4];
        rope(&x, 4, 4, 2, &[1.0, 0.5], &mut y);
        let expect = [2f32.cos(), 1f32.cos(), 2f32.sin(), 1f32.sin()];
        for (a, b) in y.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn attention_of_one_key_returns_its_value_and_window_limits_keys() {
        let s = AttnShape { heads: 2, kv_heads: 1, head_dim: 2, window: None, scale: 1.0 };
        let cache = KvCache::new(4, 2);
        let mut out = [0.0; 4];
        attention(&[1.0, 0.0, 0.0, 1.0], &[5.0, 5.0], &[7.0, -3.0], &cache, 0, s, &mut out);
        assert_eq!(out, [7.0, -3.0, 7.0, -3.0]);

        // Two positions, equal scores: the second row averages both values; with window 1 it sees only itself.
        let (k, v) = ([0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]);
        let one = AttnShape { heads: 1, ..s };
        let mut out = [0.0; 4];
        attention(&[1.0, 1.0, 1.0, 1.0], &k, &v, &cache, 0, one, &mut out);
        assert_eq!(out, [1.0, 2.0, 2.0, 3.0]);
        attention(&[1.0, 1.0, 1.0, 1.0], &k, &v, &cache, 0, AttnShape { window: Some(1), ..one }, &mut out);
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn cache_ring_keeps_the_last_positions() {
        let mut c = KvCache::new(2, 1);
        c.append(0, &[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]);
        // Positions 1 and 2 survive, at slots 1 and 0.
        assert_eq!(c.k, [3.0, 2.0]);
        assert_eq!(c.v, [30.0, 20.0]);
    }
}
