//! How long-running tasks stop: a watch channel that turns true (SIGTERM, SIGINT), awaited beside
//! their work.

use std::time::Duration;

use tokio::sync::watch;

/// Sleeps `delay` unless the daemon stops first; false when it stopped.
pub async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stopped(stop) => false,
    }
}

/// Returns once the daemon stops.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which is a stop as well.
    let _gone = stop.wait_for(|stop| *stop).await;
}
