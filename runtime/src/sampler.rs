//! Token sampling: greedy, or temperature then top-k then top-p (the order transformers applies them), from a
//! seeded generator so runs repeat.

#[derive(Debug, Clone, Copy)]
pub struct SamplerOptions {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no limit.
    pub top_k: usize,
    /// 1 means no limit.
    pub top_p: f32,
    pub seed: u64,
}

pub struct Sampler {
    o: SamplerOptions,
    state: u64,
    /// Reused candidate buffer: (logit or probability, token).
    cand: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(o: SamplerOptions) -> Self {
        Self { o, state: o.seed, cand: Vec::new() }
    }

    /// SplitMix64: small, fast and good enough for sampling.
    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether every token is the argmax (temperature 0), which an executor can pick without the logits.
    pub fn is_greedy(&self) -> bool {
        self.o.temperature <= 0.0
    }

    /// How many of the largest logits a sampled step needs (`Some(k)`: the sampler limits itself to them, so
    /// an executor can pick them where the logits are); `None` when greedy or unlimited.
    pub fn candidates(&self) -> Option<usize> {
        (!self.is_greedy() && self.o.top_k > 0).then_some(self.o.top_k)
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let k = if self.o.top_k > 0 { self.o.top_k } else { logits.len() };
        top_k(logits, k, &mut self.cand);
        self.pick()
    }

    /// [`Sampler::sample`] from the `k` largest logits of a row ([`Sampler::candidates`]) as (logit, token),
    /// largest first and of equals the smaller token first, as [`top_k`] orders them (past the row's numbers,
    /// token `u32::MAX`): the same token `sample` picks from the whole row.
    pub fn sample_top(&mut self, cands: &[(f32, u32)]) -> u32 {
        if self.is_greedy() {
            return cands.first().map_or(0, |c| c.1);
        }
        self.cand.clear();
        // An executor pads a row of fewer numbers than k with token u32::MAX.
        self.cand.extend(cands.iter().take(self.o.top_k.max(1)).take_while(|c| c.1 != u32::MAX));
        self.pick()
    }

    /// Temperature, then top-p, then a draw, over the ordered candidates in `cand`.
    fn pick(&mut self) -> u32 {
        let Some(&(max, _)) = self.cand.first() else { return 0 };
        let t = self.o.temperature;
        let mut sum = 0.0;
        for c in &mut self.cand {
            c.0 = ((c.0 - max) / t).exp();
            sum += c.0;
        }
        let mut keep = self.cand.len();
        if self.o.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, c) in self.cand.iter().enumerate() {
                cum += c.0 / sum;
                if cum >= self.o.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = self.cand[..keep].iter().map(|c| c.0).sum();
        let mut u = self.next_f64() as f32 * total;
        for c in &self.cand[..keep] {
            u -= c.0;
            if u <= 0.0 {
                return c.1;
            }
        }
        self.cand[keep - 1].1
    }
}

/// The order of candidates: a larger logit first, of equals the smaller token first (a total order, so the
/// `k` largest are one set however they are found).
fn first_largest(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The `k` largest of `logits` as (logit, token), in [`Sampler::sample_top`]'s order; NaNs are never picked.
pub fn top_k(logits: &[f32], k: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    out.extend(logits.iter().enumerate().filter(|(_, l)| !l.is_nan()).map(|(i, &l)| (l, i as u32)));
    if k < out.len() {
        if k > 0 {
            out.select_nth_unstable_by(k - 1, first_largest);
        }
        out.truncate(k);
    }
    out.sort_unstable_by(first_largest);
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(temperature: f32, top_k: usize, top_p: f32) -> SamplerOptions {
        SamplerOptions { temperature, top_k, top_p, seed: 7 }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(Sampler::new(opts(0.0, 0, 1.0)).sample(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(opts(1.0, 1, 1.0));
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.5, 0.1, 0.9, 0.2]), 2);
        }
    }

    /// The distribution transformers samples from: logits / temperature, then the top-k (the k largest), then
    /// top-p (the smallest prefix, in descending order, whose probability reaches p: token i stays while the
    /// tokens before it sum to less than p), renormalized. In f64, from the definitions.
    fn exact(logits: &[f32], t: f64, k: usize, p: f64) -> Vec<f64> {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let kept = if k == 0 { order.len() } else { k.min(order.len()) };
        let scaled: Vec<f64> = order[..kept].iter().map(|&i| f64::from(logits[i]) / t).collect();
        let max = scaled[0];
        let w: Vec<f64> = scaled.iter().map(|l| (l - max).exp()).collect();
        let z: f64 = w.iter().sum();
        let mut before = 0.0;
        let mut nucleus = 0;
        for &wi in &w {
            if before >= p {
                break;
            }
            before += wi / z;
            nucleus += 1;
        }
        let zn: f64 = w[..nucleus].iter().sum();
        let mut dist = vec![0.0; logits.len()];
        for (j, &i) in order[..nucleus].iter().enumerate() {
            dist[i] = w[j] / zn;
        }
        dist
    }

    /// Draws `n` tokens and checks their counts against `want` with Pearson's chi-square at p = 0.001 (the
    /// Wilson-Hilferty critical value); a token of probability 0 must never be drawn.
    fn assert_draws_follow(o: SamplerOptions, logits: &[f32], want: &[f64], n: usize) {
        let mut s = Sampler::new(o);
        let mut seen = vec![0usize; logits.len()];
        for _ in 0..n {
            seen[s.sample(logits) as usize] += 1;
        }
        let mut chi2 = 0.0;
        let mut cells = 0;
        for (&c, &p) in seen.iter().zip(want) {
            if p == 0.0 {
                assert_eq!(c, 0, "{o:?}: a filtered-out token was drawn: {seen:?}");
                continue;
            }
            let e = p * n as f64;
            assert!(e >= 5.0, "test design: expected count {e} too small for chi-square");
            chi2 += (c as f64 - e).powi(2) / e;
            cells += 1;
        }
        let df = f64::from(cells - 1);
        let z = 3.090; // the 0.999 quantile of the standard normal
        let crit = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
        assert!(chi2 < crit, "{o:?}: chi-square {chi2:.1} >= {crit:.1} ({df} dof): counts {seen:?}, want {want:?}");
    }

    fn dist_gap(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    const LOGITS: [f32; 8] = [2.0, 1.2, 0.9, 0.1, -0.3, -1.0, 1.5, -2.2];

    #[test]
    fn draws_follow_the_filtered_distribution() {
        // (temperature, top_k, top_p), each chosen so a misordered or misapplied filter gives a distribution
        // the draws tell apart (checked below against the alternatives).
        let cases = [(0.5, 0, 1.0), (1.7, 0, 1.0), (1.3, 3, 1.0), (1.0, 0, 0.7), (0.7, 5, 0.8), (1.6, 4, 0.75)];
        for (seed, &(t, k, p)) in cases.iter().enumerate() {
            let want = exact(&LOGITS, t, k, p);
            // The test can tell the true semantics from near misses: multiplying by t, and top-p before the
            // temperature (transformers applies the temperature first).
            let times = exact(&LOGITS.map(|l| l * t as f32 * t as f32), t, k, p);
            assert!(t == 1.0 || dist_gap(&want, &times) > 0.05, "case {t} {k} {p} cannot tell l*t from l/t");
            let o = SamplerOptions { temperature: t as f32, top_k: k, top_p: p as f32, seed: 1000 + seed as u64 };
            assert_draws_follow(o, &LOGITS, &want, 40_000);
        }
        // Top-p measured on the tempered distribution: at temperature 0.7 the nucleus of 0.8 is 3 tokens, at
        // temperature 1 it would be 4.
        let tempered = exact(&LOGITS, 0.7, 0, 0.8);
        assert_eq!(tempered.iter().filter(|&&p| p > 0.0).count(), 3);
        assert_eq!(exact(&LOGITS, 1.0, 0, 0.8).iter().filter(|&&p| p > 0.0).count(), 4);
        let o = SamplerOptions { temperature: 0.7, top_k: 0, top_p: 0.8, seed: 99 };
        assert_draws_follow(o, &LOGITS, &tempered, 40_000);
    }

    #[test]
    fn the_reference_distribution_is_right_by_hand() {
        // Logits [ln 4, ln 2, ln 1, ln 1] at temperature 1: probabilities 0.5, 0.25, 0.125, 0.125.
        let l = [4f32.ln(), 2f32.ln(), 0.0, 0.0];
        let d = exact(&l, 1.0, 0, 1.0);
        assert!(dist_gap(&d, &[0.5, 0.25, 0.125, 0.125]) < 1e-6, "{d:?}");
        // top-p 0.6: token 0 (0.5 < 0.6) and token 1 stay; renormalized 2/3, 1/3.
        let d = exact(&l, 1.0, 0, 0.6);
        assert!(dist_gap(&d, &[2.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]) < 1e-6, "{d:?}");
        // top-p exactly 0.5: the tokens before token 1 sum to 0.5 >= 0.5, so token 0 alone.
        assert!(dist_gap(&exact(&l, 1.0, 0, 0.5), &[1.0, 0.0, 0.0, 0.0]) < 1e-6);
        // Temperature 2 on [ln 4, ln 2]: probabilities 2:sqrt(2).
        let d = exact(&l[..2], 2.0, 0, 1.0);
        assert!((d[0] - 2.0 / (2.0 + 2f64.sqrt())).abs() < 1e-6, "{d:?}");
        // top-k 2 then renormalize: 2/3, 1/3.
        assert!(dist_gap(&exact(&l, 1.0, 2, 1.0), &[2.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]) < 1e-6);
        // The sampler at the boundary: the nucleus of 0.5 is token 0 alone (exact in f32 too).
        let mut s = Sampler::new(SamplerOptions { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 3 });
        assert!((0..500).all(|_| s.sample(&l) == 0));
        let mut s = Sampler::new(SamplerOptions { temperature: 1.0, top_k: 0, top_p: 0.6, seed: 3 });
        let ones = (0..3000).filter(|_| s.sample(&l) == 1).count();
        assert!((800..1200).contains(&ones), "{ones} of 3000 draws are token 1, want about 1000");
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // SplitMix64's published first outputs for seed 0 (Vigna's reference splitmix64.c): 0xe220a8397b1dcdaf,
        // 0x6e789e6aa1b965f4, 0x06c45d188009454f; next_f64 keeps the top 53 bits.
        let mut s = Sampler::new(opts(1.0, 0, 1.0));
        s.state = 0;
        for want in [0xe220_a839_7b1d_cdafu64, 0x6e78_9e6a_a1b9_65f4, 0x06c4_5d18_8009_454f] {
            assert_eq!(s.next_f64(), (want >> 11) as f64 / (1u64 << 53) as f64);
        }
    }

    #[test]
    fn the_k_largest_come_largest_first_and_of_equals_the_smaller_token_first() {
        let logits = [1.0, 3.0, f32::NAN, 3.0, -1.0, 2.0, 3.0, f32::INFINITY];
        let mut out = Vec::new();
        top_k(&logits, 4, &mut out);
        assert_eq!(out, vec![(f32::INFINITY, 7), (3.0, 1), (3.0, 3), (3.0, 6)]);
        // Ties across the cut keep the smaller tokens; NaNs are never candidates, even when k asks for all.
        top_k(&logits, 3, &mut out);
        assert_eq!(out, vec![(f32::INFINITY, 7), (3.0, 1), (3.0, 3)]);
        top_k(&logits, 100, &mut out);
        assert_eq!(out.len(), 7);
        assert!(out.iter().all(|c| !c.0.is_nan()));
        top_k(&logits, 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn sampling_from_the_k_largest_picks_what_sampling_the_row_picks() {
        // Rows with many ties (values on a coarse grid) and a NaN, over seeds and settings: an executor that
        // hands over only the k largest must not change a single draw.
        let mut rng = Sampler::new(opts(1.0, 0, 1.0));
        for seed in 0..200u64 {
            let row: Vec<f32> = (0..300)
                .map(|i| if i == 17 { f32::NAN } else { (rng.next_f64() * 12.0).floor() as f32 * 0.5 })
                .collect();
            let (t, k, p) = [(0.7, 5, 1.0), (1.3, 40, 0.9), (0.2, 1, 1.0), (1.0, 64, 0.5)][seed as usize % 4];
            let o = SamplerOptions { temperature: t, top_k: k, top_p: p, seed };
            let (mut whole, mut top) = (Sampler::new(o), Sampler::new(o));
            assert_eq!(top.candidates(), Some(k));
            let mut cands = Vec::new();
            for _ in 0..5 {
                top_k(&row, k, &mut cands);
                assert_eq!(whole.sample(&row), top.sample_top(&cands), "seed {seed}");
            }
        }
        assert_eq!(Sampler::new(opts(0.0, 5, 1.0)).candidates(), None);
        assert_eq!(Sampler::new(opts(1.0, 0, 1.0)).candidates(), None);
    }

    #[test]
    fn top_k_keeps_exactly_the_k_largest_of_many() {
        // 1000 candidates (large enough that select_nth leaves them unordered): top-k 5 draws only the 5 largest,
        // each at its renormalized probability.
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 400.0).collect();
        let want = exact(&logits, 1.0, 5, 1.0);
        assert_eq!(want.iter().filter(|&&p| p > 0.0).count(), 5);
        let o = SamplerOptions { temperature: 1.0, top_k: 5, top_p: 1.0, seed: 11 };
        assert_draws_follow(o, &logits, &want, 20_000);
        // Many orders of many candidates, nearly flat after a high temperature: whatever order the selection
        // leaves them in, no token outside the k largest is ever drawn.
        let mut state = 0x1234_5678_9abc_def0u64;
        for k in [1, 3, 7, 40] {
            for _ in 0..20 {
                let logits: Vec<f32> = (0..500)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 40) as f32 / (1u64 << 24) as f32
                    })
                    .collect();
                let mut sorted = logits.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let kth = sorted[k - 1];
                let mut s = Sampler::new(SamplerOptions { temperature: 100.0, top_k: k, top_p: 1.0, seed: state });
                for _ in 0..50 {
                    let t = s.sample(&logits) as usize;
                    assert!(logits[t] >= kth, "top-k {k} drew a token outside the {k} largest");
                }
            }
        }
    }

    #[test]
    fn large_logits_do_not_overflow() {
        // exp(l / t) itself overflows f32 here (l / t = 240); the max-subtracted softmax must not.
        let logits = [120.0, 119.5, 118.0, 100.0];
        let want = exact(&logits, 0.5, 0, 1.0);
        let o = SamplerOptions { temperature: 0.5, top_k: 0, top_p: 1.0, seed: 5 };
        assert_draws_follow(o, &logits, &want, 20_000);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let a: Vec<u32> = (0..30).scan(Sampler::new(opts(0.8, 20, 0.9)), |s, _| Some(s.sample(&logits))).collect();
        let b: Vec<u32> = (0..30).scan(Sampler::new(opts(0.8, 20, 0.9)), |s, _| Some(s.sample(&logits))).collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != a[0]), "temperature sampling varies");
    }
}
