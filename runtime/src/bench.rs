//! `unicorn-rt --bench`: prefill and decode speed, time to first token and peak memory, measured over repeats
//! after a warm-up run.

use crate::model::Model;
use crate::npu::NpuCounts;
use crate::session::Session;
use crate::Error;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    pub prompt_len: usize,
    pub gen: usize,
    pub repeat: usize,
    /// Also report the time per kernel (measured on a separate run, so the timings above stay clean).
    pub profile: bool,
    /// Prefill chunk (default: the plan's).
    pub prefill_chunk: Option<usize>,
}

/// Median and range of one measure over the repeats.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Self { median, min: v[0], max: v[n - 1] }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

#[derive(Debug, Clone)]
pub struct BenchResult {
    pub options: BenchOptions,
    /// The device it ran on, as `--device` names it.
    pub device: String,
    pub threads: usize,
    pub prefill_tok_s: Spread,
    pub decode_tok_s: Spread,
    pub ttft_ms: Spread,
    pub peak_rss_mib: f64,
    /// Bytes of the plan's weights: what a decode step reads at least (each weight once).
    pub weight_bytes: u64,
    /// Per kernel: name, seconds in prefill, seconds in decode, decode calls.
    pub profile: Vec<(String, f64, f64, usize)>,
    /// On a GPU, its measured copy bandwidth (GB/s, read + write counted), the ceiling decode is held to.
    pub device_copy_gb_s: Option<f64>,
    /// Executions of the last timed run and the command buffers recorded for them, where the executor
    /// replays recordings.
    pub recordings: Option<(u64, u64)>,
    /// What the last timed run's NPU launches did, prefill then decode, where the plan has NPU kernels.
    pub npu: Option<[NpuCounts; 2]>,
}

impl BenchResult {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "prompt_len": self.options.prompt_len,
            "gen": self.options.gen,
            "repeat": self.options.repeat,
            "device": self.device,
            "threads": self.threads,
            "prefill_tok_s": self.prefill_tok_s.json(),
            "decode_tok_s": self.decode_tok_s.json(),
            "ttft_ms": self.ttft_ms.json(),
            "peak_rss_mib": self.peak_rss_mib,
            "weight_bytes": self.weight_bytes,
            "decode_weight_gb_s": self.decode_weight_gb_s(),
            "device_copy_gb_s": self.device_copy_gb_s,
            "executions": self.recordings.map(|r| r.0),
            "recordings": self.recordings.map(|r| r.1),
            "npu": self.npu.map(|[p, d]| serde_json::json!({"prefill": npu_json(&p), "decode": npu_json(&d)})),
        })
    }

    /// The weights a decode step reads, over the median step's time, in GB/s (10^9 bytes).
    pub fn decode_weight_gb_s(&self) -> f64 {
        self.weight_bytes as f64 * self.decode_tok_s.median / 1e9
    }

    pub fn table(&self) -> String {
        let row = |name: &str, s: &Spread, unit: &str| {
            format!("{name:14} {:>10.2} {unit:6} (min {:.2}, max {:.2})\n", s.median, s.min, s.max)
        };
        let o = &self.options;
        let mut t = format!(
            "prompt {} tokens, generate {}, {} repeats, on {} (medians after a warm-up)\n",
            o.prompt_len,
            o.gen,
            o.repeat,
            if self.device == "cpu" { format!("cpu, {} threads", self.threads) } else { self.device.clone() }
        );
        t += &row("prefill", &self.prefill_tok_s, "tok/s");
        t += &row("decode", &self.decode_tok_s, "tok/s");
        t += &row("first token", &self.ttft_ms, "ms");
        t += &format!(
            "{:14} {:>10.2} GB/s   (the {:.1} MiB of weights each step reads, at the median)\n",
            "decode reads",
            self.decode_weight_gb_s(),
            self.weight_bytes as f64 / (1u64 << 20) as f64
        );
        if let Some(c) = self.device_copy_gb_s {
            t += &format!(
                "{:14} {:>10.2} GB/s   (read + write; decode reads {:.0}% of it)\n",
                "device copies",
                c,
                100.0 * self.decode_weight_gb_s() / c
            );
        }
        if let Some((runs, recorded)) = self.recordings {
            t += &format!(
                "{:14} {:>10} of {runs} executions recorded a command buffer (the rest replayed one)\n",
                "recordings", recorded
            );
        }
        if let Some(npu) = self.npu {
            for (phase, c) in ["npu prefill", "npu decode"].into_iter().zip(npu) {
                t += &if c.dispatches == 0 {
                    format!("{phase:14} {:>10} (this phase runs off the NPU)\n", "none")
                } else {
                    let per = |v: u64| v as f64 / c.tokens.max(1) as f64;
                    format!(
                        "{phase:14} {:>10.2} dispatches a token, {:.2} MB between host and array, {:.3} GMAC \
                         ({} dispatches over {} tokens)\n",
                        per(c.dispatches),
                        per(c.host_bytes) / 1e6,
                        per(c.macs) / 1e9,
                        c.dispatches,
                        c.tokens
                    )
                };
            }
        }
        t += &format!("{:14} {:>10.1} MiB\n", "peak RSS", self.peak_rss_mib);
        if !self.profile.is_empty() {
            let (tp, td): (f64, f64) = self.profile.iter().fold((0.0, 0.0), |a, p| (a.0 + p.1, a.1 + p.2));
            let gen = self.options.gen.max(1) as f64;
            let calls: usize = self.profile.iter().map(|p| p.3).sum();
            t += &format!(
                "{:14} {:>10.1} per decode step (kernel calls; on a GPU, dispatches)\n",
                "launches",
                calls as f64 / gen
            );
            // The name column as wide as the longest fused kernel's name.
            let w = self.profile.iter().map(|p| p.0.len()).max().unwrap_or(0).max(24);
            t += &format!("{:w$} {:>14} {:>14}\n", "kernel", "prefill ms", "decode ms/tok");
            for (k, p, d, _) in &self.profile {
                t += &format!(
                    "{k:w$} {:>8.1} ({:>3.0}%) {:>8.3} ({:>3.0}%)\n",
                    p * 1e3,
                    100.0 * p / tp.max(1e-12),
                    d * 1e3 / gen,
                    100.0 * d / td.max(1e-12)
                );
            }
        }
        t
    }
}

/// One phase's NPU counts as JSON: the totals over its tokens.
fn npu_json(c: &NpuCounts) -> serde_json::Value {
    serde_json::json!({"dispatches": c.dispatches, "host_bytes": c.host_bytes, "macs": c.macs, "tokens": c.tokens})
}

/// Peak resident set of this process (VmHWM), in MiB; 0 where /proc is unavailable.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A session for one bench run, at the bench's prefill chunk.
fn session<'m>(model: &'m Model, ctx: usize, o: &BenchOptions) -> Result<Session<'m>, Error> {
    let mut s = Session::new(model, ctx)?;
    if let Some(c) = o.prefill_chunk {
        s.set_prefill_chunk(c)?;
    }
    Ok(s)
}

/// One prefill of `prompt` then `gen` greedy decode steps (end tokens ignored, so every run does the same work).
/// Returns (prefill seconds, time to first token in seconds, decode seconds, the session's recordings, its NPU
/// counts, the executor's device name).
fn one_run(model: &Model, prompt: &[u32], gen: usize, o: &BenchOptions) -> Result<Run, Error> {
    let mut s = session(model, prompt.len() + gen, o)?;
    let t0 = Instant::now();
    // Greedy tokens, picked by the executor (on a GPU, where the logits are), as a greedy generation does.
    let mut next = s.forward_greedy(prompt)?;
    // The first token comes out of the prefill itself.
    let prefill = t0.elapsed().as_secs_f64();
    let ttft = prefill;
    let t1 = Instant::now();
    for _ in 0..gen {
        next = s.forward_greedy(&[next])?;
    }
    Ok((prefill, ttft, t1.elapsed().as_secs_f64(), s.recordings(), s.npu_counts(), s.device_name()))
}

type Run = (f64, f64, f64, Option<(u64, u64)>, Option<[NpuCounts; 2]>, String);

pub fn run(model: &Model, o: BenchOptions) -> Result<BenchResult, Error> {
    let spec = &model.header().spec;
    if o.prompt_len == 0 || o.repeat == 0 {
        return Err(Error::Input("--prompt-len and --repeat must be at least 1".into()));
    }
    if o.prompt_len + o.gen > spec.max_context {
        return Err(Error::Input(format!(
            "--prompt-len {} + --gen {} exceed the plan's context of {} tokens",
            o.prompt_len, o.gen, spec.max_context
        )));
    }
    // A fixed pseudo-random prompt: speed does not depend on which tokens.
    let prompt: Vec<u32> = (0..o.prompt_len as u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) + 12345) % spec.vocab_size as u64) as u32)
        .collect();
    let device = one_run(model, &prompt, o.gen.min(4), &o)?.5;
    let (mut pre, mut ttft, mut dec, mut recordings, mut npu) = (Vec::new(), Vec::new(), Vec::new(), None, None);
    for _ in 0..o.repeat {
        let (p, t, d, r, n, _) = one_run(model, &prompt, o.gen, &o)?;
        (recordings, npu) = (r, n);
        pre.push(o.prompt_len as f64 / p);
        ttft.push(t * 1e3);
        if o.gen > 0 {
            dec.push(o.gen as f64 / d);
        }
    }
    if dec.is_empty() {
        dec.push(0.0);
    }
    let profile = if o.profile { profile_run(model, &prompt, &o)? } else { Vec::new() };
    // 256 MiB buffers: far past any cache, and a copy long enough for the host's timing.
    let device_copy_gb_s = match model.device() {
        crate::executor::DeviceKind::Vulkan(i) => {
            crate::vulkan::hal::Gpu::open(i as usize).and_then(|g| g.copy_gb_s(256 << 20)).ok()
        }
        _ => None,
    };
    Ok(BenchResult {
        options: o,
        device,
        threads: crate::cpu::pool::threads(),
        prefill_tok_s: Spread::of(pre),
        decode_tok_s: Spread::of(dec),
        ttft_ms: Spread::of(ttft),
        peak_rss_mib: peak_rss_mib(),
        weight_bytes: model.header().weights.iter().map(|w| w.bytes).sum(),
        profile,
        device_copy_gb_s,
        recordings,
        npu,
    })
}

fn profile_run(model: &Model, prompt: &[u32], o: &BenchOptions) -> Result<Vec<(String, f64, f64, usize)>, Error> {
    let gen = o.gen;
    let mut s = session(model, prompt.len() + gen, o)?;
    s.enable_profile();
    let mut next = s.forward_greedy(prompt)?;
    let prefill = s.profile();
    for _ in 0..gen {
        next = s.forward_greedy(&[next])?;
    }
    let total = s.profile();
    let mut out: Vec<(String, f64, f64, usize)> = total
        .into_iter()
        .map(|(k, t, n)| {
            let (p, pn) = prefill.iter().find(|e| e.0 == k).map_or((0.0, 0), |e| (e.1, e.2));
            (k, p, t - p, n - pn)
        })
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_takes_the_middle() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
