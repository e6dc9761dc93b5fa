//! What the host (and the `water` command) may write into a log about a
//! connection: addresses are scrubbed unless the operator asks for them,
//! strings a peer chose are escaped, and per-connection warnings are
//! rate-limited and summarized.
//!
//! A bridge's log must not become a list of its users (tor's SafeLogging,
//! obfs4proxy's `-unsafeLogging`), nor a way for a peer to forge log lines
//! or flood the disk. The switch is process-wide, like tor's: logging is.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static UNSAFE_LOGGING: AtomicBool = AtomicBool::new(false);

/// Lets [`Scrubbed`] values show themselves (escaped) in logs, for the
/// whole process. Off by default: an operator turns it on to debug, and
/// knows the log then holds users' addresses.
pub fn set_unsafe_logging(on: bool) {
    UNSAFE_LOGGING.store(on, Ordering::Relaxed);
}

/// Whether [`set_unsafe_logging`] is on.
pub fn unsafe_logging() -> bool {
    UNSAFE_LOGGING.load(Ordering::Relaxed)
}

/// An address, or anything else that says who a user is or where they go
/// (a SOCKS target), as a log may show it: `[scrubbed]`, unless
/// [`set_unsafe_logging`] is on; then its text with control characters
/// escaped, since a peer may have chosen it.
#[derive(Clone, Copy)]
pub struct Scrubbed<T>(pub T);

impl<T: fmt::Display> fmt::Display for Scrubbed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if unsafe_logging() { Escaped(&self.0).fmt(f) } else { f.write_str("[scrubbed]") }
    }
}

impl<T: fmt::Display> fmt::Debug for Scrubbed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text a peer chose, with control characters (a line break would forge a
/// log line; tracing-subscriber's formatter writes messages as they are)
/// and backslashes escaped.
#[derive(Debug)]
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        struct Escaper<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl fmt::Write for Escaper<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    if c.is_control() || c == '\\' {
                        for e in c.escape_default() {
                            self.0.write_char(e)?;
                        }
                    } else {
                        self.0.write_char(c)?;
                    }
                }
                Ok(())
            }
        }
        write!(Escaper(f), "{}", self.0)
    }
}

/// How many per-connection warnings a window logs one by one.
pub const WARNINGS_PER_WINDOW: u32 = 10;
/// The window of [`WARNINGS_PER_WINDOW`].
pub const WARNING_WINDOW: Duration = Duration::from_secs(60);

/// Per-connection warnings over the current window.
struct Window {
    start: Instant,
    logged: u32,
    suppressed: BTreeMap<&'static str, u64>,
}

static WINDOW: Mutex<Option<Window>> = Mutex::new(None);

/// Logs one connection's warning through `log`, unless
/// [`WARNINGS_PER_WINDOW`] were logged in this [`WARNING_WINDOW`]: then it
/// only counts it under `kind` (a short fixed word: the error's kind). The
/// first warning of the next window is preceded by one line that sums up
/// what was held back, by kind; [`flush_warnings`] writes it at the end.
///
/// A crowd of failing connections (a scan, a flood, a censor's probes) so
/// costs a line a minute, not a line each.
pub fn connection_warning(kind: &'static str, log: impl FnOnce()) {
    let now = Instant::now();
    let mut guard = WINDOW.lock().unwrap_or_else(|p| p.into_inner());
    let window = guard.get_or_insert_with(|| Window { start: now, logged: 0, suppressed: BTreeMap::new() });
    if now.duration_since(window.start) >= WARNING_WINDOW {
        summarize(window);
        *window = Window { start: now, logged: 0, suppressed: BTreeMap::new() };
    }
    if window.logged < WARNINGS_PER_WINDOW {
        window.logged += 1;
        drop(guard);
        log();
    } else {
        *window.suppressed.entry(kind).or_default() += 1;
    }
}

/// Writes the summary of warnings held back in the current window, if any
/// (at shutdown, so that the last window's count is not lost).
pub fn flush_warnings() {
    let mut guard = WINDOW.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(window) = guard.as_mut() {
        summarize(window);
        window.suppressed.clear();
    }
}

fn summarize(window: &Window) {
    let total: u64 = window.suppressed.values().sum();
    if total == 0 {
        return;
    }
    let by_kind: Vec<String> = window.suppressed.iter().map(|(k, n)| format!("{k} {n}")).collect();
    tracing::warn!(
        target: "water",
        "{total} more connection warnings not logged in {} s ({WARNINGS_PER_WINDOW} per {} s): {}",
        window.start.elapsed().as_secs(),
        WARNING_WINDOW.as_secs(),
        by_kind.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_cannot_break_a_line() {
        assert_eq!(Escaped("a\nb\\c\u{1b}[31m").to_string(), "a\\nb\\\\c\\u{1b}[31m");
        assert_eq!(Escaped("example.org:443").to_string(), "example.org:443");
    }
}
