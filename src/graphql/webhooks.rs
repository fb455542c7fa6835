//! `Task.webhookDeliveries` and `redeliverWebhook`'s answer: a task's webhook events and every
//! attempt to deliver them (see `domain::webhook`).

use async_graphql::{Enum, SimpleObject, ID};
use chrono::{DateTime, Utc};

use crate::domain;

/// What a task's webhook is told of (`webhookEventsFilter`).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum WebhookEvent {
    /// The task started running: `task.started`.
    Start,
    /// The task reached a terminal state (completed, failed or cancelled): `task.completed`.
    Completed,
}

impl From<domain::WebhookEvent> for WebhookEvent {
    fn from(e: domain::WebhookEvent) -> Self {
        match e {
            domain::WebhookEvent::Start => WebhookEvent::Start,
            domain::WebhookEvent::Completed => WebhookEvent::Completed,
        }
    }
}

impl WebhookEvent {
    /// The name the service's filter takes.
    pub fn filter_name(self) -> String {
        match self {
            WebhookEvent::Start => domain::WebhookEvent::Start,
            WebhookEvent::Completed => domain::WebhookEvent::Completed,
        }
        .filter_name()
        .to_string()
    }
}

/// Where a delivery stands.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum WebhookDeliveryState {
    /// Waiting for its next attempt (`nextAttemptAt`), or being attempted.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed; only `redeliverWebhook` sends it again.
    Dead,
}

impl From<domain::DeliveryState> for WebhookDeliveryState {
    fn from(s: domain::DeliveryState) -> Self {
        match s {
            domain::DeliveryState::Pending => WebhookDeliveryState::Pending,
            domain::DeliveryState::Delivered => WebhookDeliveryState::Delivered,
            domain::DeliveryState::Dead => WebhookDeliveryState::Dead,
        }
    }
}

/// One attempt to deliver an event.
#[derive(SimpleObject)]
pub struct WebhookAttempt {
    /// 1 for the first attempt; counts on across redeliveries.
    pub attempt: u32,
    /// When the attempt ended.
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed (`answered 500`, `timeout`, `connection failed: …`, a refused
    /// target); null when it was delivered.
    pub error: Option<String>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: u64,
    /// When the next attempt was due after this one; null once delivered or dead.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One event on its way to the task's webhook, signed per Standard Webhooks.
#[derive(SimpleObject)]
pub struct WebhookDelivery {
    /// The `webhook-id` header: the same on every attempt and redelivery of this event.
    pub id: ID,
    /// Which event.
    pub event: WebhookEvent,
    /// The body's `type`: `task.started` or `task.completed`.
    #[graphql(name = "type")]
    pub kind: String,
    /// Where it is posted.
    pub url: String,
    /// Where the delivery stands.
    pub state: WebhookDeliveryState,
    /// When the change happened (the body's `timestamp`).
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due; null once delivered or dead.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<WebhookAttempt>,
}

impl From<&domain::WebhookDelivery> for WebhookDelivery {
    fn from(d: &domain::WebhookDelivery) -> Self {
        WebhookDelivery {
            id: ID(d.id.clone()),
            event: d.event.into(),
            kind: d.event.type_name().to_string(),
            url: d.url.clone(),
            state: d.state.into(),
            created_at: d.created_at,
            next_attempt_at: d.next_attempt_at,
            attempts: d
                .log
                .iter()
                .map(|a| WebhookAttempt {
                    attempt: a.attempt,
                    at: a.at,
                    status_code: a.status_code,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                    next_attempt_at: a.next_attempt_at,
                })
                .collect(),
        }
    }
}
