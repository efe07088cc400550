//! The generation loop: prefill the prompt, then decode token by token until an end token, the length limit or
//! the context's end.

use crate::sampler::Sampler;
use crate::session::Session;
use crate::Error;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndToken,
    Length,
    ContextFull,
}

#[derive(Debug, Clone)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub generated: usize,
    /// Time spent in decode steps (every generated token after the first comes from one).
    pub decode_secs: f64,
    pub stop: StopReason,
}

impl Stats {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }
    pub fn decode_tok_s(&self) -> f64 {
        let steps = self.generated.saturating_sub(1);
        if steps == 0 {
            0.0
        } else {
            steps as f64 / self.decode_secs.max(1e-9)
        }
    }
}

/// Generate up to `max_new` tokens after `prompt`, calling `emit` with each one as it is chosen.
///
/// Stops after emitting an id of `eos` (emitted, [`StopReason::EndToken`]), after `max_new` tokens
/// ([`StopReason::Length`]; `max_new == 0` emits nothing, though the prompt is still prefilled), or when the session's
/// positions are all used ([`StopReason::ContextFull`]): the token predicted from the last position is emitted without
/// being fed back, so a session of `ctx` positions yields at most `ctx - prompt.len() + 1` tokens.
pub fn generate(
    session: &mut Session,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    eos: &[u32],
    mut emit: impl FnMut(u32) -> Result<(), Error>,
) -> Result<Stats, Error> {
    let t0 = Instant::now();
    // Greedy decoding, and sampling from the k largest, leave the pick to the executor (a GPU reads back a
    // token, or k candidates, instead of the logits).
    let mut step = |s: &mut Session, tokens: &[u32]| -> Result<u32, Error> {
        if sampler.is_greedy() {
            s.forward_greedy(tokens)
        } else if let Some(k) = sampler.candidates() {
            Ok(sampler.sample_top(s.forward_top_k(tokens, k)?))
        } else {
            Ok(sampler.sample(s.forward(tokens, false)?))
        }
    };
    let mut next = step(session, prompt)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let mut stats =
        Stats { prompt_tokens: prompt.len(), prefill_secs, generated: 0, decode_secs: 0.0, stop: StopReason::Length };
    let t1 = Instant::now();
    while stats.generated < max_new {
        emit(next)?;
        stats.generated += 1;
        if eos.contains(&next) {
            stats.stop = StopReason::EndToken;
            break;
        }
        if stats.generated == max_new {
            break;
        }
        if session.position() >= session.context() {
            stats.stop = StopReason::ContextFull;
            break;
        }
        next = step(session, &[next])?;
    }
    stats.decode_secs = t1.elapsed().as_secs_f64();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_count_prompt_tokens_and_decode_steps() {
        let s = |generated, decode_secs| Stats {
            prompt_tokens: 10,
            prefill_secs: 0.5,
            generated,
            decode_secs,
            stop: StopReason::Length,
        };
        assert_eq!(s(5, 2.0).prefill_tok_s(), 20.0);
        // 5 tokens: the first comes from the prefill, 4 from decode steps.
        assert_eq!(s(5, 2.0).decode_tok_s(), 2.0);
        assert_eq!(s(1, 0.0).decode_tok_s(), 0.0);
        assert_eq!(s(0, 0.0).decode_tok_s(), 0.0);
        assert_eq!(s(2, 0.25).decode_tok_s(), 4.0);
    }
}
