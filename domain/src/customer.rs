//! The Customer aggregate: which user a Stripe customer belongs to, so a webhook whose
//! objects carry no `metadata.user_id` still finds its user. Claimed once, never moved.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    event::{Decider, event_enum},
    ids::{StripeObjectId, UserId},
};

/// Claim a Stripe customer for a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClaimCustomer {
    /// The customer (`cus_…`).
    pub customer_id: StripeObjectId,
    /// The user it belongs to.
    pub user_id: UserId,
}

/// Every command of the Customer aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum CustomerCommand {
    Claim(ClaimCustomer),
}

/// A Stripe customer now belongs to a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerClaimed {
    /// The customer.
    pub customer_id: StripeObjectId,
    /// The user.
    pub user_id: UserId,
}

event_enum!(
    /// Every event of the Customer aggregate.
    CustomerEvent { CustomerClaimed }
);

/// Why the Customer aggregate refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CustomerError {
    /// The customer already belongs to another user.
    #[error("the Stripe customer belongs to another user")]
    ClaimedByOther,
}

/// The Customer aggregate; its default is an unclaimed customer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    user_id: Option<UserId>,
}

impl Customer {
    /// The user who owns the customer, if claimed.
    pub fn user_id(&self) -> Option<UserId> {
        self.user_id
    }
}

impl Decider for Customer {
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = CustomerError;

    fn decide(&self, command: CustomerCommand) -> Result<Vec<CustomerEvent>, CustomerError> {
        let CustomerCommand::Claim(c) = command;
        match self.user_id {
            Some(u) if u == c.user_id => Ok(vec![]),
            Some(_) => Err(CustomerError::ClaimedByOther),
            None => Ok(vec![
                CustomerClaimed {
                    customer_id: c.customer_id,
                    user_id: c.user_id,
                }
                .into(),
            ]),
        }
    }

    fn evolve(&mut self, event: &CustomerEvent) {
        let CustomerEvent::CustomerClaimed(e) = event;
        self.user_id = Some(e.user_id);
    }
}
