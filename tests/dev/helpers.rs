use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// A `runledger dev` child process.
pub struct Dev {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub auditor: String,
    pub output: Arc<Mutex<Vec<String>>>,
}

/// A port nothing listens on (just now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runledger"));
    // Its own process group, so dropping it also ends the Chromium it launched.
    cmd.process_group(0);
    cmd.arg("dev")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUNLEDGER_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Dev {
    /// Starts `runledger dev` with `args` on a free port and waits for its banner.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(&std::env::temp_dir(), args, env)
    }

    /// As [`Dev::start`], in directory `cwd`.
    pub fn start_in(cwd: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        platform::install_crypto();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--addr", &addr]);
        let mut child = command(&all, env)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let o = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                o.lock().unwrap().push(line);
            }
        });
        // The log too, so tests can check what reached it; still shown as before.
        let o = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                o.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines = output.lock().unwrap().clone();
            let get = |k: &str| {
                lines
                    .iter()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_owned))
            };
            if let (Some(url), Some(token), Some(auditor)) =
                (get("URL"), get("TOKEN"), get("AUDITOR_TOKEN"))
            {
                return Self {
                    child,
                    url,
                    token,
                    auditor,
                    output,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("runledger dev exited with {status}: {lines:?}");
            }
            assert!(Instant::now() < deadline, "no banner: {lines:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C, and the exit status.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return s;
            }
            assert!(Instant::now() < deadline, "runledger dev did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn printed(&self, text: &str) -> bool {
        self.output.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // The whole group: a killed `runledger dev` would leave its browsers running.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn get(dev: &Dev, token: &str, path: &str) -> (u16, Value) {
    let res = client()
        .get(format!("{}{path}", dev.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

pub async fn submit(dev: &Dev, task_type: &str, payload: Value) -> (u16, Value) {
    let res = client()
        .post(format!("{}/v1/jobs", dev.url))
        .bearer_auth(&dev.token)
        .json(&json!({"task_type": task_type, "payload": payload}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Polls `f` until it holds or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The demo user's id, as the banner's token names it.
pub const DEMO_USER: &str = "00000000-0000-4000-8000-00000000d3e0";

pub fn month() -> String {
    chrono::Utc::now().format("%Y-%m").to_string()
}

/// A local HTTP server answering 200 `ok` to any request; its URL.
pub async fn ok_server() -> String {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

/// A token for a new customer, signed with the dev secret kept in `dir`.
pub fn new_customer(dir: &std::path::Path) -> String {
    let secret = std::fs::read_to_string(dir.join("jwt-secret")).unwrap();
    platform::auth::mint(
        &platform::settings::Secret::new(secret.trim()),
        "authenticated",
        domain::ids::UserId::from_uuid(uuid::Uuid::new_v4()),
        platform::auth::Role::Customer,
        Duration::from_secs(600),
    )
    .unwrap()
}

/// Waits up to `secs` for job `id` to end; its view.
pub async fn wait_final(dev: &Dev, token: &str, id: &str, secs: u64) -> Value {
    let path = format!("/v1/jobs/{id}");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let job = get(dev, token, &path).await.1;
        if matches!(job["status"].as_str(), Some("completed" | "failed")) {
            return job;
        }
        assert!(Instant::now() < deadline, "the job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits as `token`, then waits up to `secs` for the job to end; its view.
pub async fn run_job(dev: &Dev, token: &str, task_type: &str, payload: Value, secs: u64) -> Value {
    let res = client()
        .post(format!("{}/v1/jobs", dev.url))
        .bearer_auth(token)
        .json(&json!({"task_type": task_type, "payload": payload}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    wait_final(dev, token, body["job_id"].as_str().unwrap(), secs).await
}
