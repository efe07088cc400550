//! RMSNorm, over a whole row or over each head of it. All arithmetic is f32, as in the float32 reference.

use super::attention::dot;
use super::isa::vectorized_fn;
use super::pool::parallel_chunks_mut;

vectorized_fn! {
    /// One RMSNorm group: `y = x / sqrt(mean(x^2) + eps) * g`, `g` = `w` or `1 + w`.
    fn rms_norm_group(x: &[f32], w: &[f32], eps: f32, unit_offset: bool, y: &mut [f32]) {
        let r = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
        if unit_offset {
            y.iter_mut().zip(x).zip(w).for_each(|((y, &x), &w)| *y = x * r * (1.0 + w));
        } else {
            y.iter_mut().zip(x).zip(w).for_each(|((y, &x), &w)| *y = x * r * w);
        }
    }
}

/// RMSNorm over each `w.len()`-element group of `x` (a whole row, or one head of it).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, unit_offset: bool, y: &mut [f32]) {
    let n = w.len();
    if x.len() >= 1 << 16 {
        parallel_chunks_mut(y, n, |i, ys| rms_norm_group(&x[i * n..][..n], w, eps, unit_offset, ys));
    } else {
        x.chunks(n).zip(y.chunks_mut(n)).for_each(|(xs, ys)| rms_norm_group(xs, w, eps, unit_offset, ys));
    }
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

    /// Pseudo-random values in [-1, 1), from a seeded xorshift.
    fn uniform(s: u64) -> impl FnMut() -> f32 {
        let mut rng = unicorn_ir::rng::XorShift(s);
        move || rng.f32()
    }

    #[test]
    fn serial_and_parallel_rms_norm_match_f64_definition() {
        // `rms_norm` goes to the pool from 1 << 16 elements of x on: sizes just below and at that threshold, a
        // per-head norm (many short groups) past it, and one long row. Groups differ in magnitude by 1e4, so a
        // group normalized with another's statistics, or eps (1e-5, near mean(x^2) of the small groups) left out,
        // shows; so does a weight read from the wrong offset or `w` taken for `1 + w`.
        const T: usize = 1 << 16;
        let mut rnd = uniform(0x9e37_79b9_7f4a_7c15);
        for (n, groups) in [(256, T / 256 - 1), (256, T / 256), (32, T / 32 + 5), (4096, 15), (4096, 17)] {
            let x: Vec<f32> = (0..n * groups).map(|i| rnd() * [1.0, 1e-2, 3.0][(i / n) % 3]).collect();
            let w: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let eps = 1e-5;
            for unit_offset in [false, true] {
                let mut y = vec![f32::NAN; x.len()];
                rms_norm(&x, &w, eps, unit_offset, &mut y);
                for (gi, (xs, ys)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
                    let ms = xs.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
                    let r = 1.0 / (ms + f64::from(eps)).sqrt();
                    for (i, (&xv, &yv)) in xs.iter().zip(ys).enumerate() {
                        let g = f64::from(w[i]) + if unit_offset { 1.0 } else { 0.0 };
                        let want = f64::from(xv) * r * g;
                        // f32 arithmetic: the sum of squares in 8 lanes, then a handful of roundings.
                        let tol = 1e-5 * (f64::from(xv) * r).abs() * (1.0 + g.abs()) + 1e-12;
                        assert!(
                            (f64::from(yv) - want).abs() <= tol,
                            "n={n} groups={groups} unit_offset={unit_offset}: y[{gi}][{i}] = {yv}, expected {want}"
                        );
                    }
                }
            }
        }
    }
}
