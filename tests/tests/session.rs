//! What a Session asks of its executor: a prompt as prefill chunks that keep only the rows whose logits are
//! wanted, each later single token as a decode step, and its sequence removed when it is dropped. Seen through
//! an executor that records every call and passes it on to the CPU executor.

use std::cell::RefCell;
use std::rc::Rc;
use unicorn_ir::{Phase, WeightFormat};
use unicorn_runtime::executor::{executor_for, Executor, SeqId, SeqRun};
use unicorn_runtime::{Error, Model, Session};
use unicorn_tests::*;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Add {
        ctx: usize,
        seq: usize,
    },
    Remove {
        seq: usize,
    },
    /// One execution of one run: the phase, then the run's sequence, token count, position and kept rows.
    Execute {
        phase: Phase,
        seq: usize,
        tokens: usize,
        pos: usize,
        keep: usize,
    },
}

struct Recording<'m> {
    inner: Box<dyn Executor + 'm>,
    log: Rc<RefCell<Vec<Call>>>,
}

impl Executor for Recording<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn add_sequence(&mut self, ctx: usize) -> Result<SeqId, Error> {
        let seq = self.inner.add_sequence(ctx)?;
        self.log.borrow_mut().push(Call::Add { ctx, seq: seq.0 });
        Ok(seq)
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        self.log.borrow_mut().push(Call::Remove { seq: seq.0 });
        self.inner.remove_sequence(seq);
    }

    fn execute(&mut self, phase: Phase, runs: &[SeqRun], logits: &mut Vec<f32>) -> Result<(), Error> {
        for r in runs {
            let (seq, tokens, pos, keep) = (r.seq.0, r.tokens.len(), r.pos, r.keep);
            self.log.borrow_mut().push(Call::Execute { phase, seq, tokens, pos, keep });
        }
        self.inner.execute(phase, runs, logits)
    }

    fn enable_profile(&mut self) {
        self.inner.enable_profile();
    }

    fn profile(&self) -> Vec<(String, f64, usize)> {
        self.inner.profile()
    }
}

fn recorded<'m>(model: &'m Model, ctx: usize) -> (Session<'m>, Rc<RefCell<Vec<Call>>>) {
    let log = Rc::new(RefCell::new(Vec::new()));
    let exec = Recording { inner: executor_for(model.device(), model).unwrap(), log: Rc::clone(&log) };
    (Session::with_executor(model, Box::new(exec), ctx).unwrap(), log)
}

/// The calls logged since the last look.
fn take(log: &Rc<RefCell<Vec<Call>>>) -> Vec<Call> {
    std::mem::take(&mut *log.borrow_mut())
}

#[test]
fn prompts_run_as_prefill_chunks_and_later_single_tokens_as_decode_steps() {
    use Call::Execute;
    use Phase::{Decode, Prefill};
    let dir = tempfile::tempdir().unwrap();
    let model =
        Model::load(&compile_to(&fixtures_dir().join("llama_gqa"), dir.path(), WeightFormat::Q8_0, None)).unwrap();
    let vocab = model.header().spec.vocab_size;
    let ids: Vec<u32> = (0..12u32).map(|i| (i * 37 + 5) % vocab as u32).collect();
    let ex = |phase, seq, tokens, pos, keep| Execute { phase, seq, tokens, pos, keep };

    let (mut s, log) = recorded(&model, 32);
    assert_eq!(take(&log), [Call::Add { ctx: 32, seq: 0 }]);
    s.set_prefill_chunk(3).unwrap();
    // A prompt of 7 in chunks of 3: only the last chunk keeps a row; being one token after the others, it is
    // a decode step.
    assert_eq!(s.forward(&ids[..7], false).unwrap().len(), vocab);
    assert_eq!(take(&log), [ex(Prefill, 0, 3, 0, 0), ex(Prefill, 0, 3, 3, 0), ex(Decode, 0, 1, 6, 1)]);
    // A generated token.
    s.forward(&ids[7..8], false).unwrap();
    assert_eq!(take(&log), [ex(Decode, 0, 1, 7, 1)]);
    // Every row's logits wanted: each chunk keeps all of its rows.
    assert_eq!(s.forward(&ids[8..12], true).unwrap().len(), 4 * vocab);
    assert_eq!(take(&log), [ex(Prefill, 0, 3, 8, 3), ex(Decode, 0, 1, 11, 1)]);
    assert_eq!(s.position(), 12);

    // A second session on its own executor: a prompt of one token, at position 0, is a prefill; the next
    // token a decode step.
    let (mut t, log2) = recorded(&model, 8);
    t.forward(&ids[..1], false).unwrap();
    t.forward(&ids[1..2], false).unwrap();
    assert_eq!(take(&log2), [Call::Add { ctx: 8, seq: 0 }, ex(Prefill, 0, 1, 0, 1), ex(Decode, 0, 1, 1, 1)]);

    // Dropping a session frees its sequence in the executor.
    drop(s);
    assert_eq!(take(&log), [Call::Remove { seq: 0 }]);
    drop(t);
    assert_eq!(take(&log2), [Call::Remove { seq: 0 }]);
}

/// `Session::rewind` keeps the cache before the position it goes back to, so what follows gives the logits a
/// fresh session gives over the same tokens; where a sliding window's ring has wrapped, it keeps nothing (the
/// ring's slots before that position were overwritten), and from the start the logits are a fresh session's too.
#[test]
fn rewinding_keeps_the_cache_before_the_position_or_nothing_once_a_ring_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<u32> = (0..14).map(|i| (i * 7 + 3) % 50).collect();
    let other: Vec<u32> = (0..6).map(|i| (i * 5 + 1) % 50).collect();
    for (name, wraps) in [("llama_gqa", false), ("mistral_sliding", true)] {
        let plan = compile_to(&fixtures_dir().join(name), dir.path(), WeightFormat::F32, None);
        let model = Model::load(&plan).unwrap();
        let mut s = Session::new(&model, 64).unwrap();
        s.forward(&ids, false).unwrap();
        // Back to token 8, then other tokens from there.
        let kept = s.rewind(8);
        assert_eq!(kept, if wraps { 0 } else { 8 }, "{name}");
        let mut tokens = ids[..8].to_vec();
        tokens.extend(&other);
        let got = s.forward(&tokens[kept..], true).unwrap().to_vec();
        let mut fresh = Session::new(&model, 64).unwrap();
        let want = fresh.forward(&tokens, true).unwrap().to_vec();
        let want = &want[kept * (want.len() / tokens.len())..];
        assert!(max_abs_diff(&got, want) <= 1e-5 * want.iter().fold(0.0f32, |m, v| m.max(v.abs())), "{name}");
        // Going forward is no rewind.
        assert_eq!(s.rewind(100), tokens.len(), "{name}");
    }
}
