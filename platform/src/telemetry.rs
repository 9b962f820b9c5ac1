//! JSON logs through tracing.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the JSON log subscriber with `filter` (an `EnvFilter` directive such as `info`).
/// A second call is a no-op, so tests may call it freely.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(quiet(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .json()
                .with_current_span(true)
                .with_target(true),
        )
        .try_init();
}

/// Installs a compact human-readable subscriber with `filter` on standard error, for
/// `runledger dev` in a terminal (standard output carries its banner).
pub fn init_human(filter: &str) {
    let filter = EnvFilter::try_new(quiet(filter)).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .compact()
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .try_init();
}

/// `filter`, with chromiumoxide held to errors unless the filter names it: it warns about
/// every browser dropped without a close and every CDP message it does not know, which the
/// browser pool handles itself.
fn quiet(filter: &str) -> String {
    if filter.contains("chromiumoxide") {
        filter.to_owned()
    } else {
        format!("{filter},chromiumoxide=error")
    }
}
