//! `unicornc inspect`: what a plan holds and what it will cost to run.

use std::collections::BTreeMap;
use std::fmt::Write;
use unicorn_ir::container::PlanFile;

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
}

/// A Phoenix plan's NPU designs: what each dispatch moves and computes, per phase, the time the device model
/// estimates for them, and the level of each claim about them (docs/npu.md's scale).
fn describe_npu(plan: &PlanFile, o: &mut String) {
    use unicorn_ir::plan::Backend;
    let h = &plan.header;
    if !h.kernels.iter().any(|k| k.backend == Backend::Npu) {
        return;
    }
    let section = plan.section(unicorn_ir::container::SectionKind::Kernels).unwrap_or(&[]);
    let kernels = match crate::npu_build::npu_kernels(h, section) {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(o, "npu:          its designs do not check: {e:#}");
            return;
        }
    };
    let array = &unicorn_targets::npu::model::NPU1;
    let built = kernels.iter().filter(|(_, k)| k.built.is_some()).count();
    let _ =
        writeln!(o, "npu:          {} designs for {} (nothing here is measured on an NPU)", kernels.len(), array.name);
    // What one dispatch of a design moves between host and array, and computes.
    let cost = |k: &unicorn_ir::npu::NpuKernel| -> (u64, u64) {
        let b = k
            .design
            .sequence
            .iter()
            .map(|op| match op {
                unicorn_aie::design::SeqOp::Memcpy { elem, dims, .. } => {
                    dims.iter().map(|d| d.size).product::<u64>() * elem.bytes()
                }
                _ => 0,
            })
            .sum();
        (b, k.op.macs())
    };
    for p in &h.phases {
        let (mut dispatches, mut bytes, mut macs, mut seconds) = (0u64, 0u64, 0u64, 0f64);
        for st in &p.steps {
            let Some((_, k)) = kernels.iter().find(|(i, _)| *i == st.kernel.0 as usize) else { continue };
            let (b, m) = cost(k);
            dispatches += 1;
            bytes += b;
            macs += m;
            seconds += array.estimate_seconds(b, m);
        }
        if dispatches == 0 {
            let mut devices: Vec<String> = p.steps.iter().map(|st| st.device.to_string()).collect();
            devices.sort();
            devices.dedup();
            let _ =
                writeln!(o, "  {:8} no NPU steps (every step on the {})", p.phase.to_string(), devices.join(" or "));
            continue;
        }
        let rows = if p.phase == unicorn_ir::Phase::Prefill { h.prefill_chunk } else { 1 };
        let layers = h.spec.num_layers.max(1) as u64;
        let per_layer = if dispatches.is_multiple_of(layers) {
            (dispatches / layers).to_string()
        } else {
            format!("{:.1}", dispatches as f64 / layers as f64)
        };
        let _ = writeln!(
            o,
            "  {:8} {dispatches} dispatches per execution of up to {rows} rows ({per_layer} a layer): {:.1} MB host<->array, {:.2} GMAC; ESTIMATE >= {:.2} ms ({} us a dispatch, {:.0} GB/s host transfers, the bf16 peak: all assumed)",
            p.phase.to_string(),
            bytes as f64 / 1e6,
            macs as f64 / 1e9,
            seconds * 1e3,
            array.dispatch_overhead_s * 1e6,
            array.host_bytes_s / 1e9,
        );
    }
    // Each design: its dispatches in an execution of each phase, and what one dispatch costs.
    let _ = writeln!(o, "  designs  a dispatch of each (ESTIMATE: the same assumptions)");
    for (i, k) in &kernels {
        let uses: Vec<String> = h
            .phases
            .iter()
            .filter_map(|p| {
                let n = p.steps.iter().filter(|st| st.kernel.0 as usize == *i).count();
                (n > 0).then(|| format!("{n} a {}", p.phase))
            })
            .collect();
        let (b, m) = cost(k);
        let _ = writeln!(
            o,
            "           {} ({}): {:.2} MB host<->array, {:.3} GMAC; ESTIMATE >= {:.3} ms",
            h.kernels[*i].name,
            if uses.is_empty() { "unused".to_string() } else { uses.join(", ") },
            b as f64 / 1e6,
            m as f64 / 1e9,
            array.estimate_seconds(b, m) * 1e3
        );
    }
    let _ = writeln!(
        o,
        "  levels   (a) MLIR: each design's module is in the plan (the tests re-parse such modules with mlir-opt)"
    );
    let _ = writeln!(o, "           (b) AIE2 rules: every design passes (checked just now)");
    let _ = writeln!(o, "           (c) core bodies JIT-run on the CPU: in the tests, per body kind");
    let _ = writeln!(o, "           (d) dataflow emulated: unicorn-rt --device npu-emu runs these designs");
    let _ = match built {
        0 => writeln!(o, "           (e) built to an xclbin: no (no aiecc when compiled; `unicornc build-npu`)"),
        n => writeln!(o, "           (e) built to an xclbin: {n} of {} designs, by aiecc", kernels.len()),
    };
    let _ = writeln!(o, "           (f) ran on a Phoenix NPU: not on any machine this was tested on");
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
    let builtin = h.kernels.iter().filter(|k| k.artifact.is_none()).count();
    let _ = writeln!(o, "kernels:      {} ({builtin} built in)", h.kernels.len());
    let _ = writeln!(o, "phases:");
    for p in &h.phases {
        let mut per_device: BTreeMap<String, usize> = BTreeMap::new();
        for st in &p.steps {
            *per_device.entry(st.device.to_string()).or_default() += 1;
        }
        let devices: Vec<String> = per_device.iter().map(|(d, n)| format!("{n} on {d}")).collect();
        let ops: usize = p.steps.iter().map(|st| st.ops.len()).sum();
        let _ = writeln!(
            o,
            "  {:8} {} launches of {ops} ops ({}), arenas {} bytes/token + {} bytes/kept row",
            p.phase.to_string(),
            p.steps.len(),
            devices.join(", "),
            p.arenas.first().map_or(0, |a| a.row_bytes),
            p.arenas.get(1).map_or(0, |a| a.row_bytes),
        );
        if steps {
            for st in &p.steps {
                let name = h.kernels.get(st.kernel.0 as usize).map_or("?", |k| k.name.as_str());
                let work = st.work.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" x ");
                let _ = writeln!(o, "    {name:24} {work:16}  # {}", st.label);
            }
        }
    }
    describe_npu(plan, &mut o);
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
    let kv = h.kv_cache_bytes(s.max_context as u64);
    let kv_types: std::collections::BTreeSet<&str> = h.kv_caches.iter().map(|c| c.dtype.name()).collect();
    let _ = writeln!(o, "memory:");
    let _ = writeln!(o, "  weights                      {}", mib(weight_total));
    let _ = writeln!(
        o,
        "  peak activations             {} (prefill in chunks of {} tokens)",
        mib(h.peak_activation_bytes),
        h.prefill_chunk
    );
    let kv_types = kv_types.into_iter().collect::<Vec<_>>().join("/");
    let _ = writeln!(o, "  kv cache at full context     {} ({kv_types})", mib(kv));
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
