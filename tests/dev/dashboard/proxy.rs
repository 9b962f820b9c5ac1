//! A TCP proxy between the browser and `runledger dev`: it can cut every open connection (the
//! server side of the browser's SSE stream going away), notes each stream request's
//! Last-Event-ID, and stamps each SSE job change as it passes on its way to the browser.

use std::{
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

#[derive(Default)]
struct Log {
    /// Open connections, to cut.
    conns: Vec<AbortHandle>,
    /// Each `GET /v1/jobs/stream`: its Last-Event-ID, if any.
    streams: Vec<Option<String>>,
    /// (job id, status, epoch ms) of each SSE job change forwarded.
    changes: Vec<(String, String, i64)>,
}

#[derive(Clone)]
pub struct Proxy {
    pub url: String,
    log: Arc<Mutex<Log>>,
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

impl Proxy {
    /// A proxy in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Log::default()));
        let l = log.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let task = tokio::spawn(pipe(client, server, l.clone()));
                l.lock().unwrap().conns.push(task.abort_handle());
            }
        });
        Self { url, log }
    }

    /// Cuts every open connection; new ones still go through.
    pub fn cut(&self) {
        for c in self.log.lock().unwrap().conns.drain(..) {
            c.abort();
        }
    }

    /// The Last-Event-ID of each stream request so far.
    pub fn streams(&self) -> Vec<Option<String>> {
        self.log.lock().unwrap().streams.clone()
    }

    /// The SSE job changes forwarded so far.
    pub fn changes(&self) -> Vec<(String, String, i64)> {
        self.log.lock().unwrap().changes.clone()
    }
}

async fn pipe(client: TcpStream, server: TcpStream, log: Arc<Mutex<Log>>) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pump(cr, sw, |t| note_request(t, &log)) => {},
        _ = pump(sr, cw, |t| note_changes(t, &log)) => {},
    }
}

/// Copies `from` to `to` until either ends, showing `note` each chunk first.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    note: impl Fn(&str),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        note(&String::from_utf8_lossy(&buf[..n]));
        to.write_all(&buf[..n]).await?;
    }
}

fn note_request(text: &str, log: &Mutex<Log>) {
    if !text.starts_with("GET /v1/jobs/stream") {
        return;
    }
    let last = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("last-event-id")
            .then(|| v.trim().to_owned())
    });
    log.lock().unwrap().streams.push(last);
}

/// SSE events are one chunk each: their `data:` lines parse whole.
fn note_changes(text: &str, log: &Mutex<Log>) {
    if !text.contains("event: job") {
        return;
    }
    let t = now_ms();
    let mut log = log.lock().unwrap();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
            && let (Some(id), Some(status)) = (v["id"].as_str(), v["status"].as_str())
        {
            log.changes.push((id.to_owned(), status.to_owned(), t));
        }
    }
}
