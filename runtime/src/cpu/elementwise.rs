//! Element-wise kernels: gated activations (SiLU, tanh GELU), add, scale, softcap. All arithmetic is f32, as
//! in the float32 reference.

use super::attention::exp_f32;
use super::isa::vectorized_fn;
use super::pool::parallel_chunks_mut;

/// Elementwise `f(a, b, y)` over matching pieces of `a`, `b` and `y`, on the pool when there is enough of it.
fn zip_chunks(a: &[f32], b: &[f32], y: &mut [f32], f: fn(&[f32], &[f32], &mut [f32])) {
    const CHUNK: usize = 1 << 14;
    if y.len() > CHUNK {
        parallel_chunks_mut(y, CHUNK, |i, ys| f(&a[i * CHUNK..][..ys.len()], &b[i * CHUNK..][..ys.len()], ys));
    } else {
        f(a, b, y);
    }
}

vectorized_fn! {
    fn silu_mul(gate: &[f32], up: &[f32], y: &mut [f32]) {
        y.iter_mut().zip(gate).zip(up).for_each(|((y, &g), &u)| *y = g / (1.0 + exp_f32(-g)) * u);
    }
}

vectorized_fn! {
    fn gelu_tanh_mul(gate: &[f32], up: &[f32], y: &mut [f32]) {
        const C: f32 = 0.797_884_6; // sqrt(2 / pi)
        y.iter_mut()
            .zip(gate)
            .zip(up)
            .for_each(|((y, &g), &u)| *y = g / (1.0 + exp_f32(-2.0 * C * (g + 0.044715 * g * g * g))) * u);
    }
}

vectorized_fn! {
    fn add_into(a: &[f32], b: &[f32], y: &mut [f32]) {
        y.iter_mut().zip(a).zip(b).for_each(|((y, &a), &b)| *y = a + b);
    }
}

/// Gated linear units: `act(gate) * up`. silu(g) = g / (1 + e^-g).
pub fn glu_silu(gate: &[f32], up: &[f32], y: &mut [f32]) {
    zip_chunks(gate, up, y, silu_mul);
}

/// GELU, tanh approximation: 0.5 g (1 + tanh(c)) with c = sqrt(2/pi) (g + 0.044715 g^3), which equals
/// g / (1 + e^(-2c)).
pub fn glu_gelu_tanh(gate: &[f32], up: &[f32], y: &mut [f32]) {
    zip_chunks(gate, up, y, gelu_tanh_mul);
}

pub fn add(a: &[f32], b: &[f32], y: &mut [f32]) {
    zip_chunks(a, b, y, add_into);
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
    fn scale_and_softcap_match_f64() {
        // The compiler folds its constant scales into the embedding, so no fixture plan runs `scale`; a plan
        // whose scale has no embedding to fold into does. Softcap: Gemma 2's cap of 30 on final logits, over
        // values from well inside the cap to well past it.
        let x: Vec<f32> = (-400..400).map(|i| i as f32 * 0.37 + 0.01).collect();
        let mut y = vec![f32::NAN; x.len()];
        let f = 2048f32.sqrt();
        scale(&x, f, &mut y);
        for (&x, &y) in x.iter().zip(&y) {
            // One correctly rounded f32 multiplication.
            assert_eq!(y, (f64::from(x) * f64::from(f)) as f32, "scale({x}, {f})");
        }
        let cap = 30.0;
        softcap(&x, cap, &mut y);
        for (&x, &y) in x.iter().zip(&y) {
            let want = (f64::from(x) / f64::from(cap)).tanh() * f64::from(cap);
            assert!((f64::from(y) - want).abs() <= 1e-6 * f64::from(cap), "softcap({x}, {cap}): {y} vs {want}");
        }
    }

    #[test]
    fn chunked_and_parallel_elementwise_kernels_match_f64() {
        // Above 1 << 14 elements the kernels run in chunks on the pool: one chunk exactly (serial), one element
        // more (a second chunk of 1), and several chunks with a ragged end. Every element's operands differ, so
        // a chunk that reads another chunk's inputs shows.
        const CHUNK: usize = 1 << 14;
        let c = (2.0 / std::f64::consts::PI).sqrt();
        for len in [CHUNK - 3, CHUNK, CHUNK + 1, 3 * CHUNK + 100] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 7919) % 2001) as f32 * 0.004 - 4.0).collect();
            let b: Vec<f32> = (0..len).map(|i| ((i * 104_729) % 1999) as f32 * 0.001 - 1.0).collect();
            let mut y = vec![f32::NAN; len];
            add(&a, &b, &mut y);
            for (i, ((&a, &b), &y)) in a.iter().zip(&b).zip(&y).enumerate() {
                // One correctly rounded f32 addition.
                assert_eq!(y, (f64::from(a) + f64::from(b)) as f32, "add, len {len}, element {i}: {a} + {b}");
            }
            type Def = fn(f64, f64, f64) -> f64;
            let silu: Def = |g, u, _| g / (1.0 + (-g).exp()) * u;
            let gelu: Def = |g, u, c| 0.5 * g * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh()) * u;
            type Kernel = fn(&[f32], &[f32], &mut [f32]);
            let kernels: [(&str, Kernel, Def); 2] = [("silu", glu_silu, silu), ("gelu_tanh", glu_gelu_tanh, gelu)];
            for (name, kernel, def) in kernels {
                y.fill(f32::NAN);
                kernel(&a, &b, &mut y);
                for (i, ((&g, &u), &y)) in a.iter().zip(&b).zip(&y).enumerate() {
                    let want = def(f64::from(g), f64::from(u), c);
                    let err = (f64::from(y) - want).abs();
                    assert!(err <= 1e-6 * (1.0 + want.abs()), "{name}, len {len}, element {i}: {y} vs {want}");
                }
            }
        }
    }
}
