//! `deploy/`: the compose file and the Kubernetes manifests parse, start only subcommands
//! that exist and set only variables the settings table knows; the alert rules pass
//! `promtool`; the image builds where a Docker daemon runs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use platform::settings::table::known;
use serde_yaml_ng::Value;

/// What a deployment must run.
const ROLES: &[&str] = &[
    "migrate",
    "command-api",
    "read-api",
    "projections",
    "relay",
    "dispatcher",
    "worker",
];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every YAML document of `path`, merge keys (`<<: *anchor`) applied.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let mut v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => vec![],
    }
}

/// `runledger <args> --help` exits 0: the subcommand and its flags exist.
fn assert_command_exists(args: &[String], origin: &str) {
    let mut args: Vec<String> = args.to_vec();
    if args.first().is_some_and(|a| a == "runledger") {
        args.remove(0);
    }
    assert!(!args.is_empty(), "{origin}: no command");
    let out = Command::new(env!("CARGO_BIN_EXE_runledger"))
        .args(&args)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{origin}: `runledger {}` is not a command: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_known(var: &str, origin: &str) {
    assert!(
        known(var),
        "{origin}: {var} is not a setting (docs/settings.md lists them)"
    );
}

#[test]
fn the_compose_file_runs_real_commands_with_real_settings() {
    let docs = documents(&deploy().join("compose.yaml"));
    let services = docs[0]["services"].as_mapping().expect("services");
    let mut roles = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let ours = svc["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("runledger"))
            || svc["build"]["dockerfile"]
                .as_str()
                .is_some_and(|d| d.ends_with("deploy/Dockerfile"));
        if !ours {
            continue;
        }
        let command = strings(&svc["command"]);
        assert_command_exists(&command, &format!("compose service {name}"));
        roles.push(command[0].clone());
        match &svc["environment"] {
            Value::Mapping(m) => {
                for k in m.keys() {
                    assert_known(k.as_str().unwrap(), &format!("compose service {name}"));
                }
            }
            Value::Sequence(s) => {
                for kv in s {
                    let k = kv.as_str().unwrap().split('=').next().unwrap();
                    assert_known(k, &format!("compose service {name}"));
                }
            }
            _ => {}
        }
    }
    for role in ROLES {
        assert!(
            roles.iter().any(|r| r.as_str() == *role),
            "compose runs no {role}: {roles:?}"
        );
    }
    for other in [
        "postgres",
        "nats",
        "redis",
        "prometheus",
        "grafana",
        "otel-collector",
    ] {
        assert!(
            services.keys().any(|k| k.as_str() == Some(other)),
            "compose has no {other}"
        );
    }
}

#[test]
fn the_kubernetes_manifests_run_real_commands_with_real_settings() {
    let dir = deploy().join("k8s");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            for d in documents(&path) {
                all.push((path.file_name().unwrap().to_string_lossy().into_owned(), d));
            }
        }
    }
    // The kustomization names files that exist.
    let kustomization = all
        .iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .map(|(_, d)| d.clone())
        .expect("kustomization.yaml");
    for r in strings(&kustomization["resources"]) {
        assert!(dir.join(&r).exists(), "kustomization names a missing {r}");
    }
    let config_keys = |kind: &str, name: &str| -> Vec<String> {
        all.iter()
            .filter(|(_, d)| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .flat_map(|(_, d)| {
                ["data", "stringData"]
                    .iter()
                    .filter_map(|f| d[*f].as_mapping())
                    .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut kinds = std::collections::BTreeSet::new();
    let mut roles = Vec::new();
    for (file, d) in &all {
        let kind = d["kind"].as_str().unwrap_or_default().to_owned();
        kinds.insert(kind.clone());
        let spec = match kind.as_str() {
            "Deployment" | "Job" | "StatefulSet" => &d["spec"]["template"]["spec"],
            _ => continue,
        };
        for c in spec["containers"].as_sequence().into_iter().flatten() {
            if !c["image"].as_str().is_some_and(|i| i.contains("runledger")) {
                continue;
            }
            let origin = format!("{file}: {}", c["name"].as_str().unwrap_or_default());
            let mut command = strings(&c["command"]);
            command.extend(strings(&c["args"]));
            assert_command_exists(&command, &origin);
            let first = if command[0] == "runledger" {
                &command[1]
            } else {
                &command[0]
            };
            roles.push(first.clone());
            for e in c["env"].as_sequence().into_iter().flatten() {
                assert_known(e["name"].as_str().unwrap(), &origin);
            }
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                let (kind, r) = if from["configMapRef"].is_mapping() {
                    ("ConfigMap", &from["configMapRef"])
                } else {
                    ("Secret", &from["secretRef"])
                };
                let name = r["name"].as_str().unwrap();
                let keys = config_keys(kind, name);
                assert!(
                    !keys.is_empty() || r["optional"].as_bool() == Some(true),
                    "{origin}: {kind} {name} is not in deploy/k8s"
                );
                for k in keys {
                    assert_known(&k, &format!("{origin} via {kind} {name}"));
                }
            }
            if kind == "Deployment" {
                assert!(
                    c["readinessProbe"].is_mapping(),
                    "{origin}: no readiness probe"
                );
                assert!(
                    c["livenessProbe"].is_mapping(),
                    "{origin}: no liveness probe"
                );
                assert!(
                    c["resources"]["requests"].is_mapping(),
                    "{origin}: no resources"
                );
            }
        }
    }
    for kind in ["Deployment", "Job", "PodDisruptionBudget", "Service"] {
        assert!(kinds.contains(kind), "no {kind} in deploy/k8s: {kinds:?}");
    }
    for role in ROLES {
        assert!(
            roles.iter().any(|r| r.as_str() == *role),
            "k8s runs no {role}: {roles:?}"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_link_a_runbook() {
    let rules = deploy().join("prometheus/alerts.yml");
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/services installs it)");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let tests = deploy().join("prometheus/alerts_test.yml");
    if tests.exists() {
        let out = Command::new("promtool")
            .args(["test", "rules"])
            .arg(&tests)
            .current_dir(deploy().join("prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let doc = &documents(&rules)[0];
    let mut alerts = 0;
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} links no runbook"));
            let file = url
                .rsplit_once("deploy/runbooks/")
                .map(|(_, f)| f)
                .unwrap_or_else(|| panic!("{name}: {url} is not under deploy/runbooks/"));
            let runbook = deploy().join("runbooks").join(file);
            let text = std::fs::read_to_string(&runbook)
                .unwrap_or_else(|_| panic!("{name}: {} is missing", runbook.display()));
            assert!(
                text.contains(name),
                "{}: does not name {name}",
                runbook.display()
            );
            assert!(
                rule["labels"]["severity"].is_string(),
                "{name}: no severity"
            );
        }
    }
    assert!(alerts >= 8, "only {alerts} alerts");
}

#[test]
fn the_image_builds_where_a_docker_daemon_runs() {
    let daemon = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !daemon {
        println!(
            "SKIPPED: no Docker daemon on this machine; `docker build -f deploy/Dockerfile .` not run"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for target in ["runtime", "browser"] {
        let out = Command::new("docker")
            .args(["build", "-f", "deploy/Dockerfile", "--target", target, "-t"])
            .arg(format!("runledger-test:{target}"))
            .arg(".")
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker build --target {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let help = Command::new("docker")
            .args(["run", "--rm"])
            .arg(format!("runledger-test:{target}"))
            .arg("--help")
            .output()
            .unwrap();
        assert!(help.status.success(), "the {target} image does not run");
    }
}
