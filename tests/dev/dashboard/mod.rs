//! The dashboard in Debian's Chromium against `runledger dev`: signing in with the banner's
//! link, jobs submitted from the form and followed live, the usage meter, a stream cut by the
//! server side and resumed, users kept apart, problems shown, the job page, the auditor view,
//! a phone-sized screen, and the first page of 10,000 jobs.

mod proxy;
mod ui;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;
use proxy::Proxy;
use ui::{Ui, js, record_rows, rows, seen, text, until, until_completed_rows, until_live};

/// The banner's sign-in link for the demo customer.
fn signin_link(dev: &Dev) -> String {
    let lines = dev.output.lock().unwrap().clone();
    lines
        .iter()
        .find_map(|l| {
            let l = l.trim();
            (l.starts_with(&dev.url) && l.contains("/#access_token=")).then(|| l.to_owned())
        })
        .expect("the banner prints a dashboard link")
}

/// Fills the submit form and sends it with the keyboard (Enter in the task type select).
async fn submit_from_form(page: &chromiumoxide::Page, task_type: &str, payload: &str) {
    js(
        page,
        &format!(
            "(() => {{ const s = document.querySelector('#task-type'); s.value = {t};
               s.dispatchEvent(new Event('change'));
               const p = document.querySelector('#payload'); p.value = {p};
               p.dispatchEvent(new Event('input')); return true; }})()",
            t = serde_json::to_string(task_type).unwrap(),
            p = serde_json::to_string(payload).unwrap(),
        ),
    )
    .await;
    js(
        page,
        "document.querySelector('#submit-result').textContent = ''; true",
    )
    .await;
    page.find_element("#submit-form button[type=submit]")
        .await
        .unwrap()
        .focus()
        .await
        .unwrap()
        .press_key("Enter")
        .await
        .unwrap();
    until(
        page,
        15,
        "document.querySelector('#submit-result').textContent !== ''",
    )
    .await;
}

fn p99(mut v: Vec<i64>) -> i64 {
    v.sort_unstable();
    v[(v.len() * 99).div_ceil(100).saturating_sub(1)]
}

/// DOM time minus the time the change passed the proxy, for every change the page showed.
fn latencies(changes: &[(String, String, i64)], shown: &[(String, String, i64)]) -> Vec<i64> {
    changes
        .iter()
        .filter_map(|(id, status, at)| {
            shown
                .iter()
                .find(|(i, s, _)| i == id && s == status)
                .map(|(_, _, t)| t - at)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_in_from_the_banner_submits_from_the_form_and_follows_jobs_live() {
    let dev = Dev::start(&["--in-memory"], &[]);
    let proxy = Proxy::start(&dev.url).await;
    let ui = Ui::launch("follows_jobs_live").await;
    let link = signin_link(&dev).replace(&dev.url, &proxy.url);
    let page = ui.open(&link).await;
    ui.check(async {
        until_live(&page).await;
        // The token left the address bar for this tab's session storage.
        assert_eq!(js(&page, "location.hash").await, "");
        assert_eq!(js(&page, "sessionStorage.getItem('runledger.token')").await, dev.token.as_str());
        until(&page, 10, "document.querySelector('#usage-meter').dataset.consumed === '0'").await;
        until(&page, 10, "document.querySelectorAll('#task-type option').length >= 2").await;
        js(&page, "window.loadMark = 'same page'; true").await;
        record_rows(&page).await;

        submit_from_form(&page, "noop", "{}").await;
        assert!(text(&page, "#submit-result").await.starts_with("Submitted"));
        submit_from_form(&page, "sleep", r#"{"ms": 700}"#).await;
        assert!(text(&page, "#submit-result").await.starts_with("Submitted"));
        until(
            &page,
            20,
            "[...document.querySelectorAll('#jobs tbody tr')].filter(r => r.dataset.status === 'completed').length === 2",
        )
        .await;
        // Without a reload: the same document saw both jobs through.
        assert_eq!(js(&page, "window.loadMark").await, "same page");
        let shown = seen(&page).await;
        let sleep_id = rows(&page).await[0].0.clone();
        let statuses: Vec<&str> = shown.iter().filter(|(i, _, _)| *i == sleep_id).map(|(_, s, _)| s.as_str()).collect();
        assert!(statuses.contains(&"running") && statuses.ends_with(&["completed"]), "{statuses:?}");
        assert_eq!(text(&page, "#jobs tbody tr:first-child td:nth-child(2)").await, "sleep");
        // The meter counts exactly the two completed jobs.
        until(&page, 10, "document.querySelector('#usage-meter').dataset.consumed === '2'").await;
        until(&page, 10, "document.querySelector('#usage-meter').dataset.reserved === '0'").await;
        let (_, usage) = get(&dev, &dev.token, "/v1/usage").await;
        assert_eq!(usage["consumed"], 2, "{usage}");
        let lat = latencies(&proxy.changes(), &shown);
        assert!(lat.len() >= 3, "{lat:?}");
        eprintln!("live update, SSE event at the proxy to the DOM: {lat:?} ms");
    })
    .await;
    ui.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_the_server_side_resumes_without_a_missing_or_doubled_row() {
    let dev = Dev::start(&["--in-memory"], &[]);
    let proxy = Proxy::start(&dev.url).await;
    let ui = Ui::launch("stream_cut").await;
    let page = ui
        .open(&signin_link(&dev).replace(&dev.url, &proxy.url))
        .await;
    ui.check(async {
        until_live(&page).await;
        for _ in 0..3 {
            assert_eq!(submit(&dev, "noop", json!({})).await.0, 202);
        }
        until_completed_rows(&page, 15, 3).await;
        js(&page, "window.loadMark = 'same page'; true").await;
        // The server side goes away; jobs change while the page is cut off.
        proxy.cut();
        let mut ids = vec![];
        for _ in 0..5 {
            let (status, body) = submit(&dev, "sleep", json!({"ms": 300})).await;
            assert_eq!(status, 202);
            ids.push(body["job_id"].as_str().unwrap().to_owned());
        }
        until_completed_rows(&page, 20, 8).await;
        assert_eq!(js(&page, "window.loadMark").await, "same page");
        let streams = proxy.streams();
        assert!(
            streams.len() >= 2 && streams[1..].iter().all(Option::is_some),
            "{streams:?}"
        );
        // Exactly the user's jobs, once each, newest first, as the API lists them.
        let (_, list) = get(&dev, &dev.token, "/v1/jobs?limit=100").await;
        let api: Vec<String> = list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect();
        let shown: Vec<String> = rows(&page).await.into_iter().map(|(id, _)| id).collect();
        assert_eq!(shown, api);
        for id in &ids {
            assert!(shown.contains(id));
        }
    })
    .await;
    ui.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_users_page_never_shows_the_first_users_jobs() {
    let dir = tempdir();
    let data = dir.join("data");
    let dev = Dev::start(&["--data-dir", data.to_str().unwrap()], &[]);
    let other = new_customer(&data);
    let ui = Ui::launch("two_users").await;
    let mine = ui.open(&signin_link(&dev)).await;
    let theirs = ui.open(&format!("{}/#access_token={other}", dev.url)).await;
    ui.check(async {
        for page in [&mine, &theirs] {
            until_live(page).await;
        }
        submit_from_form(&theirs, "noop", "{}").await;
        for _ in 0..3 {
            assert_eq!(submit(&dev, "noop", json!({})).await.0, 202);
        }
        until_completed_rows(&mine, 15, 3).await;
        until_completed_rows(&theirs, 15, 1).await;
        // A little longer for anything that should not come.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, list) = get(&dev, &other, "/v1/jobs").await;
        let their_id = list["jobs"][0]["id"].as_str().unwrap().to_owned();
        assert_eq!(
            rows(&theirs).await,
            vec![(their_id.clone(), "completed".to_owned())]
        );
        assert_eq!(rows(&mine).await.len(), 3);
        assert!(rows(&mine).await.iter().all(|(id, _)| *id != their_id));
        // Their job's page, opened with my token, is a not-found problem.
        let page = ui
            .open(&format!(
                "{}/jobs/{their_id}#access_token={}",
                dev.url, dev.token
            ))
            .await;
        until(&page, 10, "!document.querySelector('#job-error').hidden").await;
        assert!(
            text(&page, "#job-error").await.contains("Not found"),
            "{}",
            text(&page, "#job-error").await
        );
    })
    .await;
    ui.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_show_their_problem_and_the_plan_limit_shows_402() {
    let dev = Dev::start(&["--in-memory"], &[("RUNLEDGER_FREE_LIMIT", "1")]);
    let ui = Ui::launch("problems").await;
    let page = ui.open(&signin_link(&dev)).await;
    ui.check(async {
        until(
            &page,
            15,
            "document.querySelectorAll('#task-type option').length >= 2",
        )
        .await;
        // Not JSON: caught in the page, nothing sent.
        submit_from_form(&page, "noop", "{oops").await;
        assert!(
            text(&page, "#submit-result")
                .await
                .contains("not valid JSON")
        );
        assert_eq!(
            js(
                &page,
                "document.querySelector('#payload').getAttribute('aria-invalid')"
            )
            .await,
            "true"
        );
        // JSON the API refuses: its problem's detail.
        submit_from_form(&page, "sleep", r#"{"ms": "soon"}"#).await;
        let shown = text(&page, "#submit-result").await;
        let (status, body) = submit(&dev, "sleep", json!({"ms": "soon"})).await;
        assert_eq!(status, 400);
        assert!(
            shown.contains(body["detail"].as_str().unwrap()),
            "{shown} vs {body}"
        );
        let (_, list) = get(&dev, &dev.token, "/v1/jobs").await;
        assert_eq!(list["jobs"].as_array().unwrap().len(), 0);
        // The one unit of the plan, then the limit.
        submit_from_form(&page, "noop", "{}").await;
        assert!(text(&page, "#submit-result").await.starts_with("Submitted"));
        submit_from_form(&page, "noop", "{}").await;
        let shown = text(&page, "#submit-result").await;
        assert!(shown.contains("Plan limit reached."), "{shown}");
        // Billing is off: no upgrade button.
        assert_eq!(
            js(
                &page,
                "document.querySelectorAll('#submit-result button').length"
            )
            .await,
            0
        );
    })
    .await;
    ui.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_with_billing_on_the_upgrade_button_starts_checkout() {
    let fake = platform::stripe_fake::FakeStripe::start("runledger_jobs").await;
    let base = fake.base_url();
    let dev = Dev::start(
        &["--in-memory"],
        &[
            ("RUNLEDGER_FREE_LIMIT", "1"),
            ("STRIPE_SECRET_KEY", fake.secret_key()),
            ("STRIPE_WEBHOOK_SECRET", "whsec_dev_test"),
            ("STRIPE_PRICE_PRO", "price_pro"),
            ("STRIPE_API_BASE", &base),
        ],
    );
    let ui = Ui::launch("upgrade").await;
    let page = ui.open(&signin_link(&dev)).await;
    ui.check(async {
        use chromiumoxide::cdp::browser_protocol::fetch::{
            EnableParams, EventRequestPaused, RequestPattern,
        };
        until(
            &page,
            15,
            "document.querySelectorAll('#task-type option').length >= 2",
        )
        .await;
        until(
            &page,
            15,
            "!document.querySelector('.usage-summary .upgrade').hidden",
        )
        .await;
        submit_from_form(&page, "noop", "{}").await;
        assert!(text(&page, "#submit-result").await.starts_with("Submitted"));
        submit_from_form(&page, "noop", "{}").await;
        assert!(
            text(&page, "#submit-result")
                .await
                .contains("Plan limit reached.")
        );
        assert_eq!(text(&page, "#submit-result button").await, "Upgrade to PRO");
        // Stripe's checkout page is outside this machine: the browser's request for it is
        // caught before it leaves.
        let mut paused = page.event_listener::<EventRequestPaused>().await.unwrap();
        let pattern = RequestPattern::builder()
            .url_pattern("https://checkout.stripe.com/*")
            .build();
        page.execute(EnableParams::builder().pattern(pattern).build())
            .await
            .unwrap();
        js(
            &page,
            "document.querySelector('#submit-result button').click(); true",
        )
        .await;
        let req = tokio::time::timeout(Duration::from_secs(15), paused.next())
            .await
            .unwrap()
            .unwrap();
        let session = &fake.checkout_sessions()[0];
        assert_eq!(req.request.url, session.url);
        assert_eq!(fake.customers().len(), 1);
    })
    .await;
    ui.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_page_shows_its_screenshot_and_cancels_a_running_job() {
    let site = ok_server().await;
    let dev = Dev::start(
        &["--in-memory"],
        &[("RUNLEDGER_HTTP_ALLOW", "127.0.0.1/32")],
    );
    let ui = Ui::launch("job_page").await;
    let page = ui.open(&signin_link(&dev)).await;
    ui.check(async {
        let shot = run_job(
            &dev,
            &dev.token,
            "browser.screenshot",
            json!({"url": site}),
            60,
        )
        .await;
        assert_eq!(shot["status"], "completed", "{shot}");
        let id = shot["id"].as_str().unwrap();
        js(&page, &format!("location.assign('/jobs/{id}'); true")).await;
        until(
            &page,
            15,
            "document.querySelector('img.artifact')?.naturalWidth > 0",
        )
        .await;
        assert!(text(&page, "#job-outcome").await.contains("screenshot.png"));
        assert!(
            js(&page, "document.querySelector('#cancel-box').hidden")
                .await
                .as_bool()
                .unwrap()
        );

        let (_, body) = submit(&dev, "sleep", json!({"ms": 60_000})).await;
        let id = body["job_id"].as_str().unwrap().to_owned();
        js(&page, &format!("location.assign('/jobs/{id}'); true")).await;
        until(
            &page,
            15,
            "document.querySelector('#job-fields').dataset.status === 'running'",
        )
        .await;
        js(&page, "document.querySelector('#cancel').click(); true").await;
        until(
            &page,
            15,
            "document.querySelector('#job-fields').dataset.status === 'canceled'",
        )
        .await;
        assert!(
            js(&page, "document.querySelector('#cancel-box').hidden")
                .await
                .as_bool()
                .unwrap()
        );
        let (_, job) = get(&dev, &dev.token, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "canceled");
    })
    .await;
    ui.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_sees_each_ledgers_chain_verdict_and_the_projection() {
    let dev = Dev::start(&["--in-memory"], &[]);
    for _ in 0..2 {
        assert_eq!(
            run_job(&dev, &dev.token, "noop", json!({}), 20).await["status"],
            "completed"
        );
    }
    let ui = Ui::launch("auditor").await;
    let page = ui
        .open(&format!("{}/audit#access_token={}", dev.url, dev.auditor))
        .await;
    ui.check(async {
        // The auditor's nav is the audit; customer pages send them here.
        assert_eq!(js(&page, "document.querySelector('nav [data-role=customer]').hidden").await, true);
        js(&page, &format!("document.querySelector('#audit-user').value = '{DEMO_USER}'; document.querySelector('#audit-form').requestSubmit(); true")).await;
        until(&page, 15, "document.querySelector('.ledger') !== null").await;
        let ledger = text(&page, ".ledger").await;
        assert!(ledger.contains("chain verified") && ledger.contains("matches the projection"), "{ledger}");
        assert!(ledger.contains("Consumed2"), "{ledger}");
        // A customer's token is refused there, with the problem shown.
        let other = ui.open(&format!("{}/audit#access_token={}", dev.url, dev.token)).await;
        js(&other, &format!("document.querySelector('#audit-user').value = '{DEMO_USER}'; document.querySelector('#audit-form').requestSubmit(); true")).await;
        until(&other, 15, "!document.querySelector('#audit-error').hidden").await;
        assert!(text(&other, "#audit-error").await.contains("auditor"));
    })
    .await;
    ui.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_every_page_fits_every_control_is_labelled_and_nothing_leaves_the_origin() {
    use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
    let dev = Dev::start(&["--in-memory"], &[]);
    assert_eq!(
        run_job(&dev, &dev.token, "noop", json!({}), 20).await["status"],
        "completed"
    );
    let ui = Ui::launch("phone").await;
    let page = ui.open(&format!("{}/signin", dev.url)).await;
    ui.check(async {
        page.execute(SetDeviceMetricsOverrideParams::new(375, 740, 2.0, true)).await.unwrap();
        // Signing in by pasting the token.
        page.find_element("#token-input").await.unwrap().click().await.unwrap().type_str(&dev.token).await.unwrap();
        js(&page, "document.querySelector('#signin-form').requestSubmit(); true").await;
        until(&page, 15, "location.pathname === '/' && document.querySelector('#live')?.textContent === 'live'").await;
        for path in ["/", "/usage", "/signin"] {
            js(&page, &format!("location.assign('{path}'); true")).await;
            until(&page, 15, &format!("location.pathname === '{path}' && document.readyState === 'complete'")).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let overflow = js(&page, "document.documentElement.scrollWidth - window.innerWidth").await;
            assert!(overflow.as_i64().unwrap() <= 0, "{path} overflows by {overflow}px");
            let unlabelled = js(
                &page,
                "[...document.querySelectorAll('input, select, textarea')].filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.id)",
            )
            .await;
            assert_eq!(unlabelled, json!([]), "{path}");
            let foreign = js(
                &page,
                "performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin))",
            )
            .await;
            assert_eq!(foreign, json!([]), "{path}");
        }
        js(&page, "location.assign('/usage'); true").await;
        until(&page, 15, "document.querySelectorAll('#history tbody tr').length === 1").await;
        assert_eq!(text(&page, "#history tbody td:nth-child(3)").await, "1");
        assert_eq!(js(&page, "document.querySelectorAll('#history-chart rect').length").await, 1);
    })
    .await;
    let res = client().get(format!("{}/", dev.url)).send().await.unwrap();
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    ui.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_page_of_ten_thousand_jobs_and_live_updates_are_fast() {
    // FREE's cap of 2 jobs at once would leave most of the burst queued behind the live
    // ones this test times (one user submits faster than two slots drain): the cap has its
    // own tests (tests/dev/fair.rs); this one is about the page and the live stream.
    let dev = Dev::start(
        &["--in-memory"],
        &[
            ("RUNLEDGER_FREE_LIMIT", "20000"),
            ("RUNLEDGER_FREE_CONCURRENCY", "unlimited"),
        ],
    );
    let proxy = Proxy::start(&dev.url).await;
    // 10,000 jobs, 32 submissions in flight.
    let client = client();
    let url = format!("{}/v1/jobs", dev.url);
    futures::stream::iter(0..10_000)
        .for_each_concurrent(32, |_| {
            let req = client
                .post(&url)
                .bearer_auth(&dev.token)
                .json(&json!({"task_type": "noop", "payload": {}}));
            async move { assert_eq!(req.send().await.unwrap().status(), 202) }
        })
        .await;
    let ui = Ui::launch("ten_thousand").await;
    let page = ui
        .open(&signin_link(&dev).replace(&dev.url, &proxy.url))
        .await;
    ui.check(async {
        until(&page, 30, "document.querySelectorAll('#jobs tbody tr').length === 50").await;
        // Server time: from the request sent to the first byte of the answer.
        let timing = js(
            &page,
            "(() => { const t = n => performance.getEntriesByType(n === 'nav' ? 'navigation' : 'resource')
                 .filter(e => n === 'nav' || e.name.includes(n)).map(e => e.responseStart - e.requestStart);
               return { page: t('nav'), list: t('/v1/jobs?') }; })()",
        )
        .await;
        eprintln!("first page of 10,000 jobs, server time (ms): {timing}");
        let list = timing["list"][0].as_f64().unwrap();
        let shell = timing["page"][0].as_f64().unwrap();
        assert!(list < 2_000.0 && shell < 2_000.0, "{timing}");
        record_rows(&page).await;
        for _ in 0..100 {
            assert_eq!(submit(&dev, "noop", json!({})).await.0, 202);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        until(&page, 30, "document.querySelectorAll('#jobs tbody tr[data-status=completed]').length >= 150").await;
        let lat = latencies(&proxy.changes(), &seen(&page).await);
        assert!(lat.len() >= 100, "{}", lat.len());
        eprintln!(
            "live update, SSE event at the proxy to the DOM, {} changes: p50 {} ms, p99 {} ms, max {} ms",
            lat.len(),
            { let mut l = lat.clone(); l.sort_unstable(); l[l.len() / 2] },
            p99(lat.clone()),
            lat.iter().max().unwrap()
        );
    })
    .await;
    ui.close().await;
}

fn tempdir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("runledger-dash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
