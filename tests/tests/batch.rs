//! Batches through the executor boundary: several sequences, each with its own KV cache and position, advanced
//! in one execution (what the server's continuous batching does) give each sequence the logits it gets alone.

use unicorn_ir::container::Residency;
use unicorn_ir::{Phase, WeightFormat};
use unicorn_passes::Target;
use unicorn_runtime::executor::{executor_for, DeviceKind, Executor, SeqId, SeqRun};
use unicorn_runtime::{Model, Session};
use unicorn_tests::*;

/// Prompts of different lengths, so the sequences sit at different positions throughout.
const PROMPTS: [&[u32]; 3] = [&[1, 5, 9, 2, 7, 3, 11], &[4, 4, 8], &[2, 13, 6, 1, 9, 10, 3, 3, 12, 5, 7]];
/// Decode steps after the prompts: past the 8-position sliding window of the Mistral fixture.
const STEPS: usize = 12;

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

/// Each sequence alone through a Session: the last prompt row's logits, then those of each greedy decode step.
fn alone(model: &Model, prompt: &[u32]) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut s = Session::new(model, prompt.len() + STEPS).unwrap();
    let mut rows = vec![s.forward(prompt, false).unwrap().to_vec()];
    let mut fed = Vec::new();
    for _ in 0..STEPS {
        let next = argmax(rows.last().unwrap());
        fed.push(next);
        rows.push(s.forward(&[next], false).unwrap().to_vec());
    }
    (rows, fed)
}

/// A batch row against the same sequence alone. The kernels compute each row alike whatever else a launch holds
/// (on the GPU, a decode batch of up to 8 rows takes the matmuls' single-row path row by row, as a lone row
/// does), so this is a bound on nothing but a bug.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let tol = 1e-5;
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(got, want);
    assert!(err <= tol * scale, "{what}: max |diff| {err} against max |logit| {scale}");
}

const FORMATS: [WeightFormat; 3] = [WeightFormat::F32, WeightFormat::Q8_0, WeightFormat::Q4_0];

#[test]
fn a_batch_of_sequences_gets_each_sequence_its_own_logits() {
    batch_matches_alone(Target::Cpu, DeviceKind::Cpu, &FORMATS);
}

#[test]
fn a_batch_on_the_gpu_gets_each_sequence_its_own_logits() {
    batch_matches_alone(Target::Vulkan, DeviceKind::Vulkan(0), &FORMATS);
}

/// A hybrid plan: the batch's prefill on the CPU and the NPU's emulator (bf16: its projections and attention;
/// q8_0: its attention), its decode on the GPU, each sequence's cache handed over on its own.
#[test]
fn a_batch_on_the_hybrid_gets_each_sequence_its_own_logits() {
    batch_matches_alone(Target::Hybrid, DeviceKind::NpuEmu, &[WeightFormat::Bf16, WeightFormat::Q8_0]);
}

/// Three sequences prefilled in one execution and decoded together, each against itself alone on `device`.
fn batch_matches_alone(target: Target, device: DeviceKind, formats: &[WeightFormat]) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["mistral_sliding", "gemma3_text", "qwen2_bias"] {
        for &format in formats {
            let plan = compile_for(target, &fixtures_dir().join(name), dir.path(), format, None);
            let model = Model::load_with(&plan, Residency::Resident, device).unwrap();
            let vocab = model.header().spec.vocab_size;
            let want: Vec<_> = PROMPTS.iter().map(|p| alone(&model, p)).collect();

            let mut exec: Box<dyn Executor + '_> = executor_for(model.device(), &model).unwrap();
            // A sequence added and removed first, so the batch's caches are not simply the first ones.
            let scratch = exec.add_sequence(64).unwrap();
            exec.remove_sequence(scratch);
            let seqs: Vec<SeqId> = PROMPTS.iter().map(|p| exec.add_sequence(p.len() + STEPS).unwrap()).collect();

            // One prefill execution holding all three prompts, keeping each one's last row.
            let runs: Vec<SeqRun> =
                PROMPTS.iter().zip(&seqs).map(|(p, &seq)| SeqRun { seq, tokens: p, pos: 0, keep: 1 }).collect();
            let mut logits = Vec::new();
            exec.execute(Phase::Prefill, &runs, &mut logits).unwrap();
            assert_eq!(logits.len(), 3 * vocab);
            for (i, (w, _)) in want.iter().enumerate() {
                assert_close(&logits[i * vocab..(i + 1) * vocab], &w[0], &format!("{name} {format} prefill seq {i}"));
            }

            // Decode steps advancing all three at once, each fed the token it chose alone.
            for step in 0..STEPS {
                let toks: Vec<[u32; 1]> = want.iter().map(|(_, fed)| [fed[step]]).collect();
                let runs: Vec<SeqRun> = PROMPTS
                    .iter()
                    .zip(&seqs)
                    .zip(&toks)
                    .map(|((p, &seq), t)| SeqRun { seq, tokens: t, pos: p.len() + step, keep: 1 })
                    .collect();
                exec.execute(Phase::Decode, &runs, &mut logits).unwrap();
                for (i, (w, _)) in want.iter().enumerate() {
                    let what = format!("{name} {format} decode step {step} seq {i}");
                    assert_close(&logits[i * vocab..(i + 1) * vocab], &w[step + 1], &what);
                }
            }
            for seq in seqs {
                exec.remove_sequence(seq);
            }
        }
    }
}

#[test]
fn a_sequence_leaving_the_batch_does_not_disturb_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let plan = compile_to(&fixtures_dir().join("llama_gqa"), dir.path(), WeightFormat::F32, None);
    let model = Model::load(&plan).unwrap();
    let vocab = model.header().spec.vocab_size;
    let (want, fed) = alone(&model, PROMPTS[0]);

    let mut exec = executor_for(model.device(), &model).unwrap();
    let a = exec.add_sequence(PROMPTS[0].len() + STEPS).unwrap();
    let b = exec.add_sequence(PROMPTS[1].len() + STEPS).unwrap();
    let mut logits = Vec::new();
    let runs = [
        SeqRun { seq: a, tokens: PROMPTS[0], pos: 0, keep: 1 },
        SeqRun { seq: b, tokens: PROMPTS[1], pos: 0, keep: 1 },
    ];
    exec.execute(Phase::Prefill, &runs, &mut logits).unwrap();
    for (step, &t) in fed.iter().enumerate() {
        let pos = PROMPTS[0].len() + step;
        if step == 4 {
            // b leaves and a newcomer takes its place mid-generation, prefilled in the same execution as a's step.
            exec.remove_sequence(b);
            let c = exec.add_sequence(PROMPTS[2].len()).unwrap();
            let runs =
                [SeqRun { seq: a, tokens: &[t], pos, keep: 1 }, SeqRun { seq: c, tokens: PROMPTS[2], pos: 0, keep: 1 }];
            exec.execute(Phase::Prefill, &runs, &mut logits).unwrap();
        } else {
            exec.execute(Phase::Decode, &[SeqRun { seq: a, tokens: &[t], pos, keep: 1 }], &mut logits).unwrap();
        }
        assert_close(&logits[..vocab], &want[step + 1], &format!("step {step}"));
    }
}
