//! Running as a systemd service (`dist/peermirror.service`, `Type=notify`):
//! readiness once the node listens and its control socket is up, the
//! watchdog while its event loop answers, and notice of stopping. Every
//! call does nothing when `NOTIFY_SOCKET` is unset (not under systemd).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use peermirror::node::Node;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// Tells systemd the node is ready, and starts the watchdog if the unit
/// asks for one (`WatchdogSec=`).
pub async fn ready(node: &Arc<Node>) {
    let listening = node.listen_addrs().await.len();
    let status = format!("peer id {}, {listening} listen addresses", node.peer_id());
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    if let Some(timeout) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(node.clone(), timeout / 2));
    }
}

/// Pets the watchdog every `every` for as long as the network event loop
/// answers, so a node whose loop hangs is restarted.
async fn watchdog(node: Arc<Node>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let alive = tokio::time::timeout(every, node.client().listen_addrs())
            .await
            .is_ok_and(|a| !a.is_empty());
        if alive {
            notify(&[NotifyState::Watchdog]);
        } else {
            tracing::warn!(
                "the network event loop does not answer; the watchdog will restart the node"
            );
        }
    }
}

/// Tells systemd the node is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}
