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
    /// Open WebSocket connections per API key (this process), against
    /// `WS_MAX_CONNECTIONS_PER_KEY`.
    pub sockets: Arc<Mutex<HashMap<String, usize>>>,
}
