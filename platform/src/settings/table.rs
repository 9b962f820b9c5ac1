//! Every environment variable the settings read: name, default, meaning. `docs/settings.md`
//! is generated from it (`runledger settings`), and tests hold it, the code that reads the
//! variables and that document together.

/// One environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    /// Its name.
    pub name: &'static str,
    /// Its default, or what its absence means.
    pub default: &'static str,
    /// What it sets, and its accepted values.
    pub meaning: &'static str,
}

const fn v(name: &'static str, default: &'static str, meaning: &'static str) -> Variable {
    Variable {
        name,
        default,
        meaning,
    }
}

/// The variables, grouped by concern.
pub const VARIABLES: &[Variable] = &[
    // Connections and listening.
    v(
        "DATABASE_URL",
        "unset: `runledger dev` uses SQLite",
        "Postgres URL (`postgres://…`) of the event store and read models.",
    ),
    v(
        "RUNLEDGER_DB_MAX_CONNECTIONS",
        "32",
        "Connections per pool, 2 to 1000.",
    ),
    v(
        "NATS_URL",
        "unset",
        "NATS server (`nats://` or `tls://`): the event bus and change notices.",
    ),
    v(
        "RUNLEDGER_NATS_PREFIX",
        "empty",
        "Prefix of subjects and stream names (letters, digits, `_`, `-`), so deployments can share a server.",
    ),
    v(
        "REDIS_URL",
        "unset",
        "Redis-compatible server (`redis://`, `rediss://`) of the job queues; several comma-separated URLs name a cluster's seed nodes.",
    ),
    v(
        "RUNLEDGER_REDIS_CLUSTER",
        "false",
        "`REDIS_URL` is a Redis Cluster even with one seed node.",
    ),
    v(
        "RUNLEDGER_ADDR",
        "127.0.0.1:8080",
        "Listen address (`host:port`) of the role's HTTP server (API, or `/metrics` and `/healthz`).",
    ),
    v(
        "RUNLEDGER_DATA_DIR",
        "./.runledger",
        "Where `runledger dev` keeps its events (and the default artifacts directory).",
    ),
    v(
        "RUNLEDGER_COMMAND_URL",
        "unset",
        "Base URL of the command API a worker reports outcomes to (required by `runledger worker`).",
    ),
    v(
        "RUNLEDGER_WORKER_TOKEN",
        "minted from the HS256 secret",
        "The worker's service token.",
    ),
    // Authentication.
    v(
        "RUNLEDGER_JWT_SECRET",
        "unset",
        "HS256 secret of customers' tokens, at least 32 bytes.",
    ),
    v(
        "RUNLEDGER_JWKS_URL",
        "unset",
        "JWKS URL of asymmetric keys for customers' tokens.",
    ),
    v(
        "RUNLEDGER_JWT_AUDIENCE",
        "authenticated",
        "Required `aud` of customers' tokens.",
    ),
    v(
        "RUNLEDGER_JWT_ISSUER",
        "unset: any",
        "Required `iss` of customers' tokens.",
    ),
    v(
        "RUNLEDGER_SERVICE_JWT_SECRET",
        "unset",
        "HS256 secret of service-role tokens (worker, auditor, admin); when set, those roles come only from it. Must differ from `RUNLEDGER_JWT_SECRET`.",
    ),
    v(
        "RUNLEDGER_SERVICE_JWKS_URL",
        "unset",
        "JWKS URL of service-role tokens.",
    ),
    v(
        "RUNLEDGER_AUDIT_SIGNING_KEY",
        "unset",
        "Ed25519 seed (32 bytes, base64) that signs audit digests.",
    ),
    // Plans, jobs and dispatch.
    v(
        "RUNLEDGER_FREE_LIMIT",
        "100",
        "Jobs a FREE user may complete per period.",
    ),
    v(
        "RUNLEDGER_PRO_LIMIT",
        "10000",
        "Jobs a PRO user may complete per period.",
    ),
    v(
        "RUNLEDGER_TASK_TYPES",
        "empty",
        "Extra accepted task types, comma-separated.",
    ),
    v(
        "RUNLEDGER_BODY_LIMIT",
        "65536",
        "Largest request body in bytes, 1024 to 16777216.",
    ),
    v(
        "RUNLEDGER_RESERVATION_TIMEOUT_SECS",
        "300",
        "A reserved unit whose job never appeared is released after this.",
    ),
    v(
        "RUNLEDGER_JOB_LEASE_SECS",
        "60",
        "A running attempt without start or heartbeat for this long is failed as retryable, 5 to 86400.",
    ),
    v(
        "RUNLEDGER_RECONCILE_GRACE_SECS",
        "30",
        "A waiting job no queue has held for this long is pushed again, 1 to 3600.",
    ),
    v(
        "RUNLEDGER_FREE_CONCURRENCY",
        "2",
        "A FREE user's jobs queued or running at once (1 to 100000, or `unlimited`).",
    ),
    v("RUNLEDGER_PRO_CONCURRENCY", "20", "The same for PRO."),
    v(
        "RUNLEDGER_ENTERPRISE_CONCURRENCY",
        "unlimited",
        "The same for ENTERPRISE.",
    ),
    v(
        "RUNLEDGER_FREE_WEIGHT",
        "1",
        "Jobs a FREE user gets per round-robin turn, 1 to 100.",
    ),
    v("RUNLEDGER_PRO_WEIGHT", "2", "The same for PRO."),
    v(
        "RUNLEDGER_ENTERPRISE_WEIGHT",
        "4",
        "The same for ENTERPRISE.",
    ),
    v(
        "RUNLEDGER_DISPATCH_WINDOW",
        "32",
        "Envelopes a ready queue holds at most (1 to 10000); the rest wait in the dispatcher's per-user backlog.",
    ),
    v(
        "RUNLEDGER_SSE_HEARTBEAT_SECS",
        "15",
        "Seconds between SSE heartbeat comments, 1 to 300.",
    ),
    v(
        "RUNLEDGER_CHANGES_RETENTION_HOURS",
        "168",
        "How long the SSE replay log keeps a change, 1 to 8760; an older `Last-Event-ID` gets a `reset`.",
    ),
    // Executors.
    v(
        "RUNLEDGER_HTTP_ALLOW",
        "empty",
        "CIDRs `http.request` and the browser may reach although private or loopback, comma-separated.",
    ),
    v(
        "RUNLEDGER_ARTIFACTS_DIR",
        "artifacts under the data directory",
        "Where workers put artifacts and the read API finds them.",
    ),
    v(
        "RUNLEDGER_CHROMIUM_PATH",
        "/usr/bin/chromium",
        "The browser executor's Chromium.",
    ),
    v(
        "RUNLEDGER_BROWSER_POOL",
        "2",
        "Warm browsers per worker, 1 to 64.",
    ),
    v(
        "RUNLEDGER_BROWSER_TIMEOUT_SECS",
        "30",
        "The longest one browser job may take, 1 to 600.",
    ),
    v(
        "RUNLEDGER_BROWSER_MAX_RESPONSE",
        "10485760",
        "The most bytes one request of a page may load, 1 KiB to 256 MiB.",
    ),
    v(
        "RUNLEDGER_LLM_MODEL",
        "unset: no agent executor",
        "The agent's model; setting it turns the agent executor on.",
    ),
    v(
        "RUNLEDGER_LLM_PROVIDER",
        "openai",
        "`openai` (chat completions, also vLLM, Ollama, LM Studio) or `anthropic`.",
    ),
    v(
        "RUNLEDGER_LLM_BASE_URL",
        "the provider's own",
        "Base URL of the model API.",
    ),
    v(
        "RUNLEDGER_LLM_API_KEY",
        "unset",
        "The model API's key; never logged.",
    ),
    v(
        "RUNLEDGER_LLM_TIMEOUT_SECS",
        "120",
        "One model call's limit, 1 to 3600.",
    ),
    v(
        "RUNLEDGER_EMBEDDING_MODEL",
        "unset: no memory",
        "Embeddings model of per-user agent memory.",
    ),
    v(
        "RUNLEDGER_EMBEDDING_BASE_URL",
        "the LLM base URL",
        "OpenAI-compatible embeddings endpoint.",
    ),
    // Billing.
    v(
        "STRIPE_SECRET_KEY",
        "unset: billing off",
        "Stripe API key; billing routes answer 503 without it.",
    ),
    v(
        "STRIPE_WEBHOOK_SECRET",
        "required with the key",
        "Signing secret (`whsec_…`) of Stripe webhooks.",
    ),
    v(
        "STRIPE_API_BASE",
        "https://api.stripe.com/",
        "Stripe API host root (a local fake in tests).",
    ),
    v(
        "STRIPE_PRICE_PRO",
        "required with the key",
        "Price id of the PRO plan.",
    ),
    v(
        "STRIPE_PRICE_ENTERPRISE",
        "unset: not sold",
        "Price id of the ENTERPRISE plan.",
    ),
    v(
        "STRIPE_PRICE_METERED",
        "unset",
        "Metered price added to every checkout, so reported units are invoiced.",
    ),
    v(
        "STRIPE_METER_EVENT_NAME",
        "runledger_jobs",
        "Event name of the usage meter.",
    ),
    v(
        "RUNLEDGER_PUBLIC_URL",
        "http://127.0.0.1:8080",
        "Public base URL for checkout's return pages.",
    ),
    v(
        "RUNLEDGER_BILLING_REPORT_SECS",
        "3600",
        "The billing role's reporting interval, 10 to 86400.",
    ),
    // Operations.
    v(
        "RUNLEDGER_LOG",
        "info (`runledger dev`: warn)",
        "Log filter (tracing `EnvFilter` syntax, such as `info,runledger=debug`).",
    ),
    v(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "unset: no traces",
        "OpenTelemetry collector's OTLP/HTTP base URL; spans go to `<url>/v1/traces` as HTTP/protobuf.",
    ),
];

/// The table as Markdown: `docs/settings.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Settings\n\n\
         Every role reads its configuration from these environment variables and refuses to \
         start, naming the variable, when one holds a bad value. Generated from \
         `platform/src/settings/table.rs` by `runledger settings`; a test fails when they \
         drift.\n\n\
         | Variable | Default | Meaning |\n|---|---|---|\n",
    );
    for v in VARIABLES {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            v.name,
            v.default.replace('|', "\\|"),
            v.meaning.replace('|', "\\|")
        ));
    }
    out
}

/// Whether `name` is a variable the settings read.
pub fn known(name: &str) -> bool {
    VARIABLES.iter().any(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The variable names quoted in the code that reads the settings.
    fn read_by_code() -> BTreeSet<String> {
        let sources = [
            include_str!("mod.rs"),
            include_str!("billing.rs"),
            include_str!("dispatch.rs"),
            include_str!("executors.rs"),
        ];
        let mut names = BTreeSet::new();
        for src in sources {
            for (i, _) in src.match_indices('"') {
                let rest = &src[i + 1..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(0);
                let name = &rest[..end];
                let prefixed = [
                    "RUNLEDGER_",
                    "STRIPE_",
                    "OTEL_",
                    "DATABASE_",
                    "NATS_",
                    "REDIS_",
                ]
                .iter()
                .any(|p| name.starts_with(p));
                if prefixed && rest[end..].starts_with('"') {
                    names.insert(name.to_owned());
                }
            }
        }
        names
    }

    #[test]
    fn the_table_names_exactly_the_variables_the_code_reads() {
        let table: BTreeSet<String> = VARIABLES.iter().map(|v| v.name.to_owned()).collect();
        let code = read_by_code();
        let undocumented: Vec<_> = code.difference(&table).collect();
        let unread: Vec<_> = table.difference(&code).collect();
        assert!(
            undocumented.is_empty(),
            "read but not in the table: {undocumented:?}"
        );
        assert!(unread.is_empty(), "in the table but never read: {unread:?}");
        assert_eq!(table.len(), VARIABLES.len(), "a variable is listed twice");
    }

    #[test]
    fn docs_settings_md_is_generated_from_the_table() {
        assert!(
            include_str!("../../../docs/settings.md") == markdown(),
            "docs/settings.md drifted: run `cargo run -q -- settings > docs/settings.md`"
        );
    }
}
