//! Operator commands of `idp-worker`: `rebuild`, `verify`, `seal-public-keys`, `replay` and
//! `harden-databases`.

use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use idp_events::EventStore;
use idp_events::seal::{Anchor, PublicKeys, VerifyOptions, public_pem, verify_log};
use idp_events::subscription::{self, Handler, Subscription};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::projections::{self, Projection, Visit};
use crate::provision::drivers::{DatabaseDriver, Password, close_own_database};
use crate::provision::harden::{self, DatabaseReport, Outcome};

/// Empties projection `name` and replays the log into it, with a progress bar and a summary.
///
/// If a running worker holds the projection, the reset makes that worker replay, and this
/// command follows its progress; otherwise it replays here.
pub async fn rebuild(store: &EventStore, name: &str) -> anyhow::Result<()> {
    /// The rebuild of the projection called `name`, once found.
    struct Find<'a> {
        store: &'a EventStore,
        name: &'a str,
        rebuild: Option<Pin<Box<dyn Future<Output = anyhow::Result<()>> + 'a>>>,
    }
    impl Visit for Find<'_> {
        fn visit<P: Projection>(&mut self) {
            if P::NAME == self.name {
                self.rebuild = Some(Box::pin(rebuild_with(
                    self.store,
                    P::subscription(self.store),
                )));
            }
        }
    }
    let mut find = Find {
        store,
        name,
        rebuild: None,
    };
    projections::for_each(&mut find);
    match find.rebuild {
        Some(rebuild) => rebuild.await,
        None => bail!(
            "no projection named {name:?}; known projections: {}",
            projections::names().join(", ")
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

/// Recomputes every stream's hash chain and every seal (links, signatures against the keys in
/// `keys_dir`, public or private PEMs, digests against the events), prints a summary, and fails
/// (non-zero exit) naming the first problem.
pub async fn verify(
    pool: &PgPool,
    stream_prefix: Option<&str>,
    keys_dir: &Path,
    expect_seal: Option<Anchor>,
) -> anyhow::Result<()> {
    let keys = PublicKeys::load_dir(keys_dir).with_context(|| {
        format!(
            "while reading the seal keys in SEAL_KEYS_DIR {}",
            keys_dir.display()
        )
    })?;
    let options = VerifyOptions {
        stream_prefix: stream_prefix.map(str::to_owned),
        expect_seal,
        batch_size: 0,
    };
    let report = verify_log(pool, &keys, &options).await?;
    let secs = report.duration.as_secs_f64();
    #[allow(clippy::cast_precision_loss)] // a rate for people to read
    let rate = report.events as f64 / secs.max(1e-9);
    let summary = format!(
        "{} streams, {} events, {} seals ({} events sealed); {}; verified in {secs:.1}s ({rate:.0} events/s)",
        report.streams,
        report.events,
        report.seals,
        report.sealed_events,
        report.unsealed_summary(),
    );
    let mut out = std::io::stdout().lock();
    let problems = report.problems();
    let Some(first) = problems.first() else {
        writeln!(out, "intact: {summary}")?;
        return Ok(());
    };
    for problem in &problems {
        writeln!(out, "BROKEN: {}", problem.detail)?;
    }
    writeln!(out, "checked: {summary}")?;
    bail!("the event log failed verification: {}", first.detail)
}

/// Writes the public half of every key in `keys_dir` to `out_dir` as `<kid>.pem` (SPKI PEM),
/// so verifiers can be given the keys without being able to sign; prints one line per key.
/// A file already there with the same key is left alone; one with another key is an error,
/// since it would make the kid ambiguous.
pub fn seal_public_keys(keys_dir: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let keys = PublicKeys::load_dir(keys_dir).with_context(|| {
        format!(
            "while reading the seal keys in SEAL_KEYS_DIR {}",
            keys_dir.display()
        )
    })?;
    if keys.is_empty() {
        bail!("SEAL_KEYS_DIR {} holds no seal key", keys_dir.display());
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("while creating {}", out_dir.display()))?;
    let mut out = std::io::stdout().lock();
    for (kid, key) in keys.iter() {
        let pem = public_pem(key).with_context(|| format!("while encoding the key {kid}"))?;
        let path = out_dir.join(format!("{kid}.pem"));
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == pem => {
                writeln!(out, "{kid}: {} (unchanged)", path.display())?;
                continue;
            }
            Ok(_) => bail!(
                "{} already holds another key; the key {kid} was not written",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("while reading {}", path.display())),
        }
        std::fs::write(&path, &pem).with_context(|| format!("while writing {}", path.display()))?;
        writeln!(out, "{kid}: {}", path.display())?;
    }
    Ok(())
}

/// Prints the history of `stream_id` (all of it, or up to `until`), one line per event, then the
/// state of its aggregate folded from those events as pretty JSON. Fails (non-zero exit) if the
/// stream has no events at all.
pub async fn replay(
    store: &EventStore,
    stream_id: &str,
    until: Option<idp_events::replay::Until>,
) -> anyhow::Result<()> {
    let history = store
        .read_stream(stream_id, 1)
        .await
        .with_context(|| format!("while reading stream {stream_id:?}"))?;
    if history.is_empty() {
        bail!("no stream named {stream_id:?}: it has no events");
    }
    let events = match until {
        Some(until) => idp_events::replay::events_until(&history, until),
        None => &history,
    };
    let mut out = std::io::stdout().lock();
    match until {
        Some(until) => writeln!(
            out,
            "stream {stream_id}: {} of {} events, until {until}",
            events.len(),
            history.len()
        )?,
        None => writeln!(out, "stream {stream_id}: {} events", events.len())?,
    }
    writeln!(
        out,
        "{:>10}  {:>7}  {:<27}  {:<30}  {:<43}  data",
        "position", "version", "recorded_at", "type", "actor"
    )?;
    for event in events {
        let actor = event
            .metadata
            .get("actor")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("-");
        let mut data = event.data.clone();
        idp_events::privacy::fields::unmark(&mut data);
        writeln!(
            out,
            "{:>10}  {:>7}  {:<27}  {:<30}  {:<43}  {}",
            event.position,
            event.stream_version,
            event
                .recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            event.event_type,
            actor,
            data
        )?;
    }
    let version = events.last().map_or(0, |e| e.stream_version);
    match idp_events::replay::state_of(stream_id, events) {
        Some(state) => {
            writeln!(out, "\nstate at version {version}:")?;
            writeln!(out, "{}", serde_json::to_string_pretty(&state)?)?;
        }
        None if events.is_empty() => writeln!(out, "\nno state: the stream had no events yet")?,
        None => writeln!(
            out,
            "\nno state: no aggregate is known for streams like this"
        )?,
    }
    Ok(())
}

/// Applies the `database` driver's isolation to every provisioned project database, and with
/// `rotate_passwords` sets their passwords with the current key; prints what it finds about
/// idp's own database, one line per project database and a summary. Fails (non-zero exit) if
/// any database could not be hardened. Safe to repeat.
pub async fn harden_databases(
    store: &EventStore,
    driver: &DatabaseDriver,
    rotate_passwords: bool,
) -> anyhow::Result<()> {
    let pool = store.pool();
    let own = close_own_database(pool)
        .await
        .context("while closing idp's own database to PUBLIC")?;
    {
        let mut out = std::io::stdout().lock();
        if own.closed_now {
            writeln!(
                out,
                "idp's database {:?}: PUBLIC may no longer connect (CONNECT granted to {:?})",
                own.name, own.role
            )?;
        } else if own.public_may_connect {
            writeln!(
                out,
                "WARNING idp's database {:?}: PUBLIC may connect and {:?} may not change that; \
                 project logins on this server are refused until its owner revokes it",
                own.name, own.role
            )?;
        } else {
            writeln!(out, "idp's database {:?}: closed to PUBLIC", own.name)?;
        }
    }
    let password = if rotate_passwords {
        Password::Rotate
    } else {
        Password::Keep
    };
    let mut write_error = None;
    let summary = harden::harden_databases(store, driver, password, |report| {
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "{}", describe(report)) {
            write_error.get_or_insert(e);
        }
    })
    .await?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} project databases hardened ({} passwords rotated), {} not on the server, {} failed",
        summary.hardened, summary.rotated, summary.missing, summary.failed
    )?;
    if summary.failed > 0 {
        bail!(
            "{} project databases could not be hardened (see above)",
            summary.failed
        );
    }
    Ok(())
}

/// One line of `harden-databases`.
fn describe(report: &DatabaseReport) -> String {
    let what = match &report.outcome {
        Outcome::Hardened {
            rotated_to: Some(key),
            ..
        } => format!("hardened; password rotated to key {key:?}"),
        Outcome::Hardened {
            rotated_to: None,
            needs_rotation: Some(why),
        } => format!("hardened; {why}: run again with --rotate-passwords so the owner can have it"),
        Outcome::Hardened { .. } => "hardened".to_owned(),
        Outcome::Missing => "no role or database on the server; nothing to do".to_owned(),
        Outcome::Failed(reason) => format!("FAILED: {reason}"),
    };
    format!(
        "{} (project {} {:?}): {what}",
        report.database, report.project_id, report.project_name
    )
}

/// `idp-worker privacy ...`: re-wraps the data keys under the current key-encryption key, or
/// re-applies the erasures the log records; prints what it did.
pub async fn privacy(
    store: &EventStore,
    action: &crate::config::PrivacyCommand,
) -> anyhow::Result<()> {
    let keys = store
        .subject_keys()
        .context("the event store has no personal data keys")?;
    let mut out = std::io::stdout().lock();
    match action {
        crate::config::PrivacyCommand::RotateKek { batch } => {
            let current = keys.keks().current_id().to_owned();
            let done = keys
                .rewrap_all(*batch, |done, total| {
                    eprintln!("rotate-kek: {done}/{total} data keys re-wrapped");
                })
                .await
                .context("while re-wrapping the data keys")?;
            writeln!(
                out,
                "rotate-kek: {done} data keys re-wrapped; every key is now under {current:?}"
            )?;
        }
        crate::config::PrivacyCommand::ReapplyErasures => {
            let done = keys
                .reapply_erasures()
                .await
                .context("while re-applying the erasures of the log")?;
            writeln!(
                out,
                "reapply-erasures: {done} data keys of erased people destroyed again"
            )?;
        }
    }
    Ok(())
}
