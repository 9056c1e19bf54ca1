//! `mptcp-agent top` in an 80x24 pseudo-terminal (tmux) during real MPTCP transfers: what it
//! shows against the kernel's `ss`, rates that move, sorting, filtering, a narrower terminal, and
//! the terminal left as it was after `q` and after an error.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    agent::{self, Daemon, Dataplane},
    kernel,
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    netns::Netns,
    tmux::Tmux,
    traffic::{Proto, Server, send_for},
};

const TRANSFER: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(10);

/// `top` in a shell that says when it starts and how it ended, and shows the terminal's modes.
fn top_session(ns: &Netns, instance: &str, width: u16) -> Result<Tmux> {
    let agent = agent::binary();
    let agent = agent.to_str().context("agent path")?;
    Tmux::start(
        width,
        24,
        &format!(
            "echo top-starting; nsenter --net={} {agent} top --instance {instance} --interval 250; \
             echo \"top exited $?\"; stty -a; sleep 60",
            ns.path()
        ),
    )
}

/// The table's lines: connections start with their token, subflows with a space.
fn connection_lines(screen: &str) -> Vec<Vec<&str>> {
    screen.lines().filter(|l| l.starts_with("0x")).map(|l| l.split_whitespace().collect()).collect()
}

fn subflow_lines(screen: &str) -> Vec<Vec<&str>> {
    screen
        .lines()
        .filter(|l| l.starts_with(' ') && l.contains('>'))
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// A connection line's fields: token, "N", "subflows", state, c2s/s, s2c/s, c2s, s2c.
const C2S_RATE: usize = 4;
const C2S_BYTES: usize = 6;

fn heading(screen: &str) -> &str {
    screen.lines().next().unwrap_or_default().trim_end()
}

fn tokens(screen: &str) -> Vec<String> {
    connection_lines(screen).iter().map(|fields| fields[0].to_owned()).collect()
}

/// Reads back `human` numbers (999, 1.2k, 12M, ...).
fn number(text: &str) -> Option<f64> {
    let (digits, scale) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1e3),
        'M' => (&text[..text.len() - 1], 1e6),
        'G' => (&text[..text.len() - 1], 1e9),
        _ => (text, 1.0),
    };
    Some(digits.parse::<f64>().ok()? * scale)
}

/// Reads back an srtt (45u, 1.2m, 1.5s) in us.
fn srtt_us(text: &str) -> Option<f64> {
    let scale = match text.chars().last()? {
        'u' => 1.0,
        'm' => 1e3,
        's' => 1e6,
        _ => return None,
    };
    Some(text[..text.len() - 1].parse::<f64>().ok()? * scale)
}

fn field(line: &[&str], index: usize) -> Result<f64> {
    line.get(index).and_then(|f| number(f)).with_context(|| format!("field {index} of {line:?}"))
}

/// Two connections, each with two subflows, all sending.
fn ready(screen: &str) -> bool {
    let connections = connection_lines(screen);
    connections.len() == 2
        && subflow_lines(screen).len() == 4
        && connections.iter().all(|c| c.len() > C2S_BYTES && field(c, C2S_RATE).is_ok_and(|r| r > 0.0))
}

/// Per subflow (local, peer) of `ns`: bytes_sent and rtt (ms) as `ss -tin` reports them.
fn kernel_sent(ns: &Netns) -> Result<BTreeMap<(SocketAddr, SocketAddr), (f64, f64)>> {
    let out = ns.exec("ss", &["-tinH", "state", "established"])?;
    let mut sockets = BTreeMap::new();
    let mut ends = None;
    for line in out.lines() {
        if !line.starts_with(char::is_whitespace) {
            let mut addrs = line.split_whitespace().filter_map(kernel::parse_addr);
            ends = addrs.next().zip(addrs.next());
            continue;
        }
        let value = |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name));
        if let (Some(ends), Some(sent), Some(rtt)) = (ends, value("bytes_sent:"), value("rtt:")) {
            let rtt = rtt.split('/').next().unwrap_or_default();
            sockets.insert(ends, (sent.parse()?, rtt.parse()?));
        }
    }
    Ok(sockets)
}

/// After `q` or an error: the shell's screen is back, raw mode off, cursor shown.
fn check_restored(tmux: &Tmux, status: &str) -> Result<String> {
    let exited = format!("top exited {status}");
    let screen = tmux.wait_for(WAIT, &exited, |s| s.contains(&exited) && s.contains("icanon"))?;
    ensure!(screen.contains("top-starting"), "the shell's output before top is gone:\n{screen}");
    ensure!(tmux.format("#{alternate_on}")? == "0", "still on the alternate screen:\n{screen}");
    ensure!(tmux.format("#{cursor_flag}")? == "1", "the cursor is hidden");
    let modes: Vec<&str> = screen.split_whitespace().collect();
    ensure!(
        modes.contains(&"icanon") && modes.contains(&"echo") && !modes.contains(&"-icanon"),
        "the terminal is still raw:\n{screen}"
    );
    Ok(screen)
}

#[test]
fn top_follows_a_transfer_sorts_filters_and_restores_the_terminal() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    // Rates a 2-core machine keeps steady, and transfers that last.
    lab.shape_client("10mbit")?;
    let dataplane = Dataplane::attach(&lab.client, &lab.client_ifaces())?;
    // --cc none: the sock_ops program records windows and RTTs and changes nothing.
    let daemon = Daemon::start(&dataplane, &["--cc", "none"])?;
    let server = Server::start(&lab.server, lab.server_addr(0, 5610), Proto::Mptcp, 2)?;
    let tmux = top_session(&lab.client, dataplane.instance(), 80)?;
    thread::scope(|scope| -> Result<()> {
        let (client, addr) = (&lab.client, server.addr);
        let senders = [0, 1].map(|_| scope.spawn(move || send_for(client, addr, Proto::Mptcp, TRANSFER)));
        during_the_transfers(&lab, &tmux)?;
        for sender in senders {
            sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
        }
        Ok(())
    })?;
    server.join()?;
    // Done: every rate falls to zero, the bytes stay.
    let screen = tmux.wait_for(WAIT, "zero rates", |s| {
        let connections = connection_lines(s);
        connections.len() == 2 && connections.iter().all(|c| field(c, C2S_RATE).is_ok_and(|r| r == 0.0))
    })?;
    for line in connection_lines(&screen) {
        ensure!(field(&line, C2S_BYTES)? > 1e6, "the bytes went with the rate: {line:?}");
    }
    tmux.keys(&["q"])?;
    check_restored(&tmux, "0")?;
    // Ctrl-C quits the same way (raw mode turns it into a key, not a signal).
    let tmux = top_session(&lab.client, dataplane.instance(), 80)?;
    tmux.wait_for(WAIT, "the table", |s| connection_lines(s).len() == 2)?;
    tmux.keys(&["C-c"])?;
    check_restored(&tmux, "0")?;

    // An error while it runs (the pins go away under it) restores the terminal too.
    let tmux = top_session(&lab.client, dataplane.instance(), 80)?;
    tmux.wait_for(WAIT, "the table", |s| connection_lines(s).len() == 2)?;
    drop(daemon);
    drop(dataplane);
    let screen = check_restored(&tmux, "1")?;
    ensure!(screen.contains("error: reading the congestion state"), "no error shown:\n{screen}");
    Ok(())
}

fn during_the_transfers(lab: &DualHomedLab, tmux: &Tmux) -> Result<()> {
    let screen = tmux.wait_for(WAIT, "two sending connections of two subflows", ready)?;
    println!("{screen}");
    // The subflows and tokens the kernel has: ss on the client (local = client) and the server.
    let kernel_subflows: BTreeSet<(SocketAddr, SocketAddr)> =
        kernel::subflows(&lab.client)?.iter().map(|s| (s.local, s.peer)).collect();
    let shown: BTreeSet<(SocketAddr, SocketAddr)> = subflow_lines(&screen)
        .iter()
        .map(|fields| {
            let (client, server) = fields[0].split_once('>').context("client>server")?;
            Ok((client.parse()?, server.parse()?))
        })
        .collect::<Result<_>>()?;
    ensure!(shown == kernel_subflows, "top shows {shown:?}, ss -M {kernel_subflows:?}:\n{screen}");
    let kernel_tokens: BTreeSet<String> =
        kernel::connection_tokens(&lab.server)?.iter().map(|t| format!("{t:#010x}")).collect();
    let shown_tokens: BTreeSet<String> = tokens(&screen).into_iter().collect();
    ensure!(shown_tokens == kernel_tokens, "top shows {shown_tokens:?}, the server's ss {kernel_tokens:?}");

    // Sorted by rate at first: the faster connection on top.
    let rates = connection_lines(&screen).iter().map(|c| field(c, C2S_RATE)).collect::<Result<Vec<_>>>()?;
    ensure!(rates[0] >= rates[1], "not sorted by rate: {rates:?}\n{screen}");

    // 80 columns: every column, whole addresses, srtt and cwnd from the sock_ops records.
    let header = screen.lines().find(|l| l.starts_with("path")).context("no header")?;
    let titles: Vec<&str> = header.split_whitespace().collect();
    ensure!(titles == ["path", "state", "c2s/s", "s2c/s", "c2s", "s2c", "rtt", "cwnd", "fl"], "{header}");
    for subflow in subflow_lines(&screen) {
        ensure!(subflow.len() >= 8 && subflow[1] == "estab", "{subflow:?}");
        ensure!(srtt_us(subflow[6]).is_some_and(|us| us > 0.0), "no srtt: {subflow:?}");
        ensure!(field(&subflow, 7)? > 0.0, "no cwnd: {subflow:?}");
    }

    // The rates are measured between reads: both connections move bytes between two screens.
    let before = connection_lines(&screen).iter().map(|c| field(c, C2S_BYTES)).collect::<Result<Vec<_>>>()?;
    thread::sleep(Duration::from_secs(1));
    let screen = tmux.screen()?;
    let kernel = kernel_sent(&lab.client)?;
    let after = connection_lines(&screen).iter().map(|c| field(c, C2S_BYTES)).collect::<Result<Vec<_>>>()?;
    let (before, after): (f64, f64) = (before.iter().sum(), after.iter().sum());
    ensure!(after > before + 0.5e6, "{before} then {after} bytes in a second at 2x10 Mbit/s:\n{screen}");
    println!("bytes c2s shown: {before} then {after} one second later");
    // Against the shapers: two paths of 10 Mbit/s (1.25 MB/s) each carry both connections. The
    // tracker counts at tc egress, before the shapers, so what they drop counts too: a sender in
    // slow start sends two segments per ACK, up to twice the shaped rate (one run showed
    // 3.9 MB/s), plus the two queues (125 KB each at 100 ms).
    let rate: f64 = connection_lines(&screen).iter().map(|c| field(c, C2S_RATE)).sum::<Result<f64>>()?;
    println!("c2s rate shown: {rate} B/s");
    ensure!((1e6..5.3e6).contains(&rate), "{rate} B/s through 2x10 Mbit/s:\n{screen}");

    // Selecting a subflow shows it in full below the table.
    tmux.keys(&["Down"])?;
    let screen = tmux.wait_for(WAIT, "a subflow's details", |s| s.contains(" hmac ") && s.contains(" > "))?;
    ensure!(screen.contains("srtt"), "the selected subflow's congestion state:\n{screen}");

    // Each subflow's c2s bytes against the client's `ss -ti` bytes_sent (the tracker counts at
    // tc egress, before the shaper: retransmissions included), read up to one interval later.
    for subflow in subflow_lines(&screen) {
        let (client, server) = subflow[0].split_once('>').context("client>server")?;
        let ends: (SocketAddr, SocketAddr) = (client.parse()?, server.parse()?);
        let (sent, rtt_ms) = *kernel.get(&ends).with_context(|| format!("{ends:?} not in ss"))?;
        let shown = field(&subflow, 4)?;
        println!("{ends:?}: top {shown} B, ss bytes_sent {sent}; srtt top {}, ss {rtt_ms} ms", subflow[6]);
        ensure!(
            (shown - sent).abs() <= 0.1 * sent + 400e3,
            "top {shown} B, ss bytes_sent {sent}: {subflow:?}"
        );
    }

    // Sorting: s cycles rate -> bytes -> token; r reverses.
    tmux.keys(&["s"])?;
    tmux.wait_for(WAIT, "sort bytes", |s| s.contains("sort bytes"))?;
    tmux.keys(&["s"])?;
    let screen =
        tmux.wait_for(WAIT, "sort token", |s| heading(s).ends_with("sort token") && tokens(s).len() == 2)?;
    let ascending = tokens(&screen);
    let mut sorted = ascending.clone();
    sorted.sort();
    ensure!(ascending == sorted, "sorted by token: {ascending:?}");
    tmux.keys(&["r"])?;
    let screen =
        tmux.wait_for(WAIT, "reversed", |s| heading(s).ends_with("reversed") && tokens(s).len() == 2)?;
    let descending = tokens(&screen);
    ensure!(
        descending == [ascending[1].clone(), ascending[0].clone()],
        "{ascending:?} reversed: {descending:?}"
    );

    // Filtering by token hides the other connection; Esc shows it again.
    tmux.keys(&["/"])?;
    tmux.type_text(&ascending[0])?;
    tmux.keys(&["Enter"])?;
    let screen = tmux.wait_for(WAIT, "one connection", |s| tokens(s) == [ascending[0].clone()])?;
    ensure!(subflow_lines(&screen).len() == 2, "the filtered connection's subflows:\n{screen}");
    tmux.keys(&["Escape"])?;
    tmux.wait_for(WAIT, "both connections", |s| tokens(s).len() == 2)?;
    // By address: the second path's client address is in one subflow of each connection.
    tmux.keys(&["/"])?;
    tmux.type_text("198.51.100.1:")?;
    tmux.wait_for(WAIT, "both connections", |s| tokens(s).len() == 2)?;
    tmux.keys(&["Escape"])?;
    // The filter closed before the next key: an Esc and an arrow sent together read as one
    // escape sequence.
    tmux.wait_for(WAIT, "the keys line", |s| s.contains("up/down select q quit"))?;

    // Narrower: the byte columns go, nothing wraps.
    tmux.resize(60, 24)?;
    let screen = tmux.wait_for(WAIT, "the 60-column layout", |s| {
        s.lines().any(|l| l.starts_with("path") && !l.contains("c2s ") && l.contains("rtt"))
    })?;
    ensure!(subflow_lines(&screen).len() == 4 && tokens(&screen).len() == 2, "wrapped rows:\n{screen}");
    tmux.resize(80, 24)?;
    Ok(())
}
