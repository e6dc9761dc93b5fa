//! Guest stdout and stderr: forwarded line by line to `tracing` (target
//! `water::guest`, level debug), at most [`BUDGET`] bytes and
//! [`LINE_BUDGET`] lines per instance, control characters escaped, so that
//! a chatty or hostile guest can neither flood the host's logs nor forge
//! lines in them. The last stderr line is kept as the guest's reason for a
//! failure.

use crate::wasi::table::Output;

/// Bytes of output one instance may log.
pub const BUDGET: usize = 16 * 1024;

/// Lines one instance may log (16 Ki empty lines are within the byte
/// budget, and would each be a log record).
pub const LINE_BUDGET: usize = 64;

/// Longest line kept whole; longer ones are logged in pieces.
const MAX_LINE: usize = 1024;

#[derive(Debug)]
pub struct OutputLog {
    label: String,
    budget: usize,
    lines: usize,
    /// Records logged, counted apart from the budget (which saturates), so
    /// that a test sees every record past it.
    #[cfg(test)]
    emitted: usize,
    pending: [Vec<u8>; 2],
    truncated: bool,
    last_stderr: Option<String>,
}

impl OutputLog {
    pub fn new(label: String) -> Self {
        OutputLog {
            label,
            budget: BUDGET,
            lines: LINE_BUDGET,
            #[cfg(test)]
            emitted: 0,
            pending: [Vec::new(), Vec::new()],
            truncated: false,
            last_stderr: None,
        }
    }

    /// Takes what the guest wrote; always "succeeds" (bytes past the budget
    /// are dropped, with one warning).
    pub fn write(&mut self, which: Output, bytes: &[u8]) {
        let idx = which as usize;
        let mut used = 0;
        for &b in bytes {
            if self.budget == 0 || self.lines == 0 {
                break;
            }
            self.budget -= 1;
            used += 1;
            if b == b'\n' || self.pending[idx].len() >= MAX_LINE {
                self.emit(which);
                if b == b'\n' {
                    continue;
                }
            }
            self.pending[idx].push(b);
        }
        if used == bytes.len() {
            return;
        }
        if which == Output::Stderr {
            self.keep_last_line(&bytes[used..]);
        }
        if !self.truncated {
            self.truncated = true;
            tracing::debug!(
                target: "water::guest",
                conn = %self.label,
                "guest output over {BUDGET} bytes or {LINE_BUDGET} lines; the rest is dropped"
            );
        }
    }

    /// Past the budgets, stderr is not logged, but its last line is still
    /// the reason a failing guest gives: kept from the end of `bytes` only,
    /// so that the cost does not grow with what the guest writes.
    fn keep_last_line(&mut self, bytes: &[u8]) {
        let tail = &bytes[bytes.len().saturating_sub(2 * MAX_LINE)..];
        let end = tail.iter().rposition(|&b| b != b'\n').map_or(0, |i| i + 1);
        let line = tail[..end].rsplit(|&b| b == b'\n').next().unwrap_or_default();
        if !line.is_empty() {
            let line = &line[line.len().saturating_sub(MAX_LINE)..];
            self.pending[Output::Stderr as usize].clear();
            self.last_stderr = Some(escape(&String::from_utf8_lossy(line)));
        }
    }

    fn emit(&mut self, which: Output) {
        let line = std::mem::take(&mut self.pending[which as usize]);
        self.lines = self.lines.saturating_sub(1);
        #[cfg(test)]
        {
            self.emitted += 1;
        }
        let text = escape(&String::from_utf8_lossy(&line));
        match which {
            Output::Stdout => {
                tracing::debug!(target: "water::guest", conn = %self.label, stream = "stdout", "{text}")
            }
            Output::Stderr => {
                tracing::debug!(target: "water::guest", conn = %self.label, stream = "stderr", "{text}");
                self.last_stderr = Some(text);
            }
        }
    }

    /// Lines logged so far.
    #[cfg(test)]
    fn logged(&self) -> usize {
        self.emitted
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

/// `text` with every control character (`\r`, escape sequences, ...)
/// written as its Rust escape, so that a guest's line stays one line of
/// plain text in any log.
fn escape(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_budgeted_too() {
        let mut log = OutputLog::new("test".into());
        log.write(Output::Stdout, &[b'\n'; 16 * 1024]);
        log.write(Output::Stderr, b"the reason\n\n");
        assert_eq!(log.logged(), LINE_BUDGET);
        // Not logged, but still the guest's reason for a failure.
        assert_eq!(log.last_stderr_line().as_deref(), Some("the reason"));
        assert_eq!(log.logged(), LINE_BUDGET);
    }

    #[test]
    fn control_characters_are_escaped_and_the_last_stderr_line_kept() {
        let mut log = OutputLog::new("test".into());
        log.write(Output::Stderr, b"fake\r2026 INFO forged\x1b[31m red\nreason: bad key");
        assert_eq!(log.last_stderr_line().as_deref(), Some("reason: bad key"));
        assert_eq!(escape("fake\r2026\x1b[31m\t"), "fake\\r2026\\u{1b}[31m\\t");
    }
}
