//! Wake-ups across processes. A process that commits events says so on core NATS (an empty
//! message on `<prefix>appended` per committed batch, coalesced while one is being sent);
//! followers in other processes (projections, the relay) wake on it instead of sleeping out
//! their poll. Polling stays the fallback: a lost wake-up (NATS away, a follower busy)
//! costs latency, never an event.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The subject wake-ups go on.
pub fn subject(prefix: &str) -> String {
    format!("{prefix}appended")
}

/// Publishes a wake-up on `subject` after each batch `appended` signals, until `shutdown`.
pub async fn announce(
    client: async_nats::Client,
    subject: String,
    appended: Arc<Notify>,
    shutdown: CancellationToken,
) {
    // Made once: each publish then clones a shared handle, not the text.
    let subject = async_nats::Subject::from(subject);
    // Registered before each publish: a commit signalled while one is sent is not missed.
    let mut next = std::pin::pin!(appended.notified());
    next.as_mut().enable();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = &mut next => {}
        }
        next.set(appended.notified());
        next.as_mut().enable();
        // Fire and forget: a follower that misses it polls.
        let _ = client.publish(subject.clone(), bytes::Bytes::new()).await;
    }
}

/// Wakes the follower waiting on `follower` at each wake-up on `subject`, until `shutdown`.
/// `notify_one`: a wake-up that comes while the follower is busy is kept for its next wait.
pub async fn listen(
    client: async_nats::Client,
    subject: String,
    follower: Arc<Notify>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match client.subscribe(subject.clone()).await {
            Ok(mut wakes) => loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    wake = wakes.next() => match wake {
                        Some(_) => follower.notify_one(),
                        None => break,
                    },
                }
            },
            Err(e) => {
                tracing::warn!(message = "Wake-ups not subscribed; polling meanwhile.", error = %e);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// A follower's wake-up: subscribes on `client` and returns what it is woken by.
pub fn follower(
    client: async_nats::Client,
    prefix: &str,
    shutdown: &CancellationToken,
) -> Arc<Notify> {
    let woken = Arc::new(Notify::new());
    tokio::spawn(listen(
        client,
        subject(prefix),
        woken.clone(),
        shutdown.clone(),
    ));
    woken
}

#[cfg(all(test, feature = "testing"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::NatsServer;

    /// Over a real NATS server: a commit signalled in one process wakes a follower in
    /// another, including one signalled while the follower was not waiting.
    #[tokio::test]
    async fn a_commit_here_wakes_a_follower_there() {
        let nats = NatsServer::start().await;
        let shutdown = CancellationToken::new();
        let (a, b) = (
            crate::nats::connect(&nats.url).await.unwrap(),
            crate::nats::connect(&nats.url).await.unwrap(),
        );
        let appended = Arc::new(Notify::new());
        let woken = follower(b.clone(), "t.", &shutdown);
        tokio::spawn(announce(
            a.clone(),
            subject("t."),
            appended.clone(),
            shutdown.clone(),
        ));
        // The follower's subscription is made by its task: signal until it is in place,
        // then let any wake-up still on its way arrive.
        let subscribed = async {
            loop {
                appended.notify_waiters();
                tokio::select! {
                    () = woken.notified() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), subscribed)
            .await
            .unwrap();
        let quiet = || tokio::time::timeout(Duration::from_millis(200), woken.notified());
        let _ = quiet().await;
        for _ in 0..3 {
            appended.notify_waiters();
            // Not waiting yet: the wake-up is kept for the wait.
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::time::timeout(Duration::from_secs(5), woken.notified())
                .await
                .unwrap();
            // And nothing wakes it without a commit.
            assert!(quiet().await.is_err());
        }
        shutdown.cancel();
    }

    /// The dispatcher announces its commits and listens for the others' on one connection
    /// without echo: its own announcements reach everyone else but never wake it.
    #[tokio::test]
    async fn one_connection_announces_and_hears_only_the_others() {
        let nats = NatsServer::start().await;
        let shutdown = CancellationToken::new();
        let both = crate::nats::connect_no_echo(&nats.url).await.unwrap();
        let other = crate::nats::connect(&nats.url).await.unwrap();
        let watcher = crate::nats::connect(&nats.url).await.unwrap();
        let (mine, theirs) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let woken = follower(both.clone(), "e.", &shutdown);
        let seen = follower(watcher, "e.", &shutdown);
        tokio::spawn(announce(
            both,
            subject("e."),
            mine.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(announce(
            other,
            subject("e."),
            theirs.clone(),
            shutdown.clone(),
        ));
        // Both subscriptions are live once a commit of the other connection wakes both.
        let subscribed = async {
            loop {
                theirs.notify_waiters();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let a = tokio::time::timeout(Duration::from_millis(50), woken.notified());
                let b = tokio::time::timeout(Duration::from_millis(50), seen.notified());
                if a.await.is_ok() && b.await.is_ok() {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), subscribed)
            .await
            .unwrap();
        let quiet = |n: &Arc<Notify>| {
            let n = n.clone();
            async move { tokio::time::timeout(Duration::from_millis(200), n.notified()).await }
        };
        let _ = quiet(&woken).await;
        let _ = quiet(&seen).await;
        for _ in 0..3 {
            mine.notify_waiters();
            // Published: the watcher hears it ...
            tokio::time::timeout(Duration::from_secs(5), seen.notified())
                .await
                .unwrap();
            // ... and the connection that published it does not.
            assert!(quiet(&woken).await.is_err());
        }
        theirs.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), woken.notified())
            .await
            .unwrap();
        shutdown.cancel();
    }
}
