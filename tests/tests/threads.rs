//! The thread count changes how the work is cut, never the result: `--threads 1`, `3` and `8` write the same
//! bytes, for prefill logits, for logits of single-token (decode) steps long enough that attention splits each
//! row's keys into parts (from 512 keys on with this fixture's heads), and for greedy generations.

use unicorn_ir::WeightFormat;
use unicorn_runtime::cpu::attention::key_parts;
use unicorn_tests::*;

fn ok(out: std::process::Output, what: &str) -> Vec<u8> {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn one_three_and_eight_threads_give_identical_bits() {
    // llama3_mqa_tied has one kv head, so a decode step is one (row, kv head) task, whose keys attention splits
    // into parts when there are enough of them (4 query heads of 32 per kv head).
    let prompt_len = 800;
    let parts = |keys| key_parts(1, keys, 4, 32);
    assert!(parts(prompt_len) >= 3, "decode with {prompt_len} keys no longer takes several parts: lengthen the prompt");
    let prompt: Vec<String> = (0..prompt_len).map(|i| ((i * 37 + 11) % 384).to_string()).collect();
    // The prefill pass needs no long context to be threaded (its matmuls are), and costs less on a short one.
    let prefill_len = 160;
    let short = prompt[..prefill_len].join(",");
    let prompt = prompt.join(",");
    let dir = tempfile::tempdir().unwrap();
    for format in [WeightFormat::Q8_0, WeightFormat::F32] {
        let plan = compile_to(&fixtures_dir().join("llama3_mqa_tied"), dir.path(), format, Some(prompt_len + 40));
        let plan = plan.to_str().unwrap();
        // Per run: the prefill .npy, the decode-step .npy and its logits, the greedy ids.
        type Run = (Vec<u8>, Vec<u8>, Vec<f32>, Vec<u8>);
        let mut first: Option<Run> = None;
        for threads in ["1", "3", "8"] {
            let what = |s: &str| format!("{format} --threads {threads}: {s}");
            let prefill = dir.path().join(format!("prefill.{format}.{threads}.npy"));
            let args = [plan, "--threads", threads, "--tokens", &short, "--logits-out", prefill.to_str().unwrap()];
            ok(run("unicorn-rt", &args), &what("prefill"));
            // One token per execution: every position after the first runs the decode graph.
            let steps = dir.path().join(format!("steps.{format}.{threads}.npy"));
            let mut args = args.to_vec();
            args[4] = &prompt;
            args[6] = steps.to_str().unwrap();
            args.extend(["--prefill-chunk", "1"]);
            ok(run("unicorn-rt", &args), &what("decode steps"));
            let ids = ok(
                run(
                    "unicorn-rt",
                    &[plan, "--threads", threads, "--tokens", &prompt, "-n", "40", "--temperature", "0", "--print-ids"],
                ),
                &what("greedy"),
            );
            assert_eq!(String::from_utf8_lossy(&ids).trim().split(',').count(), 40, "{}", what("ids"));
            // Sanity: the two ways of running the prompt agree as far as tests/decode.rs measured (f32: 2.4e-6;
            // q8_0 with its default f16 cache: up to 1e-1, the f16 keys amplified by the int8 activations).
            let (shape, a) = read_npy_f32(&prefill);
            let (steps_shape, b) = read_npy_f32(&steps);
            let vocab = shape[1];
            assert_eq!((shape[0], steps_shape[0]), (prefill_len, prompt_len), "{}", what("logits shapes"));
            let tol = if format.is_quantized() { 0.25 } else { 2e-5 };
            let agree = compare(&b[..prefill_len * vocab], &a, vocab);
            assert!(agree.rel_err <= tol, "{}", what(&format!("decode steps vs prefill: {}", agree.rel_err)));
            let this = (std::fs::read(&prefill).unwrap(), std::fs::read(&steps).unwrap(), b, ids);
            match &first {
                None => first = Some(this),
                Some(one) => {
                    assert!(one.0 == this.0, "{}", what("prefill .npy differs from --threads 1"));
                    if one.1 != this.1 {
                        let rows: Vec<usize> = (0..prompt_len)
                            .filter(|&r| {
                                let bits = |v: &[f32]| {
                                    v[r * vocab..(r + 1) * vocab].iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                                };
                                bits(&one.2) != bits(&this.2)
                            })
                            .collect();
                        panic!(
                            "{}",
                            what(&format!("decode-step logits differ from --threads 1 at positions {rows:?}"))
                        );
                    }
                    assert_eq!(one.3, this.3, "{}", what("greedy ids differ from --threads 1"));
                }
            }
        }
    }
}
