use std::sync::Arc;

use clap::Parser as _;
use gridwork_incident_intake::{App, Config, SERVICE};
use gridwork_runtime::clock::SystemClock;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = gridwork_runtime::telemetry::init(SERVICE, config.common.log_format)?;
    let app = App::build_with_vault(
        &config.common,
        Arc::new(SystemClock),
        config.rules(),
        config.contacts_database_url.clone(),
    )
    .await?;
    app.run_until_stopped(&config.common).await
}
