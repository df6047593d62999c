//! `idp-api`: reads its configuration, starts the API, stops on Ctrl-C or SIGTERM.

use clap::Parser;
use idp_api::config::Config;
use idp_api::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _logs = idp_ops::telemetry::init(config.common.log_format)?;
    let shutdown = idp_ops::shutdown::on_signal();
    let app = Application::build(&config).await?;
    app.run_until_stopped(shutdown).await
}
