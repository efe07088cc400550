//! One generation's state, the same on every device: the validated plan, the position and the context, input
//! checks, and prefill in chunks. The launches and the KV cache belong to the [`Executor`] underneath.

use crate::executor::{executor_for, Executor, SeqId, SeqRun};
use crate::model::Model;
use crate::Error;
use unicorn_ir::Phase;

pub struct Session<'m> {
    model: &'m Model,
    exec: Box<dyn Executor + 'm>,
    seq: SeqId,
    /// Tokens processed so far (the position of the next one).
    pos: usize,
    /// Positions this session can hold.
    ctx: usize,
    /// Most tokens one prefill execution runs.
    chunk: usize,
    logits: Vec<f32>,
    part: Vec<f32>,
    /// The greedy tokens of the last [`Session::forward_greedy`].
    ids: Vec<u32>,
    /// The candidates of the last [`Session::forward_top_k`].
    cands: Vec<(f32, u32)>,
}

/// What the last chunk of a forward pass hands back.
enum Pick {
    Greedy,
    TopK(usize),
}

impl<'m> Session<'m> {
    /// A session for up to `ctx` positions (at most the plan's context) on the device the model was loaded for.
    pub fn new(model: &'m Model, ctx: usize) -> Result<Self, Error> {
        Self::with_executor(model, executor_for(model.device(), model)?, ctx)
    }

    pub fn with_executor(model: &'m Model, mut exec: Box<dyn Executor + 'm>, ctx: usize) -> Result<Self, Error> {
        let h = model.header();
        let ctx = ctx.clamp(1, h.spec.max_context);
        let seq = exec.add_sequence(ctx)?;
        let chunk = h.prefill_chunk as usize;
        Ok(Self {
            model,
            exec,
            seq,
            pos: 0,
            ctx,
            chunk,
            logits: Vec::new(),
            part: Vec::new(),
            ids: Vec::new(),
            cands: Vec::new(),
        })
    }

    /// Run prefills in chunks of at most `chunk` tokens (1 ..= the plan's `prefill_chunk`).
    pub fn set_prefill_chunk(&mut self, chunk: usize) -> Result<(), Error> {
        let most = self.model.header().prefill_chunk as usize;
        if chunk == 0 || chunk > most {
            return Err(Error::Input(format!("--prefill-chunk {chunk} is outside 1..={most} (the plan's chunk)")));
        }
        self.chunk = chunk;
        Ok(())
    }

    /// Record the time spent in each kernel from now on.
    pub fn enable_profile(&mut self) {
        self.exec.enable_profile();
    }

    /// Seconds and calls per kernel name, most expensive first.
    pub fn profile(&self) -> Vec<(String, f64, usize)> {
        self.exec.profile()
    }

    /// The device(s) the session's executor runs on, as it names them (`vulkan:0`; a hybrid plan's `npu-emu
    /// (prefill) + vulkan:0 (decode)`).
    pub fn device_name(&self) -> String {
        self.exec.name()
    }

    /// Executions run and command buffers recorded for them ([`crate::executor::Executor::recordings`]).
    pub fn recordings(&self) -> Option<(u64, u64)> {
        self.exec.recordings()
    }

    /// What the plan's NPU launches did so far ([`crate::executor::Executor::npu_counts`]).
    pub fn npu_counts(&self) -> Option<[crate::npu::NpuCounts; 2]> {
        self.exec.npu_counts()
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    /// Go back to position `to` (or stay, if the session is not past it), keeping the cache of the positions
    /// before it, so that the next forward pass continues from there over the same device and cache. Where a
    /// sliding window's ring has wrapped (the session went past its capacity), a position from `to` on has
    /// overwritten slots of positions before `to` that the next ones attend to: then nothing is kept. Returns
    /// the position the session is at.
    pub fn rewind(&mut self, to: usize) -> usize {
        let wrapped = self.model.header().kv_caches.iter().any(|c| (c.positions(self.ctx as u64) as usize) < self.pos);
        if to < self.pos {
            self.pos = if wrapped { 0 } else { to };
        }
        self.pos
    }

    pub fn context(&self) -> usize {
        self.ctx
    }

    /// Run `tokens` at the next positions; returns the logits of the last token, or of every token when
    /// `all_rows` (row-major, `rows x vocab`). A prompt longer than the prefill chunk runs chunk by chunk, each
    /// attending over the cache the earlier ones filled, so memory does not grow with the prompt.
    pub fn forward(&mut self, tokens: &[u32], all_rows: bool) -> Result<&[f32], Error> {
        let vocab = self.model.header().spec.vocab_size;
        self.check(tokens)?;
        self.logits.clear();
        let chunks = tokens.len().div_ceil(self.chunk);
        for (i, part) in tokens.chunks(self.chunk).enumerate() {
            let phase = self.phase_of(part);
            // Earlier chunks keep no rows unless every row's logits are wanted.
            let keep = if all_rows { part.len() } else { usize::from(i + 1 == chunks) };
            let keep = if phase == Phase::Decode { 1 } else { keep };
            let run = SeqRun { seq: self.seq, tokens: part, pos: self.pos, keep };
            self.exec.execute(phase, &[run], &mut self.part)?;
            self.pos += part.len();
            if all_rows || i + 1 == chunks {
                let rows = if all_rows { part.len() } else { 1 };
                let got = &self.part[self.part.len() - rows * vocab..];
                self.logits.extend_from_slice(got);
            }
        }
        Ok(&self.logits)
    }

    /// Run `tokens` as [`Session::forward`] does and return the last one's greedy successor (the index of its
    /// largest logit, the first of equals): the executor picks it, so a device reads back 4 bytes instead of
    /// the logits.
    pub fn forward_greedy(&mut self, tokens: &[u32]) -> Result<u32, Error> {
        self.forward_pick(tokens, Pick::Greedy)?;
        Ok(self.ids[0])
    }

    /// Run `tokens` as [`Session::forward`] does and return the last one's `k` largest logits with their
    /// tokens, in [`crate::sampler::Sampler::sample_top`]'s order (past the row's numbers, token `u32::MAX`):
    /// the executor picks them, so a device reads back `8k` bytes instead of the logits.
    pub fn forward_top_k(&mut self, tokens: &[u32], k: usize) -> Result<&[(f32, u32)], Error> {
        self.forward_pick(tokens, Pick::TopK(k))?;
        Ok(&self.cands)
    }

    fn forward_pick(&mut self, tokens: &[u32], pick: Pick) -> Result<(), Error> {
        self.check(tokens)?;
        let chunks = tokens.len().div_ceil(self.chunk);
        for (i, part) in tokens.chunks(self.chunk).enumerate() {
            let phase = self.phase_of(part);
            let last = i + 1 == chunks;
            let run = SeqRun { seq: self.seq, tokens: part, pos: self.pos, keep: usize::from(last) };
            match pick {
                _ if !last => self.exec.execute(phase, &[run], &mut self.part)?,
                Pick::Greedy => self.exec.execute_greedy(phase, &[run], &mut self.ids)?,
                Pick::TopK(k) => self.exec.execute_top_k(phase, &[run], k, &mut self.cands)?,
            }
            self.pos += part.len();
        }
        Ok(())
    }

    /// A chunk of one token after the first position is a decode step.
    fn phase_of(&self, part: &[u32]) -> Phase {
        if part.len() == 1 && self.pos > 0 {
            Phase::Decode
        } else {
            Phase::Prefill
        }
    }

    /// The checks of every execution: some tokens, each in the vocabulary, all within the context.
    fn check(&self, tokens: &[u32]) -> Result<(), Error> {
        let vocab = self.model.header().spec.vocab_size;
        if tokens.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!("token id {bad} is out of range (vocabulary size {vocab})")));
        }
        if self.pos + tokens.len() > self.ctx {
            return Err(Error::Input(format!(
                "{} tokens at position {} exceed the context of {} tokens",
                tokens.len(),
                self.pos,
                self.ctx
            )));
        }
        Ok(())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.exec.remove_sequence(self.seq);
    }
}
