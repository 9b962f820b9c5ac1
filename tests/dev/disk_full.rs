//! The embedded store on a full disk (a small tmpfs): a write that cannot be saved is
//! answered 507 and nothing answered 202 is lost; once space is back, writes resume without
//! a restart.

use std::{io::Write, path::Path, process::Command, time::Duration};

use serde_json::json;

use crate::helpers::*;

/// A tmpfs of `mb` MiB at a new directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(mb: u32) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("runledger-full-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `path` until the file system refuses.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_answered_and_recovers() {
    let Some(fs) = Tmpfs::mount(24) else {
        // Mounting needs root (CI runs as root); say so rather than pass silently.
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must be able to mount a tmpfs"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let data = fs.0.join("data");
    let d = data.to_str().unwrap().to_owned();
    let target = ok_server().await;
    let dev = Dev::start(
        &["--data-dir", &d],
        &[
            ("RUNLEDGER_FREE_LIMIT", "100000"),
            ("RUNLEDGER_HTTP_ALLOW", "127.0.0.1/32"),
        ],
    );
    let filler = fs.0.join("filler");
    fill(&filler);

    // Large events fill the disk sooner: a request body of 2 kB to a local server.
    let payload = json!({"url": target, "method": "POST", "body": "x".repeat(2_000)});
    let mut accepted = Vec::new();
    let mut full = 0;
    for _ in 0..3_000 {
        let (status, body) = submit(&dev, "http.request", payload.clone()).await;
        match status {
            202 => accepted.push(body["job_id"].as_str().unwrap().to_owned()),
            507 => {
                assert_eq!(body["type"], "urn:runledger:problem:storage-full", "{body}");
                full += 1;
                if full >= 20 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        full >= 20,
        "the disk never filled ({} accepted)",
        accepted.len()
    );

    // Space is back: writes resume in the same process.
    std::fs::remove_file(&filler).unwrap();
    let mut resumed = None;
    for _ in 0..100 {
        let (status, body) = submit(&dev, "noop", json!({})).await;
        if status == 202 {
            resumed = Some(body["job_id"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    accepted.push(resumed.expect("writes resume once space is freed"));

    // Every job answered 202 is there after a restart, and ends.
    assert!(dev.interrupt().success());
    let dev = Dev::start(
        &["--data-dir", &d],
        &[("RUNLEDGER_HTTP_ALLOW", "127.0.0.1/32")],
    );
    for job in &accepted {
        let path = format!("/v1/jobs/{job}");
        eventually(60, "each accepted job to complete", || async {
            get(&dev, &dev.token, &path).await.1["status"] == "completed"
        })
        .await;
    }
    eventually(30, "one unit per accepted job", || async {
        let u = get(&dev, &dev.token, "/v1/usage").await.1;
        u["consumed"] == accepted.len() && u["reserved"] == 0
    })
    .await;
    drop(dev);
}
