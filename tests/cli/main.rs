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

#[tokio::test]
async fn roles_refuse_an_unmigrated_database_until_it_is_migrated() {
    let db = platform::testing::TestDb::create_empty().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("RUNLEDGER_JWT_SECRET", SECRET),
        ("RUNLEDGER_ADDR", port.as_str()),
        ("NATS_URL", "nats://127.0.0.1:1"),
        ("REDIS_URL", "redis://127.0.0.1:1"),
    ];
    for role in [
        "command-api",
        "read-api",
        "projections",
        "relay",
        "dispatcher",
    ] {
        let out = runledger(&[role], &env);
        assert_eq!(out.status.code(), Some(1), "{role}");
        assert!(
            stderr(&out).contains("run `runledger migrate` first"),
            "{role}: {}",
            stderr(&out)
        );
    }
    let pending = platform::db::pending(&db.pool).await.unwrap();
    assert!(pending > 0);
    // --migrate (a small install): the role applies them itself, then goes on (here it stops
    // at the unreachable Redis, with the schema in place).
    let out = runledger(&["dispatcher", "--migrate"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Redis"), "{}", stderr(&out));
    assert_eq!(platform::db::pending(&db.pool).await.unwrap(), 0);
    let out = runledger(&["migrate"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    // Migrated: the command API starts and answers.
    let mut child = Command::new(env!("CARGO_BIN_EXE_runledger"))
        .arg("command-api")
        .env_clear()
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{port}/readyz");
    let mut ready = false;
    for _ in 0..100 {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready,
        "the command API did not start on the migrated database"
    );
}

#[test]
fn the_settings_command_prints_docs_settings_md() {
    let out = runledger(&["settings"], &[]);
    assert!(out.status.success());
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/settings.md")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), doc);
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
