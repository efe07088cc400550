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

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.o.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = self.o.temperature;
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (l / t, i as u32)));
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        if self.o.top_k > 0 && self.o.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(self.o.top_k - 1, by_logit_desc);
            self.cand.truncate(self.o.top_k);
        }
        self.cand.sort_unstable_by(by_logit_desc);
        let max = self.cand[0].0;
        let mut sum = 0.0;
        for c in &mut self.cand {
            c.0 = (c.0 - max).exp();
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

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps tokens 0 and 1.
        let logits = [2.0, 1.0, 0.0, -1.0];
        let mut s = Sampler::new(opts(1.0, 0, 0.8));
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        // Renormalized: 0.64/(0.64+0.24) = 0.73 of the draws are token 0.
        let frac = seen[0] as f64 / 2000.0;
        assert!((frac - 0.731).abs() < 0.04, "{frac}");
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
