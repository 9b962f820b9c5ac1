//! What every handler shares.

use std::sync::Arc;

use eventstore::EventStore;
use platform::{
    artifacts::ArtifactStore,
    auth::{Authenticator, HasAuthenticator, Principal, Role},
    problem::Problem,
    settings::Settings,
};

use crate::{stream::Hub, views::ReadModels};

/// The router state.
#[derive(Clone)]
pub struct AppState {
    /// The read models.
    pub views: Arc<dyn ReadModels>,
    /// The event store (audits, readiness).
    pub store: EventStore,
    /// Token validation.
    pub auth: Arc<Authenticator>,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Per-user fan-out of change notices.
    pub hub: Arc<Hub>,
    /// Where the jobs' artifacts are.
    pub artifacts: Arc<dyn ArtifactStore>,
}

impl HasAuthenticator for AppState {
    fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }
}

/// The read side serves customers their own data.
///
/// # Errors
/// 403 for service roles.
pub fn customer(p: Principal) -> Result<uuid::Uuid, Problem> {
    match p.role {
        Role::Customer => Ok(p.user_id.as_uuid()),
        _ => Err(Problem::forbidden(
            "these endpoints serve a customer's own data",
        )),
    }
}

/// A 500 whose cause goes to the log only.
pub fn internal(e: &sqlx::Error) -> Problem {
    tracing::error!(message = "Read model query failed.", error = %e);
    Problem::internal()
}
