//! Property-based fuzzing of the whole HTTP surface from `/openapi.json` with Schemathesis,
//! once per role's token: every check it has (no 5xx, status codes, content types, response
//! and SSE schemas, schema-valid bodies accepted and schema-violating ones refused, auth).
//! A short form runs with the suite; `RUNLEDGER_FUZZ_EXAMPLES=100` is the long form.

use std::{path::PathBuf, process::Command, time::Duration};

use domain::ids::UserId;
use platform::{
    auth::{Role, mint},
    settings::Secret,
    stripe_fake::FakeStripe,
};

use crate::helpers::*;

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret-0123";

/// The `st` that `scripts/services` installs.
fn schemathesis() -> Option<PathBuf> {
    let venv = std::env::var_os("RUNLEDGER_SCHEMATHESIS_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("runledger/schemathesis"))
        })?;
    let st = venv.join("bin/st");
    st.exists().then_some(st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_fuzzing_finds_nothing_with_any_role() {
    let Some(st) = schemathesis() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must have schemathesis (scripts/services installs it)"
        );
        eprintln!("SKIPPED: schemathesis is not installed (run scripts/services)");
        return;
    };
    let examples = std::env::var("RUNLEDGER_FUZZ_EXAMPLES").unwrap_or_else(|_| "4".into());
    // Billing and digests on, so their routes answer as deployed (Stripe is a local fake).
    let stripe = FakeStripe::start("runledger_jobs").await;
    let base = stripe.base_url();
    let dev = Dev::start(
        &["--in-memory"],
        &[
            ("RUNLEDGER_JWT_SECRET", SECRET),
            ("RUNLEDGER_FREE_LIMIT", "1000000"),
            ("STRIPE_SECRET_KEY", stripe.secret_key()),
            ("STRIPE_WEBHOOK_SECRET", "whsec_fuzz"),
            ("STRIPE_PRICE_PRO", "price_pro"),
            ("STRIPE_PRICE_ENTERPRISE", "price_ent"),
            ("STRIPE_API_BASE", &base),
            (
                "RUNLEDGER_AUDIT_SIGNING_KEY",
                "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
            ),
        ],
    );
    let worker = mint(
        &Secret::new(SECRET),
        "authenticated",
        UserId::from_uuid(uuid::Uuid::new_v4()),
        Role::Worker,
        Duration::from_secs(3_600),
    )
    .unwrap();
    let hooks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/schemathesis.toml");
    let mut failed = Vec::new();
    for (role, token) in [
        ("customer", dev.token.as_str()),
        ("auditor", dev.auditor.as_str()),
        ("worker", worker.as_str()),
    ] {
        let out = tokio::task::block_in_place(|| {
            Command::new(&st)
                .args(["--config-file", config])
                .args(["run", &format!("{}/openapi.json", dev.url)])
                .args(["--header", &format!("Authorization: Bearer {token}")])
                .args(["--checks", "all", "--max-examples", &examples])
                // SSE streams never end: each is read for the timeout, then validated. One
                // worker: with two, Hypothesis's AST cache races on CPython 3.11 ("AST
                // constructor recursion depth mismatch"), a tool error, not a finding.
                .args(["--workers", "1", "--request-timeout", "3"])
                .args(["--no-color", "--output-truncate", "true"])
                .current_dir(std::env::temp_dir())
                .env("PYTHONPATH", hooks)
                .env("SCHEMATHESIS_HOOKS", "hooks")
                .output()
        })
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("generated") || l.contains("Seed:"))
            .collect();
        println!("{role}: {}", summary.join(" "));
        if !out.status.success() {
            failed.push(format!(
                "== {role}\n{}\n{}",
                text.lines()
                    .map(|l| l.chars().take(400).collect::<String>())
                    .collect::<Vec<_>>()
                    .join("\n"),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
