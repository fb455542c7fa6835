//! What every HTTP surface shares (REST, GraphQL, the console, the operations endpoints): the
//! service, the configuration and what this process knows of itself. It sits below the surfaces
//! and above the service, so each surface depends on it and none on another (see
//! `docs/architecture.md`, "Shape").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Config;
use crate::service::Service;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub config: Arc<Config>,
    /// Base of the URLs handed out (image URLs).
    pub public_base: String,
    /// `ark` or `sandbox`.
    pub provider_mode: &'static str,
    pub started: Instant,
    /// Open WebSocket connections of user keys (this process), by key label: counted against
    /// `WS_MAX_CONNECTIONS_PER_KEY`, and closed when their key is revoked.
    pub sockets: Sockets,
    /// The provider API keys and their paces, where this process runs the worker (`/ready`).
    pub provider_keys: Option<(
        Arc<crate::provider::keys::KeyPool>,
        Arc<crate::provider::limiter::ProviderLimiter>,
    )>,
}

pub type Sockets = Arc<Mutex<HashMap<String, Vec<OpenSocket>>>>;

/// An open socket of a user key. A revocation sends it what to signal once its close frame is
/// out.
pub struct OpenSocket {
    pub id: u64,
    pub revoke: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}
