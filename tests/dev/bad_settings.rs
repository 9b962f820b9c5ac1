use std::{
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::*;

/// Runs `runledger dev` to its exit (it must exit by itself).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(40);
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("runledger dev {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().unwrap()
}

/// Exits non-zero with exactly one line on stderr, containing `expect`, no panic, no secret.
fn refused(out: &Output, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited 0: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("runledger: "), "{err}");
    assert!(lines[0].contains(expect), "wanted `{expect}` in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("hunter2"),
        "{err}"
    );
}

fn addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn a_data_dir_that_cannot_be_created_is_refused() {
    let file = std::env::temp_dir().join(format!("runledger-file-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, "not a directory").unwrap();
    let dir = file.join("data");
    let a = addr();
    let out = run(&["--data-dir", dir.to_str().unwrap(), "--addr", &a], &[]);
    refused(&out, "cannot use data directory");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_data_dir_in_use_by_another_dev_is_refused() {
    let dir = std::env::temp_dir().join(format!("runledger-dev-{}", uuid::Uuid::new_v4()));
    let d = dir.to_str().unwrap().to_owned();
    let first = Dev::start(&["--data-dir", &d], &[]);
    let a = addr();
    let out = run(&["--data-dir", &d, "--addr", &a], &[]);
    refused(&out, "another runledger dev is using it");
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_port_in_use_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = taken.local_addr().unwrap().to_string();
    let out = run(&["--in-memory", "--addr", &a], &[]);
    refused(&out, &format!("cannot listen on {a}"));
}

#[test]
fn malformed_urls_are_refused_by_name() {
    for (var, value) in [
        ("DATABASE_URL", "postgres://u:hunter2@[nope/db"),
        ("DATABASE_URL", "mysql://u:hunter2@localhost/db"),
        ("NATS_URL", "nats://u:hunter2@[nope"),
        ("REDIS_URL", "redis://u:hunter2@[nope"),
    ] {
        let a = addr();
        let out = run(&["--in-memory", "--addr", &a], &[(var, value)]);
        refused(&out, var);
    }
}

#[test]
fn an_unknown_flag_is_refused() {
    let out = run(&["--no-such-flag"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dev_with_its_own_queue_on_one_database_is_refused() {
    let db = platform::testing::TestDb::create().await;
    let first = Dev::start(&["--in-memory"], &[("DATABASE_URL", &db.url)]);
    let a = addr();
    let out = run(&["--in-memory", "--addr", &a], &[("DATABASE_URL", &db.url)]);
    refused(&out, "set REDIS_URL to share one queue");
    drop(first);
}

#[test]
fn a_data_dir_whose_database_is_not_sqlite_is_refused() {
    let dir = std::env::temp_dir().join(format!("runledger-dev-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("events.db"), vec![0x42u8; 8192]).unwrap();
    let a = addr();
    let out = run(&["--data-dir", dir.to_str().unwrap(), "--addr", &a], &[]);
    refused(&out, "events.db");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreachable_services_are_refused_by_name() {
    for (var, value, expect) in [
        (
            "DATABASE_URL",
            "postgres://u:hunter2@127.0.0.1:1/db",
            "cannot connect to Postgres: Connection refused",
        ),
        ("NATS_URL", "nats://u:hunter2@127.0.0.1:1", "NATS_URL"),
        ("REDIS_URL", "redis://u:hunter2@127.0.0.1:1", "REDIS_URL"),
    ] {
        let a = addr();
        let out = run(&["--in-memory", "--addr", &a], &[(var, value)]);
        refused(&out, expect);
    }
}
