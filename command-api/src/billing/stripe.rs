//! The Stripe calls runledger makes, through async-stripe (only its core, checkout and
//! billing sub-crates). `STRIPE_API_BASE` points the client elsewhere (a test's fake).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::{
    ids::{StripeObjectId, UserId},
    period::BillingPeriod,
    report::{ReportRange, summary_window},
};
use platform::settings::Billing;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::{
    billing_meter::ListBillingMeter, billing_meter_event::CreateBillingMeterEvent,
    billing_meter_event_summary::ListIdBillingMeterEventSummary,
};
use stripe_checkout::{
    CheckoutSessionMode,
    checkout_session::{
        CreateCheckoutSession, CreateCheckoutSessionLineItems,
        CreateCheckoutSessionSubscriptionData,
    },
};
use stripe_core::customer::CreateCustomer;

/// A Stripe call that did not succeed; never carries the key.
#[derive(Debug, thiserror::Error)]
pub enum StripeFailure {
    /// Stripe answered with an error.
    #[error("Stripe answered {status}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// Stripe's message.
        message: String,
    },
    /// No usable answer (network, timeout, a body that does not parse).
    #[error("Stripe could not be reached: {0}")]
    Transport(String),
    /// The answer lacks what runledger needs.
    #[error("Stripe's answer is unusable: {0}")]
    Unusable(&'static str),
}

impl From<StripeError> for StripeFailure {
    fn from(e: StripeError) -> Self {
        match e {
            StripeError::Stripe(api, status) => Self::Api {
                status,
                message: api.message.unwrap_or_default(),
            },
            other => Self::Transport(other.to_string()),
        }
    }
}

/// What Stripe says when a meter event's identifier was recorded before.
const DUPLICATE_IDENTIFIER: &str = "An event already exists with identifier";

/// A checkout session: where to send the user.
#[derive(Debug, Clone)]
pub struct Session {
    /// `cs_…`.
    pub id: String,
    /// Stripe's hosted page.
    pub url: String,
}

/// The Stripe API for one deployment.
#[derive(Clone)]
pub struct Api {
    client: Client,
}

fn idempotent(key: &str) -> RequestStrategy {
    IdempotencyKey::new(key).map_or(RequestStrategy::Once, RequestStrategy::Idempotent)
}

impl Api {
    /// A client on `STRIPE_API_BASE` with `STRIPE_SECRET_KEY`.
    ///
    /// # Errors
    /// When the client cannot be built (a bad base URL).
    pub fn new(b: &Billing) -> Result<Self, StripeFailure> {
        let client = ClientBuilder::new(b.secret_key.expose())
            .url(b.api_base.clone())
            .build()
            .map_err(|e| StripeFailure::Transport(e.to_string()))?;
        Ok(Self { client })
    }

    /// Creates the user's customer, `metadata.user_id` set. The idempotency key is the
    /// user's, so a retry after a crash gets the same customer back (for Stripe's 24 h).
    ///
    /// # Errors
    /// [`StripeFailure`].
    pub async fn create_customer(&self, user: UserId) -> Result<StripeObjectId, StripeFailure> {
        let c = CreateCustomer::new()
            .metadata(HashMap::from([("user_id".to_owned(), user.to_string())]))
            .customize()
            .request_strategy(idempotent(&format!("rl-customer-{user}")))
            .send(&self.client)
            .await?;
        StripeObjectId::parse(c.id.as_str()).map_err(|_| StripeFailure::Unusable("customer id"))
    }

    /// A subscription-mode Checkout Session for `price`, on `customer`, naming the user in
    /// `client_reference_id` and the subscription's metadata.
    ///
    /// # Errors
    /// [`StripeFailure`].
    pub async fn create_checkout(
        &self,
        user: UserId,
        customer: &StripeObjectId,
        price: &str,
        b: &Billing,
    ) -> Result<Session, StripeFailure> {
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price = Some(price.to_owned());
        item.quantity = Some(1);
        let mut items = vec![item];
        if let Some(metered) = &b.price_metered {
            // Usage is billed through a metered price; Stripe refuses a quantity on it.
            let mut m = CreateCheckoutSessionLineItems::new();
            m.price = Some(metered.clone());
            items.push(m);
        }
        let mut data = CreateCheckoutSessionSubscriptionData::new();
        data.metadata = Some(HashMap::from([("user_id".to_owned(), user.to_string())]));
        let s = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Subscription)
            .customer(customer.as_str())
            .line_items(items)
            .client_reference_id(user.to_string())
            .subscription_data(data)
            .success_url(format!("{}/?checkout=success", b.public_url))
            .cancel_url(format!("{}/?checkout=canceled", b.public_url))
            .send(&self.client)
            .await?;
        Ok(Session {
            id: s.id.as_str().to_owned(),
            url: s
                .url
                .ok_or(StripeFailure::Unusable("checkout session without url"))?,
        })
    }

    /// Sends one range as a meter event. Its identifier doubles as the idempotency key; a
    /// range Stripe already holds (sent before a crash) counts as sent.
    ///
    /// # Errors
    /// [`StripeFailure`].
    pub async fn meter_event(
        &self,
        event_name: &str,
        r: &ReportRange,
    ) -> Result<(), StripeFailure> {
        let payload = HashMap::from([
            (
                "stripe_customer_id".to_owned(),
                r.customer_id.as_str().to_owned(),
            ),
            ("value".to_owned(), r.units().to_string()),
        ]);
        let sent = CreateBillingMeterEvent::new(event_name, payload)
            .identifier(r.identifier.as_str())
            .timestamp(r.timestamp.timestamp())
            .customize()
            .request_strategy(idempotent(&r.identifier))
            .send(&self.client)
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(StripeError::Stripe(api, 400))
                if api
                    .message
                    .as_deref()
                    .is_some_and(|m| m.starts_with(DUPLICATE_IDENTIFIER)) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The id of the meter counting `event_name`.
    ///
    /// # Errors
    /// [`StripeFailure`], or `Unusable` when no meter has that event name.
    pub async fn meter_id(&self, event_name: &str) -> Result<String, StripeFailure> {
        let meters = ListBillingMeter::new()
            .limit(100)
            .send(&self.client)
            .await?;
        meters
            .data
            .into_iter()
            .find(|m| m.event_name == event_name)
            .map(|m| m.id.as_str().to_owned())
            .ok_or(StripeFailure::Unusable(
                "no Stripe meter has STRIPE_METER_EVENT_NAME",
            ))
    }

    /// Units Stripe's meter holds for `customer` in `period`'s window.
    ///
    /// # Errors
    /// [`StripeFailure`].
    pub async fn metered_units(
        &self,
        meter: &str,
        customer: &str,
        period: &BillingPeriod,
    ) -> Result<u64, StripeFailure> {
        let (start, end): (DateTime<Utc>, DateTime<Utc>) = summary_window(period);
        let sums = ListIdBillingMeterEventSummary::new(
            meter,
            customer,
            end.timestamp(),
            start.timestamp(),
        )
        .send(&self.client)
        .await?;
        let total: f64 = sums.data.iter().map(|s| s.aggregated_value).sum();
        // Units are whole; the summary is a float sum of whole values.
        Ok(total.round().max(0.0) as u64)
    }
}
