//! Stop strings on streamed text: their text is never sent, so a stream holds back whatever could still become
//! the start of one. (Token ids become text through [`crate::detokenize::Detokenizer`], as `unicorn-rt` prints.)

pub use crate::detokenize::Detokenizer;

/// Text on its way out, cut at the first stop string.
pub struct StopText {
    stops: Vec<String>,
    /// Text not yet handed out: it ends with what could be the start of a stop string.
    held: String,
    stopped: bool,
}

impl StopText {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops, held: String::new(), stopped: false }
    }

    /// Whether a stop string was seen (nothing more comes out then).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Take `piece`; returns the text that can go out now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        // Keep the longest tail that is the beginning of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&n| {
                        let at = self.held.len() - n;
                        self.held.is_char_boundary(at) && s.as_bytes().starts_with(&self.held.as_bytes()[at..])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let out = self.held.len() - keep;
        let rest = self.held.split_off(out);
        std::mem::replace(&mut self.held, rest)
    }

    /// The end of the generation: whatever was held back goes out.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out: Vec<String> = pieces.iter().map(|p| s.push(p)).collect();
        if !s.stopped() {
            out.push(s.finish());
        }
        (out, s.stopped())
    }

    #[test]
    fn text_before_a_stop_string_comes_out_and_the_stop_string_never_does() {
        // A stop string split over pieces: its first part is held back until it is clearly not one.
        let (out, stopped) = run(&["END"], &["ab", "cE", "N", "D more"]);
        assert_eq!(out, ["ab", "c", "", ""]);
        assert!(stopped);
        let (out, stopped) = run(&["END"], &["ab", "cE", "Nx", "y"]);
        assert_eq!(out, ["ab", "c", "ENx", "y", ""]);
        assert!(!stopped);
        // The earliest of several, and a held tail released at the end.
        let (out, _) = run(&["xyz", "b"], &["aab", "c"]);
        assert_eq!(out, ["aa", ""]);
        let (out, stopped) = run(&["\n\n"], &["one\n"]);
        assert_eq!(out, ["one", "\n"]);
        assert!(!stopped);
        // Multi-byte characters: the held tail starts at a character boundary.
        let (out, stopped) = run(&["é!"], &["café", "!"]);
        assert_eq!(out, ["caf", ""]);
        assert!(stopped);
    }
}
