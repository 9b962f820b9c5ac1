use std::process::Command;

use crate::helpers::*;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The ```sh block after `marker`.
fn block_after(text: &str, marker: &str) -> String {
    let at = text.find(marker).expect("marker in README");
    let rest = &text[at..];
    let start = rest.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let len = rest[start..].find("```").expect("the block's end");
    rest[start..start + len].to_owned()
}

#[test]
fn the_readme_starts_with_the_two_commands() {
    let first = block_after(&readme(), "# runledger");
    let lines: Vec<&str> = first.lines().collect();
    assert!(
        lines[0].starts_with("cargo run --release -- dev "),
        "{first}"
    );
    assert!(lines[1].starts_with("scripts/test "), "{first}");
    assert_eq!(lines.len(), 2, "{first}");
}

/// The README's tour, run as written against `runledger dev` started with its defaults in a
/// fresh directory (so `.runledger/` is where the README says).
#[test]
fn the_readme_tour_runs_as_written() {
    let tour = block_after(&readme(), "<!-- tour");
    let dir = std::env::temp_dir().join(format!("runledger-readme-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev = Dev::start_in(&dir, &[], &[]);
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &tour])
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for expected in [
        r#""status":"queued""#,
        "event: job",
        r#""status":"completed""#,
        r#""consumed":1"#,
        r#""chain_verified":true"#,
        r#""matches_projection":true"#,
    ] {
        assert!(stdout.contains(expected), "no {expected} in:\n{stdout}");
    }
    // The env file holds tokens: its owner's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["env", "jwt-secret"] {
            let mode = std::fs::metadata(dir.join(".runledger").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
        }
    }
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}
