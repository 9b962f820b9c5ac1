//! The `runledger` binary's own commands, run as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod billing;

use std::process::{Command, Output};

const SECRET: &str = "cli-test-secret-0123456789abcdef0123";

fn runledger(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runledger"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn token_mint_issues_a_token_the_api_accepts_with_its_role() {
    let sub = "4f1c2d3e-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
    let out = runledger(
        &[
            "token", "mint", "--sub", sub, "--role", "worker", "--ttl", "1h",
        ],
        &[("RUNLEDGER_JWT_SECRET", SECRET)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = platform::auth::Authenticator::new(
        Some(&platform::settings::Secret::new(SECRET)),
        None,
        "authenticated",
    );
    let p = auth.validate(token.trim()).await.unwrap();
    assert_eq!(p.user_id.to_string(), sub);
    assert_eq!(p.role, platform::auth::Role::Worker);
}

#[test]
fn token_mint_refuses_bad_input_with_one_clear_line() {
    let out = runledger(
        &["token", "mint", "--sub", "bob"],
        &[("RUNLEDGER_JWT_SECRET", SECRET)],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--sub must be a UUID"),
        "{}",
        stderr(&out)
    );
    let out = runledger(
        &[
            "token",
            "mint",
            "--sub",
            "4f1c2d3e-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("RUNLEDGER_JWT_SECRET"),
        "{}",
        stderr(&out)
    );
    let out = runledger(
        &[
            "token",
            "mint",
            "--sub",
            "4f1c2d3e-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
            "--role",
            "root",
        ],
        &[("RUNLEDGER_JWT_SECRET", SECRET)],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown role"), "{}", stderr(&out));
}

#[test]
fn roles_refuse_bad_settings_with_a_clear_line_and_no_secret() {
    let out = runledger(
        &["command-api"],
        &[
            ("DATABASE_URL", "mysql://admin:hunter2@db/x"),
            ("RUNLEDGER_JWT_SECRET", SECRET),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = runledger(&["read-api"], &[("RUNLEDGER_FREE_LIMIT", "lots")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("RUNLEDGER_FREE_LIMIT"),
        "{}",
        stderr(&out)
    );
    let out = runledger(&["worker"], &[("REDIS_URL", "redis://127.0.0.1:1")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("RUNLEDGER_COMMAND_URL"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn checked_in_schemas_pass_the_check_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_runledger"))
        .args([
            "schemas",
            "check",
            "--dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
