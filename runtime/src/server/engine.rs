//! The engine: one thread that owns the executor and every slot, and advances all active requests together.
//!
//! Each of the N slots is a sequence of the executor with its own KV cache, and remembers the tokens that cache
//! holds. An iteration takes in new requests (each into the free slot whose cache shares the longest prefix with
//! its prompt, so only the rest is prefilled), runs one prefill execution (chunks of waiting prompts, up to the
//! plan's prefill chunk in all, a prompt's chunks cut where `unicorn-rt` cuts them), then one decode execution
//! over every slot that has a token to feed (each weight read once for all of them), and samples each kept row
//! with its request's own sampler. Tokens go to the request's channel as they are chosen; a closed channel (the
//! client has gone, or its handler saw a stop string) frees the slot before the next execution.

use super::Status;
use crate::executor::{executor_for, Executor, SeqId, SeqRun};
use crate::sampler::{Sampler, SamplerOptions};
use crate::{Error, Model};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;
use unicorn_ir::plan::KvCapacity;
use unicorn_ir::Phase;

/// Most candidates a sampled step asks the executor for (the GPU's top-k kernel takes up to 64); a request that
/// needs more has the whole row read back.
const MOST_CANDIDATES: usize = 64;

/// One generation request, tokenized and checked.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (1 or more).
    pub max_tokens: usize,
    pub sampling: SamplerOptions,
    /// Ids that end the generation (emitted, then the request is done).
    pub stop_ids: Vec<u32>,
    /// Whether the prompt may start from tokens a slot's cache already holds.
    pub cache_prompt: bool,
    pub events: UnboundedSender<Event>,
}

/// What the engine tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// The request has a slot: `cached` of its prompt tokens were found in its KV cache and are not run again.
    Started {
        cached: usize,
    },
    Token(u32),
    Done {
        finish: Finish,
    },
    /// An execution failed; the request is over.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end token.
    Stop,
    /// `max_tokens`, or the context's end.
    Length,
}

struct Running {
    job: Job,
    sampler: Sampler,
    /// Order of admission (prefill goes first come, first served).
    order: u64,
    /// The next prompt token to run.
    todo: usize,
    /// The last token chosen, to be fed in the next decode step.
    next: Option<u32>,
    generated: usize,
}

struct Slot {
    seq: SeqId,
    /// The tokens whose keys and values the cache holds, at positions `0..cached.len()`.
    cached: Vec<u32>,
    /// When the slot last finished a request (the least recently used free slot is taken first).
    last_used: u64,
    run: Option<Running>,
}

pub struct Engine<'m> {
    exec: Box<dyn Executor + 'm>,
    slots: Vec<Slot>,
    queue: VecDeque<Job>,
    ctx: usize,
    vocab: usize,
    chunk: usize,
    /// The ring sizes of the sliding-window layers' caches (a ring of W positions holds position x until x + W
    /// is written), which limit how far a slot can be rewound.
    rings: Vec<usize>,
    clock: u64,
    status: Arc<Status>,
    logits: Vec<f32>,
    ids: Vec<u32>,
    cands: Vec<(f32, u32)>,
}

impl<'m> Engine<'m> {
    /// An engine of `parallel` slots, each a sequence of the plan's whole context, prefilling in chunks of at
    /// most `chunk` tokens (the plan's chunk when `None`).
    pub fn new(model: &'m Model, parallel: usize, chunk: Option<usize>, status: Arc<Status>) -> Result<Self, Error> {
        let h = model.header();
        let most = h.prefill_chunk as usize;
        let chunk = chunk.unwrap_or(most);
        if chunk == 0 || chunk > most {
            return Err(Error::Input(format!("--prefill-chunk {chunk} is outside 1..={most} (the plan's chunk)")));
        }
        let ctx = h.spec.max_context;
        let mut exec = executor_for(model.device(), model)?;
        let mut slots = Vec::with_capacity(parallel);
        for _ in 0..parallel {
            let seq = exec.add_sequence(ctx).map_err(|e| {
                Error::Input(format!("--parallel {parallel}: slot {} of {ctx} positions: {e}", slots.len() + 1))
            })?;
            slots.push(Slot { seq, cached: Vec::new(), last_used: 0, run: None });
        }
        let rings = h
            .kv_caches
            .iter()
            .filter_map(|c| match c.capacity {
                KvCapacity::Window(w) if (w as usize) < ctx => Some(w as usize),
                _ => None,
            })
            .collect();
        Ok(Self {
            exec,
            slots,
            queue: VecDeque::new(),
            ctx,
            vocab: h.spec.vocab_size,
            chunk,
            rings,
            clock: 0,
            status,
            logits: Vec::new(),
            ids: Vec::new(),
            cands: Vec::new(),
        })
    }

    /// Serve jobs until every sender is gone.
    pub fn run(mut self, jobs: Receiver<Job>) {
        loop {
            if self.idle() {
                match jobs.recv() {
                    Ok(job) => self.queue.push_back(job),
                    Err(_) => return,
                }
            }
            loop {
                match jobs.try_recv() {
                    Ok(job) => self.queue.push_back(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.idle() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            self.step();
        }
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(|s| s.run.is_none())
    }

    /// One iteration: drop the requests whose clients left, admit waiting ones, one prefill execution, one
    /// decode execution.
    pub fn step(&mut self) {
        for slot in &mut self.slots {
            if slot.run.as_ref().is_some_and(|r| r.job.events.is_closed()) {
                self.clock += 1;
                free(slot, self.clock);
            }
        }
        self.queue.retain(|job| !job.events.is_closed());
        self.admit();
        self.publish();
        self.prefill();
        self.decode();
        self.publish();
    }

    fn publish(&self) {
        let busy = self.slots.iter().filter(|s| s.run.is_some()).count();
        self.status.busy.store(busy, Ordering::Relaxed);
        self.status.queued.store(self.queue.len(), Ordering::Relaxed);
    }

    /// How many of `prompt`'s first tokens a slot holding `cached` can keep: their common prefix, less the
    /// prompt's last token (some token must run to give the next one's logits). Rewinding a sequence is sound
    /// because an execution at position p attends over positions up to p only and overwrites what p held, except
    /// in a sliding-window layer's ring that has wrapped: there the positions the window still needs may have
    /// been overwritten by later ones, and only a rewind of at most one position is safe.
    fn reusable(&self, cached: &[u32], prompt: &[u32]) -> usize {
        let common = cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(prompt.len().saturating_sub(1));
        let old = cached.len();
        if keep > 0 && self.rings.iter().all(|&w| old <= w.max(keep + 1)) {
            keep
        } else {
            0
        }
    }

    fn admit(&mut self) {
        while self.slots.iter().any(|s| s.run.is_none()) {
            let Some(job) = self.queue.pop_front() else { break };
            // The free slot that keeps the most of the prompt; of equals, the one unused longest.
            let (i, keep) = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.run.is_none())
                .map(|(i, s)| (i, if job.cache_prompt { self.reusable(&s.cached, &job.prompt) } else { 0 }))
                .max_by_key(|&(i, keep)| (keep, std::cmp::Reverse(self.slots[i].last_used)))
                .expect("a free slot");
            if job.events.send(Event::Started { cached: keep }).is_err() {
                continue;
            }
            self.clock += 1;
            let slot = &mut self.slots[i];
            slot.cached.truncate(keep);
            slot.run = Some(Running {
                sampler: Sampler::new(job.sampling),
                job,
                order: self.clock,
                todo: keep,
                next: None,
                generated: 0,
            });
        }
    }

    /// One prefill execution: the next chunk of each waiting prompt, first come first served, as many as fit in
    /// one chunk's rows. A prompt's chunks start at its first uncached token and are the chunk size long, as
    /// `unicorn-rt` runs them.
    fn prefill(&mut self) {
        let mut waiting: Vec<(u64, usize)> = (self.slots.iter().enumerate())
            .filter_map(|(i, s)| s.run.as_ref().filter(|r| r.todo < r.job.prompt.len()).map(|r| (r.order, i)))
            .collect();
        waiting.sort_unstable();
        let mut picked = Vec::new();
        let mut rows = 0;
        for (_, i) in waiting {
            let r = self.slots[i].run.as_ref().expect("running");
            let end = (r.todo + self.chunk).min(r.job.prompt.len());
            if rows + end - r.todo <= self.chunk {
                rows += end - r.todo;
                picked.push((i, r.todo, end));
            }
        }
        if picked.is_empty() {
            return;
        }
        let parts: Vec<(SeqId, Vec<u32>, bool)> = picked
            .iter()
            .map(|&(i, from, end)| {
                let r = self.slots[i].run.as_ref().expect("running");
                (self.slots[i].seq, r.job.prompt[from..end].to_vec(), end == r.job.prompt.len())
            })
            .collect();
        let runs: Vec<SeqRun> = (picked.iter().zip(&parts))
            .map(|(&(_, from, _), (seq, tokens, last))| SeqRun {
                seq: *seq,
                tokens,
                pos: from,
                keep: usize::from(*last),
            })
            .collect();
        let kept: Vec<usize> = picked.iter().zip(&parts).filter(|(_, p)| p.2).map(|(p, _)| p.0).collect();
        let picks = match self.execute(Phase::Prefill, &runs, &kept) {
            Ok(p) => p,
            Err(e) => return self.fail(picked.iter().map(|p| p.0), &e),
        };
        for (&(i, _, end), (_, tokens, _)) in picked.iter().zip(&parts) {
            let slot = &mut self.slots[i];
            slot.cached.extend_from_slice(tokens);
            slot.run.as_mut().expect("running").todo = end;
        }
        for (i, tok) in kept.into_iter().zip(picks) {
            self.emit(i, tok);
        }
    }

    /// One decode execution over every slot with a token to feed.
    fn decode(&mut self) {
        let active: Vec<usize> =
            (0..self.slots.len()).filter(|&i| self.slots[i].run.as_ref().is_some_and(|r| r.next.is_some())).collect();
        if active.is_empty() {
            return;
        }
        let toks: Vec<[u32; 1]> =
            active.iter().map(|&i| [self.slots[i].run.as_ref().and_then(|r| r.next).expect("a token")]).collect();
        let runs: Vec<SeqRun> = active
            .iter()
            .zip(&toks)
            .map(|(&i, t)| SeqRun { seq: self.slots[i].seq, tokens: t, pos: self.slots[i].cached.len(), keep: 1 })
            .collect();
        let picks = match self.execute(Phase::Decode, &runs, &active) {
            Ok(p) => p,
            Err(e) => return self.fail(active.into_iter(), &e),
        };
        for ((&i, t), tok) in active.iter().zip(&toks).zip(picks) {
            let slot = &mut self.slots[i];
            slot.cached.push(t[0]);
            slot.run.as_mut().expect("running").next = None;
            self.emit(i, tok);
        }
    }

    /// Run `runs` and pick the next token of each kept row (the slots `kept`, in order) with its own sampler:
    /// the executor picks greedy tokens, or the k largest logits when every row samples from at most k, where
    /// they are; otherwise the rows' logits come back.
    fn execute(&mut self, phase: Phase, runs: &[SeqRun], kept: &[usize]) -> Result<Vec<u32>, Error> {
        let samplers: Vec<&Sampler> =
            kept.iter().map(|&i| &self.slots[i].run.as_ref().expect("running").sampler).collect();
        if kept.is_empty() {
            self.exec.execute(phase, runs, &mut self.logits)?;
            return Ok(Vec::new());
        }
        if samplers.iter().all(|s| s.is_greedy()) {
            self.exec.execute_greedy(phase, runs, &mut self.ids)?;
            return Ok(self.ids.clone());
        }
        let k = samplers
            .iter()
            .map(|s| if s.is_greedy() { Some(1) } else { s.candidates() })
            .try_fold(0, |m, k| k.map(|k| m.max(k)));
        match k {
            Some(k) if k <= MOST_CANDIDATES => {
                self.exec.execute_top_k(phase, runs, k, &mut self.cands)?;
                Ok(kept
                    .iter()
                    .zip(self.cands.chunks(k))
                    .map(|(&i, c)| self.slots[i].run.as_mut().expect("running").sampler.sample_top(c))
                    .collect())
            }
            _ => {
                self.exec.execute(phase, runs, &mut self.logits)?;
                Ok(kept
                    .iter()
                    .zip(self.logits.chunks(self.vocab))
                    .map(|(&i, l)| self.slots[i].run.as_mut().expect("running").sampler.sample(l))
                    .collect())
            }
        }
    }

    /// Hand slot `i`'s new token to its request; end the request after an end token, at `max_tokens` or at
    /// the context's end, else feed the token in the next decode step.
    fn emit(&mut self, i: usize, tok: u32) {
        let ctx = self.ctx;
        let slot = &mut self.slots[i];
        let Some(r) = slot.run.as_mut() else { return };
        r.generated += 1;
        if r.job.events.send(Event::Token(tok)).is_err() {
            self.clock += 1;
            return free(slot, self.clock);
        }
        let finish = if r.job.stop_ids.contains(&tok) {
            Some(Finish::Stop)
        } else if r.generated >= r.job.max_tokens || slot.cached.len() >= ctx {
            Some(Finish::Length)
        } else {
            None
        };
        match finish {
            None => r.next = Some(tok),
            Some(finish) => {
                // A handler that has gone meanwhile misses nothing it would have used.
                let _ = r.job.events.send(Event::Done { finish });
                self.clock += 1;
                free(slot, self.clock);
            }
        }
    }

    /// An execution failed: its requests end with the error, and their slots forget what their caches held.
    fn fail(&mut self, slots: impl Iterator<Item = usize>, e: &Error) {
        for i in slots {
            let slot = &mut self.slots[i];
            if let Some(r) = slot.run.take() {
                let _ = r.job.events.send(Event::Failed(e.to_string()));
            }
            slot.cached.clear();
        }
    }
}

fn free(slot: &mut Slot, clock: u64) {
    slot.run = None;
    slot.last_used = clock;
}
