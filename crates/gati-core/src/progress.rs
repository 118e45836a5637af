//! Progress bars on stderr (hidden when stderr is not a terminal or GATI_QUIET is set).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if quiet() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// `GATI_QUIET` is set: no progress output at all.
pub fn quiet() -> bool {
    std::env::var_os("GATI_QUIET").is_some()
}

/// A line of news during `pb`'s work: above the bar when it is drawn, else on stderr (logs and CI
/// have no terminal for the bar), and nowhere under `GATI_QUIET`.
pub fn say(pb: &ProgressBar, line: &str) {
    if !pb.is_hidden() {
        pb.println(line);
    } else if !quiet() {
        eprintln!("{line}");
    }
}
