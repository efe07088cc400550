//! Progress of `unicornc compile` on a terminal: one line per stage as it starts and ends (loading the
//! checkpoint, the passes, generating kernels, building NPU designs), and a bar of bytes under the weights with
//! the tensor being written. Nothing at all when stderr is not a terminal (a pipe, a file, CI) or with `-q`:
//! a script that runs the compiler reads its result, not its progress.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

pub struct Progress {
    shown: bool,
    /// The stage's bar, when it started and its name.
    stage: Option<(ProgressBar, Instant, String)>,
}

impl Progress {
    /// Progress where `wanted` (not `-q`) and stderr is a terminal.
    pub fn new(wanted: bool) -> Self {
        Self { shown: wanted && std::io::stderr().is_terminal(), stage: None }
    }

    fn bar(&self, len: Option<u64>) -> ProgressBar {
        let bar = match len {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_draw_target(if self.shown { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        bar
    }

    /// Start a stage without a measure of its work (a spinner with its name).
    pub fn stage(&mut self, name: &str) {
        self.finish();
        let bar = self.bar(None);
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"));
        bar.set_message(name.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        self.stage = Some((bar, Instant::now(), name.to_string()));
    }

    /// Start a stage of `total` bytes (the weights): a bar, the share done and the tensor at hand, within 80
    /// columns.
    pub fn bytes(&mut self, name: &str, total: u64) {
        self.finish();
        let bar = self.bar(Some(total));
        let style = ProgressStyle::with_template(&format!("{name} [{{bar:24}}] {{percent:>3}}% {{msg:30!}}"))
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        self.stage = Some((bar, Instant::now(), name.to_string()));
    }

    /// What the current stage is working on (the tensor being written).
    pub fn item(&self, what: &str) {
        if let Some((bar, ..)) = &self.stage {
            bar.set_message(what.to_string());
        }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some((bar, ..)) = &self.stage {
            bar.inc(bytes);
        }
    }

    /// End the current stage, leaving its line with the time it took.
    pub fn finish(&mut self) {
        if let Some((bar, t, name)) = self.stage.take() {
            bar.finish_and_clear();
            if self.shown {
                eprintln!("  {name:32} {:6.1} s", t.elapsed().as_secs_f64());
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A failed compile leaves no half-drawn bar behind its error line.
        if let Some((bar, ..)) = self.stage.take() {
            bar.finish_and_clear();
        }
    }
}
