//! Progress for `restore`, `compact` and `verify`: an indicatif bar on a
//! terminal, plain log lines (about one per 10 %) otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress reporter over a known number of bytes.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    done: u64,
    logged_decile: u64,
}

impl Progress {
    /// Starts reporting `what` over `total` bytes.
    pub fn new(what: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what.to_owned());
            bar
        });
        Progress { bar, what: what.to_owned(), total, done: 0, logged_decile: 0 }
    }

    /// `bytes` more are done.
    pub fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        match &self.bar {
            Some(bar) => bar.inc(bytes),
            None if self.total > 0 => {
                let decile = self.done * 10 / self.total;
                if decile > self.logged_decile {
                    self.logged_decile = decile;
                    tracing::info!(done_bytes = self.done, total_bytes = self.total, "{}: {}%", self.what, decile * 10);
                }
            }
            None => {}
        }
    }

    /// Done.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
