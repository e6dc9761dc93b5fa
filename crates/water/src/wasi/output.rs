//! Guest stdout and stderr: forwarded line by line to `tracing` (target
//! `water::guest`), at most [`BUDGET`] bytes per instance so that a chatty
//! or hostile guest cannot flood the host's logs.

use crate::wasi::table::Output;

/// Bytes of output one instance may log.
pub const BUDGET: usize = 16 * 1024;

/// Longest line kept whole; longer ones are logged in pieces.
const MAX_LINE: usize = 1024;

#[derive(Debug)]
pub struct OutputLog {
    label: String,
    budget: usize,
    pending: [Vec<u8>; 2],
    truncated: bool,
    last_stderr: Option<String>,
}

impl OutputLog {
    pub fn new(label: String) -> Self {
        OutputLog {
            label,
            budget: BUDGET,
            pending: [Vec::new(), Vec::new()],
            truncated: false,
            last_stderr: None,
        }
    }

    /// Takes what the guest wrote; always "succeeds" (bytes past the budget
    /// are dropped, with one warning).
    pub fn write(&mut self, which: Output, bytes: &[u8]) {
        let take = bytes.len().min(self.budget);
        self.budget -= take;
        let idx = which as usize;
        for &b in &bytes[..take] {
            if b == b'\n' || self.pending[idx].len() >= MAX_LINE {
                self.emit(which);
                if b == b'\n' {
                    continue;
                }
            }
            self.pending[idx].push(b);
        }
        if take < bytes.len() && !self.truncated {
            self.truncated = true;
            tracing::warn!(target: "water::guest", conn = %self.label, "guest output over {BUDGET} bytes; the rest is dropped");
        }
    }

    fn emit(&mut self, which: Output) {
        let line = std::mem::take(&mut self.pending[which as usize]);
        let text = String::from_utf8_lossy(&line).into_owned();
        match which {
            Output::Stdout => {
                tracing::info!(target: "water::guest", conn = %self.label, stream = "stdout", "{text}")
            }
            Output::Stderr => {
                tracing::warn!(target: "water::guest", conn = %self.label, stream = "stderr", "{text}");
                self.last_stderr = Some(text);
            }
        }
    }

    /// The last complete (or pending) line the guest wrote to stderr: the
    /// reason it gives for a failure.
    pub fn last_stderr_line(&mut self) -> Option<String> {
        if !self.pending[Output::Stderr as usize].is_empty() {
            self.emit(Output::Stderr);
        }
        self.last_stderr.clone()
    }
}

impl Drop for OutputLog {
    fn drop(&mut self) {
        for which in [Output::Stdout, Output::Stderr] {
            if !self.pending[which as usize].is_empty() {
                self.emit(which);
            }
        }
    }
}
