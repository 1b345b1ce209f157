//! The orchestrator's background rounds: unload idle models, ping workers and kill the
//! ones that hang.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::models::ModelManager;

pub fn start(models: Arc<ModelManager>, ping_interval: Duration) {
    let ping_interval = ping_interval.max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ping_interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ping = Instant::now();
        loop {
            tick.tick().await;
            models.unload_idle().await;
            if last_ping.elapsed() >= ping_interval {
                last_ping = Instant::now();
                models.check_workers().await;
            }
        }
    });
}
