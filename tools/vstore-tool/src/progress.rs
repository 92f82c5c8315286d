//! Progress bars (indicatif) on standard error, for anything that can take
//! more than a second. Nothing is drawn with `--quiet` or when standard
//! error is not a terminal (indicatif's terminal target hides itself), so
//! scripts and tests see only the report.

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Files smaller than this are decoded without a bar.
const BAR_BYTES: u64 = 32 << 20;

/// Where progress goes: standard error, or nowhere.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    quiet: bool,
}

impl Progress {
    /// Bars on standard error (if it is a terminal) unless `quiet`.
    pub fn new(quiet: bool) -> Self {
        Progress { quiet }
    }

    /// Never draws.
    pub fn hidden() -> Self {
        Progress { quiet: true }
    }

    fn target(&self) -> ProgressDrawTarget {
        if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        }
    }

    /// A bar of `len` steps labelled `msg`.
    pub fn bar(&self, len: u64, msg: &str) -> ProgressBar {
        let b = ProgressBar::with_draw_target(Some(len), self.target());
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {human_pos}/{human_len} ({elapsed}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_message(msg.to_string());
        b
    }

    /// A bar counting `len` bytes.
    pub fn bytes(&self, len: u64, msg: &str) -> ProgressBar {
        let b = ProgressBar::with_draw_target(Some(len), self.target());
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_message(msg.to_string());
        b
    }

    /// A spinner for a step of unknown length; cleared when dropped (so an
    /// error message never follows a half-drawn spinner line).
    pub fn spinner(&self, msg: &str) -> Spinner {
        let b = ProgressBar::with_draw_target(None, self.target());
        b.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid"));
        b.set_message(msg.to_string());
        b.enable_steady_tick(Duration::from_millis(120));
        Spinner(b)
    }

    /// A bar counting the `len` bytes of `path` decoded, drawn only for
    /// a large file.
    pub fn file_bar(&self, path: &Path, len: u64) -> ProgressBar {
        if len < BAR_BYTES {
            return ProgressBar::hidden();
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.bytes(len, &name)
    }
}

/// A spinner that clears itself when dropped.
#[derive(Debug)]
pub struct Spinner(ProgressBar);

impl Spinner {
    /// Removes the spinner's line.
    pub fn finish_and_clear(&self) {
        self.0.finish_and_clear();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
