use serde_json::Value;

use crate::helpers::*;

/// `/openapi.json` is served, and every path and method it documents is routed: a request
/// without a token gets anything but the unknown-route 404 or a 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let dev = Dev::start(&["--in-memory"], &[]);
    let res = client()
        .get(format!("{}/openapi.json", dev.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 16);
    let id = uuid::Uuid::new_v4().to_string();
    let mut checked = 0;
    for (path, ops) in paths {
        let url = format!(
            "{}{}",
            dev.url,
            path.replace("{id}", &id).replace("{user_id}", &id)
        );
        for method in ops.as_object().unwrap().keys() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let res = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                client().request(method.clone(), &url).send(),
            )
            .await
            .unwrap()
            .unwrap();
            let status = res.status().as_u16();
            let body = res.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path} is not routed");
            assert!(
                !(status == 404
                    && body.contains("urn:runledger:problem:not-found\"")
                    && !path.contains('{')),
                "{method} {path} is not routed: {body}"
            );
            if path.contains('{') {
                // Unauthenticated: a routed path answers 401 before it looks for the job.
                assert_eq!(status, 401, "{method} {path}: {body}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 17);
    // And an undocumented path is the unknown-route problem.
    let res = client()
        .get(format!("{}/v1/nope", dev.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
