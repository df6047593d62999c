//! The shared circuit breaker against a real PostgreSQL: two `Breaker` values over one row
//! behave like two worker processes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use idp_events::StreamId;
use std::time::Duration;

use idp_events::EventStore;
use idp_events::jobs::{BreakerEvent, BreakerState};
use idp_worker::breaker::{self, Breaker, Permit};
use sqlx::PgPool;

async fn transitions(store: &EventStore) -> Vec<BreakerEvent> {
    store
        .read_stream(StreamId::breaker("downstream").as_str(), 1)
        .await
        .unwrap()
        .iter()
        .filter_map(BreakerEvent::from_recorded)
        .collect()
}

async fn state(pool: &PgPool) -> BreakerState {
    breaker::states(pool)
        .await
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == "downstream")
        .map(|(_, s)| s)
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn consecutive_failures_open_the_breaker_for_every_process_and_one_trial_call_closes_it(
    pool: PgPool,
) {
    let store = idp_testkit::keys::event_store(pool.clone());
    let open_for = Duration::from_millis(300);
    let one = Breaker::new("downstream", store.clone(), 3, open_for);
    let two = Breaker::new("downstream", store.clone(), 3, open_for);

    // A success in between resets the count: only consecutive failures open it.
    for _ in 0..2 {
        let permit = one.acquire().await.unwrap();
        assert_eq!(permit, Permit::Allowed);
        one.failure(permit, "timeout").await.unwrap();
    }
    two.success(two.acquire().await.unwrap()).await.unwrap();
    for _ in 0..2 {
        let permit = two.acquire().await.unwrap();
        two.failure(permit, "timeout").await.unwrap();
    }
    assert_eq!(state(&pool).await, BreakerState::Closed);
    let permit = one.acquire().await.unwrap();
    one.failure(permit, "503 from downstream").await.unwrap();
    assert_eq!(state(&pool).await, BreakerState::Open);

    // Open for both processes: refused without calling.
    for breaker in [&one, &two] {
        assert!(matches!(
            breaker.acquire().await.unwrap(),
            Permit::Refused { .. }
        ));
    }

    // After the cool-down, exactly one of them gets the trial call.
    tokio::time::sleep(open_for + Duration::from_millis(50)).await;
    let (a, b) = tokio::join!(one.acquire(), two.acquire());
    let permits = [a.unwrap(), b.unwrap()];
    assert_eq!(
        permits.iter().filter(|p| **p == Permit::Probe).count(),
        1,
        "{permits:?}"
    );
    assert!(permits.iter().any(|p| matches!(p, Permit::Refused { .. })));
    assert_eq!(state(&pool).await, BreakerState::HalfOpen);

    // The trial fails: open again. The next trial succeeds: closed.
    one.failure(Permit::Probe, "still down").await.unwrap();
    assert_eq!(state(&pool).await, BreakerState::Open);
    tokio::time::sleep(open_for + Duration::from_millis(50)).await;
    let probe = two.acquire().await.unwrap();
    assert_eq!(probe, Permit::Probe);
    two.success(probe).await.unwrap();
    assert_eq!(state(&pool).await, BreakerState::Closed);
    assert_eq!(one.acquire().await.unwrap(), Permit::Allowed);

    let events = transitions(&store).await;
    assert!(
        matches!(
            events.as_slice(),
            [
                BreakerEvent::CircuitOpened { failures: 3, .. },
                BreakerEvent::CircuitHalfOpened,
                BreakerEvent::CircuitOpened { .. },
                BreakerEvent::CircuitHalfOpened,
                BreakerEvent::CircuitClosed,
            ]
        ),
        "{events:?}"
    );
}
