//! The NATS connection.

use std::time::Duration;

/// Connects to `url`, retrying in the background when the server goes away.
///
/// # Errors
/// When the first connection fails.
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("runledger")
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
}

/// As [`connect`], but the server never hands this connection what it published itself: a
/// role that announces its commits and listens for others' does not wake on its own.
///
/// # Errors
/// When the options are invalid (the connection itself is retried).
pub async fn connect_no_echo(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("runledger")
        .no_echo()
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
}

/// Connects to `url` now, failing when no server answers (reconnecting later if it goes
/// away): for `runledger dev`, which must say at start that `NATS_URL` is wrong.
///
/// # Errors
/// When the connection fails.
pub async fn connect_now(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("runledger")
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(url)
        .await
}
