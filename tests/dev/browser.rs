//! The browser worker on Debian's Chromium under `runledger dev`, against pages this test
//! serves on loopback (`RUNLEDGER_HTTP_ALLOW` opens 127.0.0.1 only, so 127.0.0.2 stands for a
//! refused address): screenshots, PDFs and extracts; refused destinations never fetched;
//! no cookie shared between jobs; a killed Chromium's job retried and the pool healed;
//! artifacts served to their owner only.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::Query,
    http::{HeaderMap, header},
    response::{Html, Redirect},
    routing,
};
use serde_json::{Value, json};

use crate::helpers::*;

const PAGE: &str = r#"<html><head><style>body{margin:0;background:#d00000}
#box{position:absolute;left:0;top:0;width:100px;height:100px;background:#0000ff}</style></head>
<body><div id="box"></div><p class="x">one</p><p class="x">two</p></body></html>"#;

/// Pages on 127.0.0.1; `cookies` records each request's Cookie header.
async fn site(refused: &str, cookies: Arc<Mutex<Vec<String>>>) -> String {
    let r1 = format!("{refused}/secret");
    let r2 = format!("<html><body><img src=\"{refused}/pixel.png\"><p>hi</p></body></html>");
    let r3 = format!(
        "<html><body><p id=\"p\">x</p><script>try {{ new WebSocket('ws://{}/ws'); }} catch (e) {{}}</script></body></html>",
        refused.trim_start_matches("http://")
    );
    let app = Router::new()
        .route("/", routing::get(|| async { Html(PAGE) }))
        .route(
            "/tall",
            routing::get(|| async { Html("<html><body style=\"margin:0\"><div style=\"height:3000px;background:#00ff00\"></div></body></html>") }),
        )
        .route("/redirect", routing::get(move || async move { Redirect::temporary(&r1) }))
        .route("/subresource", routing::get(move || async move { Html(r2) }))
        .route("/websocket", routing::get(move || async move { Html(r3) }))
        .route(
            "/download",
            routing::get(|| async { ([(header::CONTENT_DISPOSITION, "attachment; filename=x.bin")], "data") }),
        )
        .route("/big", routing::get(|| async { Html(format!("<html><body>{}</body></html>", "x".repeat(20_000))) }))
        .route(
            "/slow",
            routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Html(PAGE)
            }),
        )
        .route(
            "/cookie",
            routing::get(move |q: Query<std::collections::HashMap<String, String>>, h: HeaderMap| {
                let cookies = cookies.clone();
                async move {
                    if let Some(c) = h.get(header::COOKIE) {
                        cookies.lock().unwrap().push(c.to_str().unwrap().to_owned());
                    }
                    let who = q.get("u").cloned().unwrap_or_default();
                    (
                        [(header::SET_COOKIE, format!("srv={who}; Path=/"))],
                        Html(format!(
                            "<html><body><p id=\"before\"></p><script>\
                             document.getElementById('before').textContent = 'seen:' + document.cookie;\
                             document.cookie = 'js={who}; path=/';</script></body></html>"
                        )),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A server on 127.0.0.2 (refused by the guard) that counts every connection it gets.
async fn refused_server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            use tokio::io::AsyncWriteExt;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")
                .await;
        }
    });
    (format!("http://{addr}"), hits)
}

/// A browser job as `token`, to its end.
async fn run_as(dev: &Dev, token: &str, task_type: &str, payload: Value) -> Value {
    run_job(dev, token, task_type, payload, 90).await
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("runledger-browser-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> Dev {
    let mut env = vec![("RUNLEDGER_HTTP_ALLOW", "127.0.0.1/32")];
    env.extend_from_slice(extra);
    Dev::start(&["--data-dir", dir.to_str().unwrap()], &env)
}

async fn artifact(dev: &Dev, token: &str, job: &Value, name: &str) -> (u16, String, Vec<u8>) {
    let res = client()
        .get(format!(
            "{}/v1/jobs/{}/artifacts/{name}",
            dev.url,
            job["id"].as_str().unwrap()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, res.bytes().await.unwrap().to_vec())
}

/// Decodes a PNG: (width, height, RGBA pixels).
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected colour type {other:?}"),
    };
    (info.width, info.height, rgba)
}

fn pixel(rgba: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
    let i = ((y * width + x) * 4) as usize;
    [rgba[i], rgba[i + 1], rgba[i + 2]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_pdfs_and_extracts_of_a_local_page_reach_their_owner_only() {
    let (refused, _) = refused_server().await;
    let url = site(&refused, Arc::default()).await;
    let dir = temp_dir();
    let dev = start(&dir, &[]);

    let job = run_as(
        &dev,
        &dev.token,
        "browser.screenshot",
        json!({"url": format!("{url}/"), "viewport": {"width": 400, "height": 300}}),
    )
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    let listed = &job["result"]["artifacts"][0];
    assert_eq!(listed["name"], "screenshot.png");
    let (status, ct, png) = artifact(&dev, &dev.token, &job, "screenshot.png").await;
    assert_eq!((status, ct.as_str()), (200, "image/png"));
    assert_eq!(listed["bytes"], png.len());
    assert_eq!(listed["sha256"], platform::artifacts::sha256_hex(&png));
    let (w, h, rgba) = decode_png(&png);
    assert_eq!((w, h), (400, 300));
    // The blue box top left, the red page elsewhere: the page was rendered, not a blank.
    assert_eq!(pixel(&rgba, w, 50, 50), [0, 0, 255]);
    assert_eq!(pixel(&rgba, w, 300, 250), [0xd0, 0, 0]);

    // Another user: the same 404 as for a job that does not exist.
    let other = new_customer(&dir);
    let (status, _, _) = artifact(&dev, &other, &job, "screenshot.png").await;
    assert_eq!(status, 404);
    let (status, _, _) = artifact(&dev, &dev.token, &job, "other.png").await;
    assert_eq!(status, 404);

    let tall = run_as(&dev,
        &dev.token,
        "browser.screenshot",
        json!({"url": format!("{url}/tall"), "full_page": true, "viewport": {"width": 200, "height": 100}}),
    )
    .await;
    assert_eq!(tall["status"], "completed", "{tall}");
    let (_, _, png) = artifact(&dev, &dev.token, &tall, "screenshot.png").await;
    let (w, h, rgba) = decode_png(&png);
    assert_eq!((w, h), (200, 3000));
    assert_eq!(pixel(&rgba, w, 100, 2990), [0, 255, 0]);

    let pdf = run_as(
        &dev,
        &dev.token,
        "browser.pdf",
        json!({"url": format!("{url}/")}),
    )
    .await;
    assert_eq!(pdf["status"], "completed", "{pdf}");
    let (status, ct, bytes) = artifact(&dev, &dev.token, &pdf, "page.pdf").await;
    assert_eq!((status, ct.as_str()), (200, "application/pdf"));
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("%PDF-1."), "not a PDF header");
    assert!(text.trim_end().ends_with("%%EOF"), "no PDF trailer");
    assert!(
        text.contains("startxref") && text.contains("/Type /Page"),
        "no page tree"
    );

    let ex = run_as(
        &dev,
        &dev.token,
        "browser.extract",
        json!({"url": format!("{url}/"), "selector": "p.x"}),
    )
    .await;
    assert_eq!(ex["status"], "completed", "{ex}");
    assert_eq!(ex["result"]["count"], 2);
    assert_eq!(ex["result"]["matches"][0]["text"], "one");
    assert_eq!(ex["result"]["matches"][1]["html"], "<p class=\"x\">two</p>");

    let bad = run_as(
        &dev,
        &dev.token,
        "browser.extract",
        json!({"url": format!("{url}/"), "selector": "p[[["}),
    )
    .await;
    assert_eq!(bad["status"], "failed", "{bad}");
    assert_eq!(
        bad["attempts"], 1,
        "an invalid selector is not retried: {bad}"
    );
    assert!(
        bad["error"].as_str().unwrap().contains("not valid CSS"),
        "{bad}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_destinations_are_never_fetched() {
    let (refused, hits) = refused_server().await;
    let url = site(&refused, Arc::default()).await;
    let dir = temp_dir();
    let dev = start(&dir, &[("RUNLEDGER_BROWSER_MAX_RESPONSE", "4096")]);
    let shot = |path: &str| json!({"url": format!("{url}{path}")});

    for (path, reason) in [
        ("/redirect", "not allowed"),
        ("/subresource", "not allowed"),
        ("/download", "downloads are not allowed"),
        ("/big", "over 4096 bytes"),
    ] {
        let job = run_as(&dev, &dev.token, "browser.screenshot", shot(path)).await;
        assert_eq!(job["status"], "failed", "{path}: {job}");
        assert_eq!(job["attempts"], 1, "{path}: refusals are not retried");
        let error = job["error"].as_str().unwrap();
        assert!(error.contains(reason), "{path}: {error}");
    }
    // A WebSocket is not a request the worker fetches: it meets the proxy that does not exist.
    let ws = run_as(
        &dev,
        &dev.token,
        "browser.extract",
        json!({"url": format!("{url}/websocket"), "selector": "#p"}),
    )
    .await;
    assert_eq!(ws["status"], "completed", "{ws}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused address was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_jobs_of_two_users_share_no_cookie() {
    let (refused, _) = refused_server().await;
    let cookies = Arc::new(Mutex::new(Vec::new()));
    let url = site(&refused, cookies.clone()).await;
    let dir = temp_dir();
    let dev = start(&dir, &[]);
    let other = new_customer(&dir);
    let mut runs = Vec::new();
    for i in 0..6 {
        let token = if i % 2 == 0 {
            dev.token.clone()
        } else {
            other.clone()
        };
        let who = if i % 2 == 0 { "a" } else { "b" };
        let payload = json!({"url": format!("{url}/cookie?u={who}{i}"), "selector": "#before"});
        let dev = &dev;
        runs.push(async move {
            (
                format!("{who}{i}"),
                run_as(dev, &token, "browser.extract", payload).await,
            )
        });
    }
    for (who, job) in futures::future::join_all(runs).await {
        assert_eq!(job["status"], "completed", "{job}");
        // Only the page's own cookie, from its own response: none of another job's.
        assert_eq!(
            job["result"]["matches"][0]["text"],
            format!("seen:srv={who}"),
            "a cookie leaked in: {job}"
        );
    }
    assert!(
        cookies.lock().unwrap().is_empty(),
        "a request carried a cookie of another job: {:?}",
        cookies.lock().unwrap()
    );
}

/// The pids of the Chromium processes whose profile is under `dir`.
fn chromium_pids(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.join("browser").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(&needle) && cmd.contains("--remote-debugging-port"))
                .then(|| pid.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_chromium_fails_its_job_retryably_and_the_pool_heals() {
    let (refused, _) = refused_server().await;
    let url = site(&refused, Arc::default()).await;
    let dir = temp_dir();
    let dev = start(&dir, &[("RUNLEDGER_BROWSER_POOL", "1")]);
    let (status, body) = submit(
        &dev,
        "browser.screenshot",
        json!({"url": format!("{url}/slow")}),
    )
    .await;
    assert_eq!(status, 202);
    let id = body["job_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/jobs/{id}");
    eventually(30, "the job to run", || async {
        get(&dev, &dev.token, &path).await.1["status"] == "running"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pids = chromium_pids(&dir);
    assert!(
        !pids.is_empty(),
        "no Chromium found under the data directory"
    );
    for pid in &pids {
        std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .unwrap();
    }
    let job = wait_final(&dev, &dev.token, &id, 90).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        job["attempts"], 2,
        "the killed attempt failed as retryable: {job}"
    );
    // The pool healed: a new browser, and the next job runs at its first attempt.
    let next = run_as(
        &dev,
        &dev.token,
        "browser.screenshot",
        json!({"url": format!("{url}/")}),
    )
    .await;
    assert_eq!(next["status"], "completed", "{next}");
    assert_eq!(next["attempts"], 1);
    let after = chromium_pids(&dir);
    assert!(
        !after.is_empty() && after.iter().all(|p| !pids.contains(p)),
        "{pids:?} {after:?}"
    );
    let usage = get(&dev, &dev.token, "/v1/usage").await.1;
    assert_eq!(usage["consumed"], 2, "one unit per completed job: {usage}");
}
