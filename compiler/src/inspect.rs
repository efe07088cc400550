//! `unicornc inspect`: what a plan holds and what it will cost to run.

use std::collections::BTreeMap;
use std::fmt::Write;
use unicorn_ir::container::PlanFile;
use unicorn_ir::plan::PlanHeader;

/// KV cache bytes at a context of `ctx` tokens (f32 keys and values; windowed layers keep only their window).
pub fn kv_cache_bytes(h: &PlanHeader, ctx: usize) -> u64 {
    let s = &h.spec;
    s.layers.iter().map(|l| (l.window.unwrap_or(ctx).min(ctx) * s.kv_width() * 2 * 4) as u64).sum()
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
}

pub fn describe(plan: &PlanFile, steps: bool) -> String {
    let h = &plan.header;
    let s = &h.spec;
    let mut o = String::new();
    let _ = writeln!(o, "plan:         {} ({})", plan.path.display(), mib(plan.file_len()));
    let _ = writeln!(o, "producer:     {}", h.producer);
    let _ = writeln!(o, "target:       {}", h.target);
    let _ = writeln!(o, "architecture: {} ({:?})", s.architecture, s.family);
    let _ = writeln!(
        o,
        "model:        {} layers, hidden {}, heads {}/{} x {}, ffn {}, vocab {}, context {}",
        s.num_layers,
        s.hidden_size,
        s.num_heads,
        s.num_kv_heads,
        s.head_dim,
        s.intermediate_size,
        s.vocab_size,
        s.max_context
    );
    let windows: Vec<String> =
        s.layers.iter().map(|l| l.window.map_or("full".to_string(), |w| format!("window {w}"))).collect();
    let mut wcount: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &windows {
        *wcount.entry(w.as_str()).or_default() += 1;
    }
    let _ = writeln!(
        o,
        "attention:    {}",
        wcount.iter().map(|(k, n)| format!("{n} x {k}")).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(o, "phases:");
    for p in &h.phases {
        let mut per_device: BTreeMap<String, usize> = BTreeMap::new();
        for st in &p.steps {
            *per_device.entry(st.device.to_string()).or_default() += 1;
        }
        let devices: Vec<String> = per_device.iter().map(|(d, n)| format!("{n} on {d}")).collect();
        let _ = writeln!(
            o,
            "  {:8} {} steps ({}), arena {} f32/token + {} f32/kept row",
            p.phase.to_string(),
            p.steps.len(),
            devices.join(", "),
            p.arena_width,
            p.kept_width
        );
        if steps {
            for st in &p.steps {
                let _ = writeln!(o, "    {:24} {:?}  # {}", st.kernel, st.rows, st.label);
            }
        }
    }
    let mut per_format: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for w in &h.weights {
        let e = per_format.entry(w.format.name()).or_default();
        e.0 += 1;
        e.1 += w.bytes;
    }
    let _ = writeln!(o, "weights:");
    for (f, (n, b)) in &per_format {
        let _ = writeln!(o, "  {f:6} {n:4} tensors  {}", mib(*b));
    }
    let weight_total: u64 = h.weights.iter().map(|w| w.bytes).sum();
    let kv = kv_cache_bytes(h, s.max_context);
    let _ = writeln!(o, "memory:");
    let _ = writeln!(o, "  weights                      {}", mib(weight_total));
    let _ = writeln!(o, "  peak activations             {}", mib(h.peak_activation_bytes));
    let _ = writeln!(o, "  kv cache at full context     {}", mib(kv));
    let _ = writeln!(o, "  total at full context        {}", mib(weight_total + h.peak_activation_bytes + kv));
    let _ = writeln!(o, "sections:");
    for sec in plan.sections() {
        let _ = writeln!(
            o,
            "  {:10} {:>12} bytes  xxh3 {:016x}",
            format!("{:?}", sec.kind).to_lowercase(),
            sec.len,
            sec.checksum
        );
    }
    o
}
