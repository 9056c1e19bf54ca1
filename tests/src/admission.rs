//! Join admission scenarios more than one test runs.

use std::{sync::Arc, thread, time::Duration};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::{
    agent::Dataplane,
    craft::{self, Path},
    lab::DualHomedLab,
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};

/// Crafted packets over the client's second path to the server's first address, the way the
/// client's own joins go.
pub fn second_path(lab: &DualHomedLab) -> Result<Path<'_>> {
    let path = &lab.paths[1];
    Ok(Path {
        ns: &lab.client,
        iface: &path.client_if,
        mac: craft::mac(&lab.server, &path.server_if)?,
        src: path.client_addr,
        dst: lab.paths[0].server_addr,
    })
}

/// With the daemon running under `--admission verified` and `server` accepting one MPTCP
/// connection: while a real connection is held open, a join with its valid token and a made-up
/// HMAC (client port 41000) is flagged failed and its later packets dropped on the second
/// server interface, every real join is verified, and the real transfer completes.
pub fn forged_join_fails_under_verified(
    lab: &DualHomedLab,
    dataplane: &Dataplane<'_>,
    server: Server,
) -> Result<()> {
    let gate = Arc::new(Gate::default());
    let options =
        ClientOptions { proto: Proto::Mptcp, bytes: 200_000, wait_subflows: 1, hold: Some(gate.clone()) };
    let port = server.addr.port();
    thread::scope(|scope| -> Result<()> {
        let client = scope.spawn(|| transfer(&lab.client, server.addr, options));
        let forged = (|| -> Result<()> {
            gate.wait_for(1)?;
            let conns = dataplane.json(&["conns"])?;
            let token = conns[0]["server_token"].as_str().context("a live connection")?;
            let token = u32::from_str_radix(token.trim_start_matches("0x"), 16)?;
            craft::forged_join(&second_path(lab)?, port, token, 41000, 3)?;
            thread::sleep(Duration::from_millis(500));
            Ok(())
        })();
        gate.open();
        let done = client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        ensure!(done.bytes == 200_000, "the real connection lost data");
        forged
    })?;
    server.join()?;

    let subflows = dataplane.json(&["subflows"])?;
    let subflows = subflows.as_array().context("subflows")?;
    let forged = subflows
        .iter()
        .find(|s| s["client"].as_str().is_some_and(|c| c.ends_with(":41000")))
        .context("forged subflow")?;
    ensure!(forged["hmac"] == "failed", "the forged join was not flagged: {forged}");
    let real: Vec<&Value> = subflows.iter().filter(|s| s["kind"] == "join" && s != &forged).collect();
    ensure!(!real.is_empty() && real.iter().all(|s| s["hmac"] == "verified"), "{real:?}");
    let iface = &lab.paths[1].server_if;
    let stats = dataplane.stats(iface)?;
    let dropped = stats["ingress"]["packets_dropped_hmac"].as_u64().unwrap_or(0);
    ensure!(dropped >= 3, "{dropped} packets of the forged subflow dropped: {stats}");
    Ok(())
}
