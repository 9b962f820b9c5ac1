//! Every bad token is a 401 (a wrong role a 403), and no token reaches a log line.

use std::time::Duration;

use axum_test_server::serve_jwks;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use platform::auth::Role;
use serde_json::json;

use crate::helpers::*;

mod axum_test_server {
    /// Serves `body` at `/jwks.json` on a free port; returns the URL.
    pub async fn serve_jwks(body: &'static str) -> String {
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || async move { body }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/jwks.json")
    }
}

const JWKS: &str = include_str!("jwks.json");
const RSA_PRIVATE: &[u8] = include_bytes!("test-only-rsa.pem");

fn claims(sub: &str, aud: &str, exp_offset: i64, nbf_offset: Option<i64>) -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let mut c = json!({"sub": sub, "aud": aud, "exp": now + exp_offset, "iat": now});
    if let Some(n) = nbf_offset {
        c["nbf"] = json!(now + n);
    }
    c
}

fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs256(claims: &serde_json::Value, kid: &str) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.to_owned());
    encode(&h, claims, &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap()).unwrap()
}

async fn submit_with(app: &TestApp, auth: Option<&str>) -> Reply {
    let mut req = app
        .client
        .post(format!("{}/v1/jobs", app.base))
        .json(&json!({"task_type": "noop", "payload": {}}));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    Reply {
        status,
        content_type,
        body: res.json().await.unwrap(),
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_and_never_logged() {
    let jwks_url = serve_jwks(JWKS).await;
    let app = spawn_app(&[("RUNLEDGER_JWKS_URL", &jwks_url)]).await;
    let sub = new_user().to_string();
    let good_rs = rs256(&claims(&sub, "authenticated", 300, None), "test-rsa");
    assert_eq!(
        submit_with(&app, Some(&format!("Bearer {good_rs}")))
            .await
            .status,
        202
    );

    let public_pem = {
        // The RSA public key as an HMAC secret: the classic algorithm-confusion forgery.
        let jwk: serde_json::Value = serde_json::from_str(JWKS).unwrap();
        jwk["keys"][0]["n"].as_str().unwrap().to_owned()
    };
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("test-rsa".into());
    let confusion = encode(
        &confused,
        &claims(&sub, "authenticated", 300, None),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    let alg_none = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(br#"{"alg":"none","typ":"JWT"}"#),
            e.encode(claims(&sub, "authenticated", 300, None).to_string())
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("malformed", "Bearer not-a-token".into()),
        ("alg none", format!("Bearer {alg_none}")),
        ("HS256 against the JWKS key", format!("Bearer {confusion}")),
        (
            "wrong audience",
            format!(
                "Bearer {}",
                hs256(SECRET.as_bytes(), &claims(&sub, "other", 300, None))
            ),
        ),
        (
            "expired",
            format!(
                "Bearer {}",
                hs256(
                    SECRET.as_bytes(),
                    &claims(&sub, "authenticated", -3_600, None)
                )
            ),
        ),
        (
            "not yet valid",
            format!(
                "Bearer {}",
                hs256(
                    SECRET.as_bytes(),
                    &claims(&sub, "authenticated", 7_200, Some(3_600))
                )
            ),
        ),
        (
            "wrong signature",
            format!(
                "Bearer {}",
                hs256(
                    b"some-other-secret-some-other-secret!!",
                    &claims(&sub, "authenticated", 300, None)
                )
            ),
        ),
        (
            "unknown kid",
            format!(
                "Bearer {}",
                rs256(&claims(&sub, "authenticated", 300, None), "nope")
            ),
        ),
        (
            "sub not a uuid",
            format!(
                "Bearer {}",
                hs256(
                    SECRET.as_bytes(),
                    &claims("bob", "authenticated", 300, None)
                )
            ),
        ),
        ("basic auth", "Basic dXNlcjpwYXNz".into()),
    ];
    let missing = submit_with(&app, None).await;
    assert_problem(&missing, 401, "unauthorized");
    for (name, header) in &cases {
        let r = submit_with(&app, Some(header)).await;
        assert_eq!(r.status, 401, "{name}: {:?}", r.body);
        assert_problem(&r, 401, "unauthorized");
        assert!(
            !r.body
                .to_string()
                .contains(header.trim_start_matches("Bearer ")),
            "{name} echoed"
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let logs = logs();
    for (name, header) in &cases {
        let token = header.trim_start_matches("Bearer ");
        assert!(!logs.contains(token), "{name}: token reached the log");
    }
    assert!(!logs.contains(&good_rs) && !logs.contains(SECRET));
    assert_eq!(app.count_events("JobSubmitted").await, 1);
}

#[tokio::test]
async fn hs256_is_refused_when_only_a_jwks_is_configured() {
    let jwks_url = serve_jwks(JWKS).await;
    let app = spawn_app(&[
        ("RUNLEDGER_JWKS_URL", &jwks_url),
        ("RUNLEDGER_JWT_SECRET", ""),
    ])
    .await;
    let t = token(new_user(), Role::Customer);
    assert_problem(
        &submit_with(&app, Some(&format!("Bearer {t}"))).await,
        401,
        "unauthorized",
    );
}

#[tokio::test]
async fn worker_endpoints_need_a_worker_and_customers_cannot_report() {
    let app = spawn_app(&[]).await;
    let user = new_user();
    let customer = token(user, Role::Customer);
    let job = app.submit(&customer).await.body["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post(
            &format!("/v1/worker/jobs/{job}/complete"),
            Some(&customer),
            &json!({"attempt": 1, "result": {}}),
        )
        .await;
    assert_problem(&r, 403, "forbidden");
    let r = app
        .post(
            &format!("/v1/worker/jobs/{job}/start"),
            None,
            &json!({"attempt": 1, "worker_id": "w"}),
        )
        .await;
    assert_problem(&r, 401, "unauthorized");
    let worker = worker_token();
    let r = app
        .post(
            "/v1/jobs",
            Some(&worker),
            &json!({"task_type": "noop", "payload": {}}),
        )
        .await;
    assert_problem(&r, 403, "forbidden");
}

/// Keys rotate: a token signed by a key the cached JWKS does not hold triggers a refetch
/// (at most once per interval), after which it validates; a forged kid stays refused.
#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks() {
    use std::sync::{Arc, Mutex};
    let served = Arc::new(Mutex::new(JWKS.to_owned()));
    let s = served.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let s = s.clone();
            async move { s.lock().unwrap().clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let auth = platform::auth::Authenticator::new(None, Some(&url), "authenticated")
        .with_jwks_refresh_interval(Duration::from_millis(200));
    let sub = new_user().to_string();
    let old = rs256(&claims(&sub, "authenticated", 300, None), "test-rsa");
    assert!(auth.validate(&old).await.is_ok());
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("test-rsa-2".into());
    let rotated_key = EncodingKey::from_rsa_pem(include_bytes!("test-only-rsa-2.pem")).unwrap();
    let new = encode(&h, &claims(&sub, "authenticated", 300, None), &rotated_key).unwrap();
    assert_eq!(
        auth.validate(&new).await,
        Err(platform::auth::AuthError::UnknownKey)
    );
    *served.lock().unwrap() = include_str!("jwks-rotated.json").to_owned();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        auth.validate(&new).await.is_ok(),
        "the rotated key is fetched"
    );
    assert!(auth.validate(&old).await.is_ok());
    let forged = rs256(&claims(&sub, "authenticated", 300, None), "test-rsa-2");
    assert_eq!(
        auth.validate(&forged).await,
        Err(platform::auth::AuthError::Invalid)
    );
}

async fn worker_start(app: &TestApp, token: &str) -> Reply {
    let job = app.submit(&token_for_customer()).await.body["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(
        &format!("/v1/worker/jobs/{job}/start"),
        Some(token),
        &json!({"attempt": 1, "worker_id": "w-1"}),
    )
    .await
}

fn token_for_customer() -> String {
    token(new_user(), Role::Customer)
}

/// With `RUNLEDGER_JWT_ISSUER`, a token without that `iss` is refused.
#[tokio::test]
async fn the_issuer_is_checked_when_configured() {
    let app = spawn_app(&[("RUNLEDGER_JWT_ISSUER", "https://auth.example/v1")]).await;
    let sub = new_user().to_string();
    let with_iss = |iss: Option<&str>| {
        let mut c = claims(&sub, "authenticated", 300, None);
        if let Some(i) = iss {
            c["iss"] = json!(i);
        }
        format!("Bearer {}", hs256(SECRET.as_bytes(), &c))
    };
    for (name, iss) in [
        ("no iss", None),
        ("another iss", Some("https://evil.example/v1")),
    ] {
        let r = submit_with(&app, Some(&with_iss(iss))).await;
        assert_eq!(r.status, 401, "{name}: {:?}", r.body);
    }
    let r = submit_with(&app, Some(&with_iss(Some("https://auth.example/v1")))).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
}

/// `aud` may be an array (RFC 7519 4.1.3) and `iat` may be absent.
#[tokio::test]
async fn aud_as_an_array_and_no_iat_are_accepted() {
    let app = spawn_app(&[]).await;
    let sub = new_user().to_string();
    let exp = jsonwebtoken::get_current_timestamp() + 300;
    let ok = hs256(
        SECRET.as_bytes(),
        &json!({"sub": sub, "aud": ["billing", "authenticated"], "exp": exp}),
    );
    let r = submit_with(&app, Some(&format!("Bearer {ok}"))).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let not_ours = hs256(
        SECRET.as_bytes(),
        &json!({"sub": sub, "aud": ["billing", "other"], "exp": exp}),
    );
    let r = submit_with(&app, Some(&format!("Bearer {not_ours}"))).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
}

/// With a service secret, the customers' issuer grants customers only: a worker token
/// signed with the customers' secret is refused, one signed with the service secret works.
#[tokio::test]
async fn service_roles_come_only_from_their_own_keys_when_configured() {
    const SERVICE: &str = "service-secret-service-secret-0123456789";
    let app = spawn_app(&[("RUNLEDGER_SERVICE_JWT_SECRET", SERVICE)]).await;
    let from_customers = token(new_user(), Role::Worker);
    let r = worker_start(&app, &from_customers).await;
    assert_problem(&r, 401, "unauthorized");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("may not grant a service role")
    );
    let service = platform::auth::mint(
        &platform::settings::Secret::new(SERVICE),
        "authenticated",
        new_user(),
        Role::Worker,
        Duration::from_secs(60),
    )
    .unwrap();
    let r = worker_start(&app, &service).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Customers are unaffected.
    assert_eq!(app.submit(&token_for_customer()).await.status, 202);
}

/// Keys expire as the JWKS answer's Cache-Control says: a key the provider removed stops
/// working once they do, with no unknown `kid` needed to trigger the refetch.
#[tokio::test]
async fn a_removed_key_stops_working_when_the_jwks_expires() {
    use std::sync::{Arc, Mutex};
    let served = Arc::new(Mutex::new(include_str!("jwks-rotated.json").to_owned()));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s, n) = (served.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (s, n) = (s.clone(), n.clone());
            async move {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    [("cache-control", "public, max-age=1")],
                    s.lock().unwrap().clone(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let auth = platform::auth::Authenticator::new(None, Some(&url), "authenticated")
        .with_jwks_refresh_interval(Duration::from_millis(100));
    let sub = new_user().to_string();
    let old = rs256(&claims(&sub, "authenticated", 300, None), "test-rsa");
    assert!(auth.validate(&old).await.is_ok());
    assert!(auth.validate(&old).await.is_ok());
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "cached"
    );
    *served.lock().unwrap() = include_str!("jwks-only-2.json").to_owned();
    assert!(auth.validate(&old).await.is_ok(), "still fresh");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        auth.validate(&old).await,
        Err(platform::auth::AuthError::UnknownKey)
    );
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
}
