//! Operator commands of `idp-worker`: `rebuild` and `verify`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use idp_events::EventStore;
use idp_events::chain::verify_streams;
use idp_events::subscription::{self, Handler, Subscription};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::projections::{self, AuditView, EventTypeCounts, UsersDirectory};

/// Empties projection `name` and replays the log into it, with a progress bar and a summary.
///
/// If a running worker holds the projection, the reset makes that worker replay, and this
/// command follows its progress; otherwise it replays here.
pub async fn rebuild(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let store = EventStore::new(pool.clone());
    match name {
        EventTypeCounts::NAME => rebuild_with(&store, projections::event_type_counts(&store)).await,
        UsersDirectory::NAME => rebuild_with(&store, projections::users_directory(&store)).await,
        AuditView::NAME => rebuild_with(&store, projections::audit_view(&store)).await,
        other => bail!(
            "no projection named {other:?}; known projections: {}",
            projections::NAMES.join(", ")
        ),
    }
}

async fn rebuild_with<H: Handler>(store: &EventStore, sub: Subscription<H>) -> anyhow::Result<()> {
    let pool = store.pool();
    let started = Instant::now();
    let head = store.head().await?.map(|c| c.position).unwrap_or_default();
    let total: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await?;
    subscription::reset(pool, sub.name(), sub.handler())
        .await
        .with_context(|| format!("while resetting {}", sub.name()))?;

    let bar = ProgressBar::new(u64::try_from(head).unwrap_or_default());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] position {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(sub.name().to_owned());

    let name = sub.name().to_owned();
    let follow_pool = pool.clone();
    let follow_bar = bar.clone();
    let mut follower = tokio::spawn(async move {
        loop {
            if let Ok(cursor) = subscription::checkpoint(&follow_pool, &name).await {
                follow_bar.set_position(u64::try_from(cursor.position).unwrap_or_default());
                if cursor.position >= head {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let handled = match sub.catch_up().await? {
        Some(handled) => handled,
        None => {
            bar.set_message(format!("{} (replayed by a running worker)", sub.name()));
            (&mut follower).await.context("while following progress")?;
            u64::try_from(total).unwrap_or_default()
        }
    };
    follower.abort();
    bar.finish_and_clear();
    let parked: i64 =
        sqlx::query_scalar("select count(*) from failed_events where subscription = $1")
            .bind(sub.name())
            .fetch_one(pool)
            .await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "rebuilt {}: {handled} events replayed in {:.1}s, {parked} parked",
        sub.name(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// Recomputes every stream's hash chain; fails (non-zero exit) on the first broken link.
pub async fn verify(pool: &PgPool, stream_prefix: Option<&str>) -> anyhow::Result<()> {
    let started = Instant::now();
    let report = verify_streams(pool, stream_prefix).await?;
    let mut out = std::io::stdout().lock();
    match &report.first_break {
        None => {
            writeln!(
                out,
                "intact: {} streams, {} events verified in {:.1}s",
                report.streams,
                report.events,
                started.elapsed().as_secs_f64()
            )?;
            Ok(())
        }
        Some(broken) => {
            writeln!(out, "BROKEN: {broken}")?;
            bail!("the event log failed verification")
        }
    }
}
