//! What comes back from a plugin, bounded: the limits on its output, its messages cut and
//! escaped, and the one-line cause of a failed call.

use super::error::CallFailure;
use super::host::escape;

/// The largest object (JSON text) `transform` or `preserve` may return.
pub(crate) const MAX_OUTPUT_BYTES: usize = 4 << 20;
/// The longest error message or reason kept from a plugin; the rest is cut with a marker.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1024;
/// The most paths `ignore-paths` may return.
pub(crate) const MAX_IGNORE_PATHS: usize = 1024;
/// The longest path `ignore-paths` may return.
pub(crate) const MAX_IGNORE_PATH_BYTES: usize = 1024;
/// The longest cause kept in a call error.
const MAX_CAUSE_CHARS: usize = 200;

/// `text` cut to about `max` bytes (on a character boundary) with a marker saying how much
/// was cut, control characters escaped: plugin text ends up in logs, events and errors.
pub(super) fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return escape(text, usize::MAX);
    }
    let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes truncated)", escape(&text[..cut], usize::MAX), text.len() - cut)
}

/// The first line of what made a call fail: a guest panic's message (Rust guests write it to
/// stderr, then abort with an `unreachable` trap), else the trap, else the innermost error.
pub(super) fn cause(e: &wasmtime::Error, stderr: &str) -> String {
    let line = if let Some(message) = panic_message(stderr) {
        format!("guest panicked: {message}")
    } else if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        // wasmtime's text already starts with "wasm trap: ".
        let text = trap.to_string();
        if text.starts_with("wasm trap") { text } else { format!("wasm trap: {text}") }
    } else {
        let root = e.root_cause().to_string();
        let first = root.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default().to_string();
        if first.is_empty() { "unknown error".to_string() } else { first }
    };
    escape(&line, MAX_CAUSE_CHARS)
}

/// The message of a Rust panic in captured stderr: the line after `panicked at <place>:`.
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    let at = lines.find(|l| l.contains("panicked at "))?;
    // Rust >= 1.73 puts the message on the next line; older versions after `panicked at '`.
    let place = at.split_once("panicked at ").map_or("", |(_, p)| p).trim_end_matches(':');
    let message = lines.next().map(str::trim).filter(|m| !m.is_empty() && !m.starts_with("note:"));
    Some(match message {
        Some(m) => format!("{m} (at {place})"),
        None => place.to_string(),
    })
}

pub(super) fn classify(e: &wasmtime::Error, memory_denied: bool) -> CallFailure {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => CallFailure::OutOfFuel,
        Some(wasmtime::Trap::Interrupt) => CallFailure::Deadline,
        _ if memory_denied => CallFailure::Memory,
        _ => CallFailure::Trap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_character_boundary_with_a_marker_and_escapes() {
        assert_eq!(bounded("short\nline", 1024), "short\\nline");
        let cut = bounded(&"é".repeat(1000), 1025);
        assert!(cut.starts_with(&"é".repeat(512)) && cut.ends_with("… (976 bytes truncated)"), "{cut}");
    }

    #[test]
    fn a_rust_panic_message_is_found_in_stderr() {
        let stderr =
            "\nthread '<unnamed>' panicked at src/lib.rs:20:19:\nasked to trap\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(panic_message(stderr).as_deref(), Some("asked to trap (at src/lib.rs:20:19)"));
        assert_eq!(panic_message("some other output\n"), None);
        let e = wasmtime::Error::from(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(cause(&e, stderr), "guest panicked: asked to trap (at src/lib.rs:20:19)");
        assert!(cause(&e, "").starts_with("wasm trap: "), "{}", cause(&e, ""));
        let nested = wasmtime::Error::msg("root cause\nmore").context("outer\nbacktrace");
        assert_eq!(cause(&nested, ""), "root cause");
    }
}
