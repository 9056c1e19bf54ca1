//! Crafted MPTCP packets, sent with scapy (Debian's python3-scapy) from inside a namespace:
//! forged joins and join floods the kernel would never send.

use std::net::IpAddr;

use anyhow::{Context as _, Result};

use crate::netns::Netns;

/// Debian's interpreter, which has scapy (a pyenv python on PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// argv: iface dst_mac src dst dport count token(hex or "random") first_sport
const JOIN_SYNS: &str = r#"
import os, random, sys
from scapy.all import Ether, IP, IPv6, TCP, sendp
iface, mac, src, dst, dport, count, token, sport = sys.argv[1:9]
ip = IPv6 if ":" in dst else IP
frames = []
for i in range(int(count)):
    tok = os.urandom(4) if token == "random" else bytes.fromhex(token)
    opt = bytes([0x10, 0x02]) + tok + os.urandom(4)
    frames.append(Ether(dst=mac) / ip(src=src, dst=dst) /
                  TCP(sport=int(sport) + i, dport=int(dport), flags="S", seq=random.getrandbits(32),
                      options=[("MSS", 1460), (30, opt)]))
sendp(frames, iface=iface, verbose=False)
print(len(frames))
"#;

/// argv: iface dst_mac src dst dport token(hex) sport extra_acks
/// A join whose third ACK carries a made-up HMAC, then more packets on the same subflow.
const FORGED_JOIN: &str = r#"
import os, random, sys
from scapy.all import Ether, IP, IPv6, TCP, sendp, srp1
iface, mac, src, dst, dport, token, sport, extra = sys.argv[1:9]
ip = IPv6 if ":" in dst else IP
seq = random.getrandbits(32)
syn = (Ether(dst=mac) / ip(src=src, dst=dst) /
       TCP(sport=int(sport), dport=int(dport), flags="S", seq=seq,
           options=[("MSS", 1460), (30, bytes([0x10, 0x02]) + bytes.fromhex(token) + os.urandom(4))]))
reply = srp1(syn, iface=iface, timeout=3, verbose=False)
if reply is None or not reply.haslayer(TCP) or (reply[TCP].flags & 0x12) != 0x12:
    sys.exit("no SYN-ACK: " + (reply.summary() if reply is not None else "timeout"))
ack = reply[TCP].seq + 1
base = Ether(dst=mac) / ip(src=src, dst=dst)
sendp(base / TCP(sport=int(sport), dport=int(dport), flags="A", seq=seq + 1, ack=ack,
                 options=[(30, bytes([0x10, 0x00]) + os.urandom(20))]), iface=iface, verbose=False)
for _ in range(int(extra)):
    sendp(base / TCP(sport=int(sport), dport=int(dport), flags="A", seq=seq + 1, ack=ack), iface=iface, verbose=False)
print("sent")
"#;

/// argv: iface pcap. Sends every frame of the capture as it is, in order.
const SEND_PCAP: &str = r#"
import sys
from scapy.all import rdpcap, sendp
frames = rdpcap(sys.argv[2])
sendp(frames, iface=sys.argv[1], verbose=False)
print(len(frames))
"#;

/// The MAC address of `iface` in `ns`.
pub fn mac(ns: &Netns, iface: &str) -> Result<String> {
    let out = ns.ip(&["-j", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_str(&out)?;
    links[0]["address"].as_str().map(str::to_owned).context("no MAC address in ip -j link")
}

/// Where crafted packets go: out of `iface` in `ns`, to `mac` (the next hop), between addresses.
pub struct Path<'a> {
    pub ns: &'a Netns,
    pub iface: &'a str,
    pub mac: String,
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// Sends `count` MP_JOIN SYNs (token `None`: random per packet) to `dport`, from consecutive
/// source ports starting at `sport`.
pub fn join_syns(path: &Path<'_>, dport: u16, count: usize, token: Option<u32>, sport: u16) -> Result<()> {
    let token = token.map_or_else(|| "random".to_owned(), |t| format!("{t:08x}"));
    path.ns.exec(
        PYTHON,
        &[
            "-c",
            JOIN_SYNS,
            path.iface,
            &path.mac,
            &path.src.to_string(),
            &path.dst.to_string(),
            &dport.to_string(),
            &count.to_string(),
            &token,
            &sport.to_string(),
        ],
    )?;
    Ok(())
}

/// Sends the frames of the Ethernet capture `pcap` out of `iface` in `ns`, in order, as they are.
pub fn send_pcap(ns: &Netns, iface: &str, pcap: &std::path::Path) -> Result<()> {
    let pcap = pcap.to_str().context("capture path is not UTF-8")?;
    ns.exec(PYTHON, &["-c", SEND_PCAP, iface, pcap])?;
    Ok(())
}

/// Joins connection `token` with a made-up third-ACK HMAC from `sport`, then sends `extra`
/// more packets on that subflow.
pub fn forged_join(path: &Path<'_>, dport: u16, token: u32, sport: u16, extra: usize) -> Result<()> {
    path.ns.exec(
        PYTHON,
        &[
            "-c",
            FORGED_JOIN,
            path.iface,
            &path.mac,
            &path.src.to_string(),
            &path.dst.to_string(),
            &dport.to_string(),
            &format!("{token:08x}"),
            &sport.to_string(),
            &extra.to_string(),
        ],
    )?;
    Ok(())
}
