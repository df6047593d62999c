//! `idp-worker`: runs projections (default), or an operator command.

use clap::Parser;
use idp_ops::database::connect;
use idp_worker::config::{Command, Config};
use idp_worker::startup::Worker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _logs = idp_ops::telemetry::init(config.common.log_format)?;
    match &config.command {
        None | Some(Command::Run) => {
            let shutdown = idp_ops::shutdown::on_signal();
            Worker::build(&config)
                .await?
                .run_until_stopped(shutdown)
                .await
        }
        Some(Command::Rebuild { name }) => {
            let pool = connect(&config.common).await?;
            idp_events::migrations::run(&pool).await?;
            let store = config.common.event_store(pool.clone()).await?;
            idp_worker::cli::rebuild(&store, name).await
        }
        Some(Command::Verify {
            stream_prefix,
            expect_seal,
        }) => {
            let pool = connect(&config.common).await?;
            let keys_dir = &config.common.seal_keys_dir;
            idp_worker::cli::verify(&pool, stream_prefix.as_deref(), keys_dir, *expect_seal).await
        }
        Some(Command::SealPublicKeys { out_dir }) => {
            idp_worker::cli::seal_public_keys(&config.common.seal_keys_dir, out_dir)
        }
        Some(Command::HardenDatabases { rotate_passwords }) => {
            let pool = connect(&config.common).await?;
            idp_events::migrations::run(&pool).await?;
            let driver = idp_worker::startup::database_driver(&config, &pool)?;
            let store = config.common.event_store(pool.clone()).await?;
            idp_worker::cli::harden_databases(&store, &driver, *rotate_passwords).await
        }
        Some(Command::Privacy { action }) => {
            let pool = connect(&config.common).await?;
            idp_events::migrations::run(&pool).await?;
            let store = config.common.event_store(pool).await?;
            idp_worker::cli::privacy(&store, action).await
        }
        Some(Command::Replay { stream, until }) => {
            let pool = connect(&config.common).await?;
            let store = config.common.event_store(pool).await?;
            idp_worker::cli::replay(&store, stream, *until).await
        }
    }
}
