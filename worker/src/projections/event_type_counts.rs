//! `event_type_counts`: how many events of each type the log holds, and the latest of each.
//! Answers "what is happening in the system" without scanning the log.

use idp_events::RecordedEvent;
use idp_events::subscription::{Handler, HandlerError};
use sqlx::PgConnection;

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventTypeCounts;

impl EventTypeCounts {
    /// Subscription name.
    pub const NAME: &'static str = "event_type_counts";
}

impl super::Projection for EventTypeCounts {
    // The inherent constant, which callers use without importing the trait.
    const NAME: &'static str = EventTypeCounts::NAME;
}

impl Handler for EventTypeCounts {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query(
            "insert into event_type_counts (event_type, events, last_position, last_recorded_at)
             values ($1, 1, $2, $3)
             on conflict (event_type) do update
                set events = event_type_counts.events + 1,
                    last_position = greatest(event_type_counts.last_position, excluded.last_position),
                    last_recorded_at = greatest(event_type_counts.last_recorded_at, excluded.last_recorded_at)",
        )
        .bind(&event.event_type)
        .bind(event.position)
        .bind(event.recorded_at)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        sqlx::query("delete from event_type_counts")
            .execute(conn)
            .await?;
        Ok(())
    }
}
