//! Token ids to text as they are generated, for everything that streams text: `unicorn-rt --prompt`, `--chat`
//! and the server.

use tokenizers::Tokenizer;

/// Decode a short window of recent tokens with and without the newest ones and hand out the difference, so
/// pieces whose text depends on their neighbours (leading spaces, characters of several tokens) come out right;
/// text is held back while it ends in an incomplete character.
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the context window decoded with the new tokens.
    prefix: usize,
    /// End of what has been handed out.
    read: usize,
}

impl Detokenizer {
    pub fn new(prompt: &[u32]) -> Self {
        // The prompt's last tokens are the first window (what a leading space of the first piece depends on).
        let ids = prompt[prompt.len().saturating_sub(4)..].to_vec();
        Self { read: ids.len(), ids, prefix: 0 }
    }

    /// The text `id` adds, if it completes any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Option<String> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], true).ok()?;
        let after = tok.decode(&self.ids[self.prefix..], true).ok()?;
        if after.len() <= before.len() || after.ends_with('\u{fffd}') || !after.is_char_boundary(before.len()) {
            return None;
        }
        self.prefix = self.read;
        self.read = self.ids.len();
        // Only the window is ever decoded again: drop what lies before it.
        if self.prefix > 64 {
            self.ids.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
        }
        Some(after[before.len()..].to_string())
    }

    /// Whatever is still held back at the end (an incomplete character comes out as U+FFFD).
    pub fn finish(&self, tok: &Tokenizer) -> String {
        let before = tok.decode(&self.ids[self.prefix..self.read], true).unwrap_or_default();
        let after = tok.decode(&self.ids[self.prefix..], true).unwrap_or_default();
        after.get(before.len()..).unwrap_or_default().to_string()
    }
}
