//! Outbound calls from `http.request` go straight to the checked address: a proxy from
//! `HTTP_PROXY`/`HTTPS_PROXY` would resolve the name itself and bypass the SSRF guard.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_ignores_proxy_variables() {
    let proxied = Arc::new(AtomicUsize::new(0));
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let count = proxied.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = proxy.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nvia proxy")
                .await;
        }
    });
    let target = ok_server().await;
    let dev = Dev::start(
        &["--in-memory"],
        &[
            ("RUNLEDGER_HTTP_ALLOW", "127.0.0.1/32"),
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("ALL_PROXY", &proxy_url),
        ],
    );
    let (status, body) = submit(&dev, "http.request", json!({"url": target})).await;
    assert_eq!(status, 202, "{body}");
    let path = format!("/v1/jobs/{}", body["job_id"].as_str().unwrap());
    eventually(30, "the request to finish", || async {
        get(&dev, &dev.token, &path).await.1["status"] == "completed"
    })
    .await;
    let job = get(&dev, &dev.token, &path).await.1;
    assert_eq!(job["result"]["body"], "ok", "{job}");
    assert_eq!(proxied.load(Ordering::SeqCst), 0, "the proxy was used");
}
