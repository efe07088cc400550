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
/// rest from this execution's `k`/`v`. One task per (row, kv head) serves all the query heads that share the
/// kv head, so each key and value is read once per row: the scores, a max-subtracted softmax per head, then
/// the weighted sum of the values.
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
    parallel_chunks_mut(out, group * hd, |i, o| {
        let (r, g) = (i / s.kv_heads, i % s.kv_heads);
        let p = start + r;
        let first = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
        let keys = p + 1 - first;
        let qg = &q[r * qw + g * group * hd..][..group * hd];
        let off = g * hd;
        SCORES.with_borrow_mut(|scores| {
            // scores[h * keys + j]: query head h of the group against key first + j; then one 1/sum per head.
            scores.clear();
            scores.resize(group * keys + group, 0.0);
            let (scores, inv) = scores.split_at_mut(group * keys);
            for (j, pos) in (first..=p).enumerate() {
                let kj = key(pos, off).0;
                for (h, qh) in qg.chunks_exact(hd).enumerate() {
                    scores[h * keys + j] = dot(qh, kj) * s.scale;
                }
            }
            for (h, sc) in scores.chunks_exact_mut(keys).enumerate() {
                let m = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut l = 0.0;
                for x in sc.iter_mut() {
                    *x = (*x - m).exp();
                    l += *x;
                }
                inv[h] = 1.0 / l;
            }
            o.fill(0.0);
            for (j, pos) in (first..=p).enumerate() {
                let vj = key(pos, off).1;
                for (h, oh) in o.chunks_exact_mut(hd).enumerate() {
                    let e = scores[h * keys + j];
                    oh.iter_mut().zip(vj).for_each(|(a, &b)| *a += e * b);
                }
            }
            for (h, oh) in o.chunks_exact_mut(hd).enumerate() {
                oh.iter_mut().for_each(|a| *a *= inv[h]);
            }
        });
    });
}

/// e^x for f32 in plain arithmetic the compiler can vectorize (libm's `expf` is a call per element): write
/// x as n ln2 plus r with |r| <= ln2/2, take e^r from its degree-6 Taylor polynomial (truncation error below
/// 1.2e-7 relative), and put 2^n straight into the exponent bits. Inputs are clamped to [-87, 88], where 2^n stays a normal float.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the mantissa.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Elementwise `f(a, b)` into `y`, on the pool when there is enough of it.
fn zip_map(a: &[f32], b: &[f32], y: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    const CHUNK: usize = 1 << 14;
    let run = |i: usize, ys: &mut [f32]| {
        let (a, b) = (&a[i * CHUNK..][..ys.len()], &b[i * CHUNK..][..ys.len()]);
        ys.iter_mut().zip(a).zip(b).for_each(|((y, &a), &b)| *y = f(a, b));
    };
    if y.len() > CHUNK {
        parallel_chunks_mut(y, CHUNK, run);
    } else {
        run(0, y);
    }
}

/// Gated linear units: `act(gate) * up`. silu(g) = g / (1 + e^-g).
pub fn glu_silu(gate: &[f32], up: &[f32], y: &mut [f32]) {
    zip_map(gate, up, y, |g, u| g / (1.0 + exp_f32(-g)) * u);
}

/// GELU, tanh approximation: 0.5 g (1 + tanh(c)) with c = sqrt(2/pi) (g + 0.044715 g^3), which equals
/// g / (1 + e^(-2c)).
pub fn glu_gelu_tanh(gate: &[f32], up: &[f32], y: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    zip_map(gate, up, y, |g, u| g / (1.0 + exp_f32(-2.0 * C * (g + 0.044715 * g * g * g))) * u);
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

    /// Straightforward attention over explicit key/value lists: softmax(q.k * scale) . v per head.
    fn reference(q: &[f32], keys: &[Vec<f32>], vals: &[Vec<f32>], p: usize, s: AttnShape) -> Vec<f32> {
        let hd = s.head_dim;
        let first = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
        let mut out = vec![0.0; s.heads * hd];
        for h in 0..s.heads {
            let g = h / (s.heads / s.kv_heads);
            let qh = &q[h * hd..(h + 1) * hd];
            let sc: Vec<f64> = (first..=p)
                .map(|j| {
                    qh.iter().zip(&keys[j][g * hd..(g + 1) * hd]).map(|(a, b)| (a * b) as f64).sum::<f64>()
                        * s.scale as f64
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
            let l: f64 = e.iter().sum();
            for (j, w) in (first..=p).zip(&e) {
                for d in 0..hd {
                    out[h * hd + d] += (w / l * vals[j][g * hd + d] as f64) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn grouped_windowed_attention_over_cache_and_new_rows_matches_the_reference() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for window in [None, Some(3)] {
            let s = AttnShape { heads: 6, kv_heads: 2, head_dim: 8, window, scale: 0.5 };
            let (kw, qw) = (s.kv_heads * s.head_dim, s.heads * s.head_dim);
            let total = 9;
            let keys: Vec<Vec<f32>> = (0..total).map(|_| (0..kw).map(|_| rnd()).collect()).collect();
            let vals: Vec<Vec<f32>> = (0..total).map(|_| (0..kw).map(|_| rnd()).collect()).collect();
            let qs: Vec<Vec<f32>> = (0..total).map(|_| (0..qw).map(|_| rnd()).collect()).collect();
            // Positions 0..5 were run before (in the cache, a ring of 4 when windowed); 5..9 run now.
            let start = 5;
            let mut cache = KvCache::new(if window.is_some() { 4 } else { total }, kw);
            cache.append(0, &keys[..start].concat(), &vals[..start].concat());
            let mut out = vec![0.0; (total - start) * qw];
            let q = qs[start..].concat();
            attention(&q, &keys[start..].concat(), &vals[start..].concat(), &cache, start, s, &mut out);
            for (r, p) in (start..total).enumerate() {
                let want = reference(&qs[p], &keys, &vals, p, s);
                for (a, b) in out[r * qw..(r + 1) * qw].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "window {window:?} position {p}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn fast_exp_and_activations_match_f64() {
        let mut worst: f64 = 0.0;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4e-7, "exp relative error {worst}");
        let gate: Vec<f32> = (-400..400).map(|i| i as f32 * 0.025).collect();
        let up: Vec<f32> = gate.iter().map(|g| 1.0 - 0.5 * g).collect();
        let mut y = vec![0.0; gate.len()];
        glu_gelu_tanh(&gate, &up, &mut y);
        for ((&g, &u), &y) in gate.iter().zip(&up).zip(&y) {
            let (g, u) = (g as f64, u as f64);
            let want = 0.5 * g * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh()) * u;
            assert!((y as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "gelu({g}) * {u}: {y} vs {want}");
        }
        glu_silu(&gate, &up, &mut y);
        for ((&g, &u), &y) in gate.iter().zip(&up).zip(&y) {
            let (g, u) = (g as f64, u as f64);
            let want = g / (1.0 + (-g).exp()) * u;
            assert!((y as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "silu({g}) * {u}: {y} vs {want}");
        }
        // Far tails: no overflow or NaN.
        glu_silu(&[-200.0, 200.0], &[1.0, 1.0], &mut y[..2]);
        assert!(y[0].abs() < 1e-30 && y[1] == 200.0, "{:?}", &y[..2]);
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
