//! Stripe billing and audit-signing settings (DESIGN.md section 9).

use std::time::Duration;

use base64::Engine;

use super::{Secret, SettingsError, bad, number, within};

/// Billing on Stripe: on when `STRIPE_SECRET_KEY` is set.
#[derive(Debug, Clone)]
pub struct Billing {
    /// `STRIPE_SECRET_KEY`.
    pub secret_key: Secret,
    /// `STRIPE_WEBHOOK_SECRET` (`whsec_…`), required with the key.
    pub webhook_secret: Secret,
    /// `STRIPE_API_BASE`: the API's host root, with a trailing slash (default Stripe's).
    pub api_base: String,
    /// `STRIPE_PRICE_PRO`: the PRO plan's price id, required with the key.
    pub price_pro: String,
    /// `STRIPE_PRICE_ENTERPRISE`: the ENTERPRISE plan's price id, if sold.
    pub price_enterprise: Option<String>,
    /// `STRIPE_PRICE_METERED`: a metered price on the meter, added to every checkout so the
    /// reported units are invoiced; unset, the meter only records them.
    pub price_metered: Option<String>,
    /// `STRIPE_METER_EVENT_NAME` (default `runledger_jobs`).
    pub meter_event_name: String,
    /// `RUNLEDGER_PUBLIC_URL` (default `http://127.0.0.1:8080`): checkout's return pages.
    pub public_url: String,
    /// `RUNLEDGER_BILLING_REPORT_SECS` (default 3600, 10 to 86400): the billing role's
    /// reporting interval.
    pub report_every: Duration,
}

/// Reads the billing settings; `None` when `STRIPE_SECRET_KEY` is unset.
pub(super) fn billing(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Billing>, SettingsError> {
    let Some(key) = get("STRIPE_SECRET_KEY") else {
        return Ok(None);
    };
    if !(key.starts_with("sk_") || key.starts_with("rk_")) {
        return Err(bad(
            "STRIPE_SECRET_KEY",
            "must be a Stripe secret key (sk_… or rk_…)",
        ));
    }
    let webhook_secret = get("STRIPE_WEBHOOK_SECRET").ok_or_else(|| {
        bad(
            "STRIPE_WEBHOOK_SECRET",
            "is required with STRIPE_SECRET_KEY",
        )
    })?;
    let price_pro = get("STRIPE_PRICE_PRO")
        .ok_or_else(|| bad("STRIPE_PRICE_PRO", "is required with STRIPE_SECRET_KEY"))?;
    let api_base = match get("STRIPE_API_BASE") {
        None => "https://api.stripe.com/".to_owned(),
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            format!("{}/", u.trim_end_matches('/'))
        }
        Some(_) => return Err(bad("STRIPE_API_BASE", "must be an http(s) URL")),
    };
    let public_url = match get("RUNLEDGER_PUBLIC_URL") {
        None => "http://127.0.0.1:8080".to_owned(),
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            u.trim_end_matches('/').to_owned()
        }
        Some(_) => return Err(bad("RUNLEDGER_PUBLIC_URL", "must be an http(s) URL")),
    };
    let report_every = within(
        number(
            get("RUNLEDGER_BILLING_REPORT_SECS").as_deref(),
            "RUNLEDGER_BILLING_REPORT_SECS",
            3_600,
        )?,
        "RUNLEDGER_BILLING_REPORT_SECS",
        10..=86_400,
    )?;
    Ok(Some(Billing {
        secret_key: Secret::new(key),
        webhook_secret: Secret::new(webhook_secret),
        api_base,
        price_pro,
        price_enterprise: get("STRIPE_PRICE_ENTERPRISE"),
        price_metered: get("STRIPE_PRICE_METERED"),
        meter_event_name: get("STRIPE_METER_EVENT_NAME")
            .unwrap_or_else(|| "runledger_jobs".to_owned()),
        public_url,
        report_every: Duration::from_secs(report_every),
    }))
}

/// `RUNLEDGER_AUDIT_SIGNING_KEY`: an Ed25519 private key as 32 bytes of base64 (the seed),
/// signing the audit digests.
pub(super) fn audit_key(value: Option<String>) -> Result<Option<Secret>, SettingsError> {
    let Some(v) = value else { return Ok(None) };
    let seed = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|_| bad("RUNLEDGER_AUDIT_SIGNING_KEY", "must be base64"))?;
    if seed.len() != 32 {
        return Err(bad(
            "RUNLEDGER_AUDIT_SIGNING_KEY",
            "must be the 32-byte Ed25519 seed, base64-encoded",
        ));
    }
    Ok(Some(Secret::new(v.trim())))
}
