//! What every handler shares.

use std::sync::Arc;

use eventstore::EventStore;
use platform::{
    auth::{Authenticator, HasAuthenticator},
    settings::Settings,
};

/// The router state.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub store: EventStore,
    /// Token validation.
    pub auth: Arc<Authenticator>,
    /// Settings.
    pub settings: Arc<Settings>,
}

impl HasAuthenticator for AppState {
    fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }
}
