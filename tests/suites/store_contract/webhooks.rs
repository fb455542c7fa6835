//! The webhook outbox and its deliveries: events are stored with the change that made them (and
//! not by a change that lost its compare-and-set), claimed by one claimer at a time under a
//! lease, renewed and finished only by the claim that holds them, and redelivered from a fresh
//! schedule unless an attempt is in flight.

use std::time::Duration;

use super::fixtures::*;
use volcengine_ai_server::domain::webhook::events_for;
use volcengine_ai_server::domain::{
    DeliveryState, RetrySchedule, WebhookDelivery, WebhookEvent, WebhookTarget,
};

fn schedule() -> RetrySchedule {
    RetrySchedule {
        base: Duration::from_secs(5),
        cap: Duration::from_secs(3600),
        max_attempts: 2,
    }
}

/// A task with a webhook, started at `at(100)`: its `task.started` event in the store.
async fn started_with_event(s: &S) -> (Task, WebhookDelivery) {
    let u = id_at(1);
    let mut t = task_at(10, &u);
    t.webhook = Some(WebhookTarget {
        url: "https://example.com/hook".into(),
        events: vec![WebhookEvent::Start, WebhookEvent::Completed],
    });
    insert(s, &t).await;
    let mut next = t.start("w", at(60_000), at(100)).expect("start");
    next.outbox = events_for(&t, &next);
    assert_eq!(next.outbox.len(), 1);
    replace(s, &next, &t).await;
    let all = s.webhook_deliveries(&t.id).await.expect("deliveries");
    assert_eq!(all.len(), 1, "{all:?}");
    (next, all[0].clone())
}

pub async fn webhook_events_are_stored_with_their_change_and_claimed_by_one_at_a_time(s: S) {
    let (started, event) = started_with_event(&s).await;
    assert_eq!(event.id, format!("msg_{}_{}", started.id, started.version));
    assert_eq!(
        (event.event, event.state, event.next_attempt_at),
        (WebhookEvent::Start, DeliveryState::Pending, Some(at(100)))
    );
    // The task keeps no copy once the events are in the log.
    assert!(stored(&s, &started.id).await.outbox.is_empty());

    // A change that loses its compare-and-set stores none of its events.
    let mut stale = started.cancel(at(200)).expect("cancel");
    stale.outbox = events_for(&started, &stale);
    assert_eq!(stale.outbox.len(), 1);
    assert!(!s
        .replace_task(&stale, started.version - 1, started.status)
        .await
        .expect("replace"));
    assert_eq!(s.webhook_deliveries(&started.id).await.expect("d").len(), 1);

    // Not due before its time; claimed once while leased; due again when the lease lapses.
    let none = s.claim_webhooks("early", at(99), at(5_000), 10).await;
    assert!(none.expect("claim").is_empty());
    let a = s.claim_webhooks("a", at(150), at(5_000), 10).await;
    assert_eq!(a.expect("claim").len(), 1);
    let b = s.claim_webhooks("b", at(4_999), at(9_000), 10).await;
    assert!(b.expect("claim").is_empty(), "claimed twice while leased");
    let c = s
        .claim_webhooks("c", at(5_000), at(9_000), 10)
        .await
        .expect("claim");
    assert_eq!(c.len(), 1, "a lapsed lease is claimed again");

    // Only the holder records the attempt: a delivery, after which nothing is due.
    let mut done = c[0].clone();
    done.record(at(5_100), Some(204), None, 3, &schedule(), 0.5);
    assert!(!s.finish_webhook(&done, "a").await.expect("finish"));
    assert!(s.finish_webhook(&done, "c").await.expect("finish"));
    let later = s
        .claim_webhooks("d", at(1_000_000), at(2_000_000), 10)
        .await;
    assert!(later.expect("claim").is_empty());
    let log = s.webhook_deliveries(&started.id).await.expect("log");
    assert_eq!(log[0].state, DeliveryState::Delivered);
    assert_eq!(log[0].log.len(), 1);
    assert_eq!(log[0].log[0].status_code, Some(204));
}

pub async fn a_claim_is_renewed_by_its_holder_and_redelivery_spares_an_attempt_in_flight(s: S) {
    let (started, event) = started_with_event(&s).await;
    let a = s.claim_webhooks("a", at(150), at(1_000), 10).await;
    assert_eq!(a.expect("claim").len(), 1);
    assert!(s
        .renew_webhook(&event.id, "a", at(3_000))
        .await
        .expect("renew"));
    assert!(!s
        .renew_webhook(&event.id, "b", at(9_000))
        .await
        .expect("renew"));
    // Renewed: not claimable before the new end.
    let b = s.claim_webhooks("b", at(2_000), at(9_000), 10).await;
    assert!(b.expect("claim").is_empty());

    // In flight: a redelivery leaves it to the attempt.
    let kept = s
        .redeliver_webhook(&event.id, at(2_500))
        .await
        .expect("redeliver")
        .expect("known");
    assert_eq!(kept.state, DeliveryState::Pending);
    let b = s.claim_webhooks("b", at(2_600), at(9_000), 10).await;
    assert!(b.expect("claim").is_empty(), "redelivery broke the claim");

    // The lease lapses and another claims it: the first holder can neither renew nor finish.
    let c = s
        .claim_webhooks("c", at(3_000), at(9_000), 10)
        .await
        .expect("claim");
    assert_eq!(c.len(), 1);
    assert!(!s
        .renew_webhook(&event.id, "a", at(20_000))
        .await
        .expect("r"));
    let mut dead = c[0].clone();
    dead.record(at(3_100), Some(500), None, 2, &schedule(), 0.5);
    dead.record(at(3_200), None, Some("timeout".into()), 2, &schedule(), 0.5);
    assert_eq!(dead.state, DeliveryState::Dead);
    assert!(!s.finish_webhook(&dead, "a").await.expect("finish"));
    assert!(s.finish_webhook(&dead, "c").await.expect("finish"));
    assert!(!s
        .renew_webhook(&event.id, "c", at(20_000))
        .await
        .expect("r"));
    let never = s
        .claim_webhooks("x", at(1_000_000), at(2_000_000), 10)
        .await;
    assert!(
        never.expect("claim").is_empty(),
        "a dead delivery is not due"
    );

    // Redelivered: due at once from a fresh schedule, same id, its log kept.
    let again = s
        .redeliver_webhook(&event.id, at(10_000))
        .await
        .expect("redeliver")
        .expect("known");
    assert_eq!(
        (again.state, again.attempts, again.next_attempt_at),
        (DeliveryState::Pending, 0, Some(at(10_000)))
    );
    let d = s
        .claim_webhooks("d", at(10_000), at(20_000), 10)
        .await
        .expect("claim");
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].id.as_str(), d[0].log.len()), (event.id.as_str(), 2));
    assert!(s
        .redeliver_webhook("msg_unknown", at(10_000))
        .await
        .expect("redeliver")
        .is_none());
    assert_eq!(started.id, d[0].task_id);
}
