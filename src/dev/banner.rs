//! What `runledger dev` prints on start, and the `env` file with the same values.

use std::time::Duration;

use anyhow::Context;
use domain::ids::UserId;
use platform::{auth::Role, settings::Settings};

use super::{DEMO_AUDITOR, DEMO_USER, Data, write_private};

/// Prints the URL, the demo tokens and the tour's curl lines; writes them to `<data>/env`.
pub fn banner(
    s: &Settings,
    listener: &tokio::net::TcpListener,
    backend: &str,
    data: &Data,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let mint = |sub: &str, role: Role| -> anyhow::Result<String> {
        let minter =
            platform::auth::Minter::for_role(s, role).context("dev tokens need an HS256 secret")?;
        Ok(minter.mint(
            UserId::parse(sub).map_err(|e| anyhow::anyhow!("{e}"))?,
            role,
            Duration::from_secs(30 * 86_400),
        )?)
    };
    let (user, auditor) = if s.jwt_secret.is_some() {
        (
            mint(DEMO_USER, Role::Customer)?,
            mint(DEMO_AUDITOR, Role::Auditor)?,
        )
    } else {
        ("<a token from your JWKS issuer>".into(), String::new())
    };
    // The token rides in the fragment, which browsers never send: see the dashboard's ADR.
    let dashboard = if s.jwt_secret.is_some() {
        format!(
            "Open the dashboard, signed in as the demo customer:\n  {url}/#access_token={user}\n\
             or as the auditor:\n  {url}/audit#access_token={auditor}\n"
        )
    } else {
        format!("Open the dashboard and paste a token: {url}/signin\n")
    };
    let month = chrono::Utc::now().format("%Y-%m");
    // The same values for a second shell: `. .runledger/env`.
    let source = match data {
        Data::Dir(dir) => {
            let path = dir.join("env");
            write_private(
                &path,
                &format!(
                    "export URL={url}\nexport TOKEN={user}\nexport AUDITOR_TOKEN={auditor}\n\
                     export DEMO_USER={DEMO_USER}\n"
                ),
            )?;
            format!("In another shell, `. {}` sets them.\n", path.display())
        }
        Data::InMemory => String::new(),
    };
    println!(
        "runledger dev is running on {url}\n\
         events: {backend}\n\n\
         URL={url}\n\
         TOKEN={user}\n\
         AUDITOR_TOKEN={auditor}\n\
         {source}\n\
         {dashboard}\n\
         Submit a job:\n  \
         curl -s -X POST $URL/v1/jobs -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"task_type\":\"noop\",\"payload\":{{}}}}'\n\
         Watch your jobs live:\n  \
         curl -N $URL/v1/jobs/stream -H \"Authorization: Bearer $TOKEN\"\n\
         Usage this period:\n  \
         curl -s $URL/v1/usage -H \"Authorization: Bearer $TOKEN\"\n\
         Audit replay of the demo user's ledger:\n  \
         curl -s \"$URL/v1/audit/usage/{DEMO_USER}?period={month}\" -H \"Authorization: Bearer $AUDITOR_TOKEN\"\n\n\
         Ctrl-C stops."
    );
    Ok(())
}
