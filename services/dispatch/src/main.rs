use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use gridwork_dispatch::{App, Config, SERVICE};
use gridwork_runtime::clock::SystemClock;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = gridwork_runtime::telemetry::init(SERVICE, config.common.log_format)?;
    let tick = Duration::from_millis(config.deadline_tick_ms);
    let app = App::build(&config.common, Arc::new(SystemClock), tick).await?;
    app.run_until_stopped(&config.common).await
}
