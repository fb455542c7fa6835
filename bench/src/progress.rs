//! Progress bars of the long runs, drawn on stderr only when it is a terminal: redirected to a
//! file or a CI log they are hidden, so logs stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether a person is watching stderr.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants of this file; should one ever be malformed, a plain bar beats
    // failing the command.
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A bar of `len` steps named `name`; hidden when stderr is not a terminal.
pub fn bar(len: u64, name: &str) -> ProgressBar {
    if !interactive() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(style(
        "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
    ));
    pb.set_prefix(name.to_string());
    pb
}
