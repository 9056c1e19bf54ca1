//! The token-steering load balancer, on its client-facing interfaces: at XDP, or at tcx ingress
//! where XDP does not pay (veth: a generic-XDP redirect drops GSO packets, and native XDP
//! redirects into a veth only if its peer runs XDP).
//!
//! Packets to a VIP go to a backend by direct server return at L2: the destination MAC becomes
//! the backend's and the frame is redirected out of the backend's interface, the IP packet left
//! alone. A new flow is placed by the VIP's Maglev table, an MP_JOIN SYN where its token says;
//! the SYN records it in the half-open table, and the client's first ACK moves it to the flow
//! table, so that SYNs that are never confirmed (a flood) push out only one another. The ACK
//! confirming an MP_CAPABLE flow is its third ACK: the token is computed from it then, and only
//! then. Packets of flows neither table holds go by Maglev and are recorded nowhere.
//!
//! Behind ECMP, several instances share the work: packets to a backend's join address go to it
//! from configuration alone; tokens and confirmed flows go into the sync ring, which the agent's
//! sync daemon sends to the peers (and stores theirs here by the same rules).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_SHOT, tcx_action_base::TCX_NEXT, xdp_action},
    helpers::generated::{bpf_ktime_get_ns, bpf_redirect},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use mptcp_common::{
    keys::version_key_digest_in,
    lb::{
        LbCollision, LbFlow, LbToken, MAGLEV_SIZE, NO_BACKEND, TokenLearn, VipKey, backend_state, flow_kind,
        maglev_slot, steering, sync_kind, token_learn, token_origin, unknown_token,
    },
    maps::{AddrKey, FlowKey, addr_bytes},
    mptcp::{MpCapable, MpJoin, subtype},
    tcp,
};
use mptcp_ebpf::{
    packet::{Packet, find_mptcp_option, load_options, parse_tcp, set_macs},
    tables::{admit_source, promote},
};

use crate::maps::{
    DIGEST_SCHEDULE, LB_BACKENDS, LB_COLLISIONS, LB_FLOWS, LB_HALF_OPEN, LB_JOIN_ADDRS, LB_LEARN_RATE,
    LB_MAGLEV, LB_SYNC_EVENTS, LB_TOKENS, LB_UNKNOWN_TOKENS, LB_VIPS, backend_counters, lb_counters, scratch,
    settings,
};

/// `mptcp_lb_place`'s answer for a join SYN dropped so that its retransmission finds the token.
const DEFER: u32 = NO_BACKEND - 1;

/// What to do with a packet.
enum Action {
    /// Not for a VIP (or not TCP): the stack's.
    Pass,
    /// For a VIP without a backend.
    Drop,
    /// Out of this interface, its Ethernet addresses rewritten.
    Redirect(u32),
}

#[xdp]
pub fn mptcp_lb(ctx: XdpContext) -> u32 {
    match balance(&ctx) {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        // SAFETY: plain helper call; it returns the program's verdict.
        Action::Redirect(ifindex) => unsafe { bpf_redirect(ifindex, 0) as u32 },
    }
}

#[classifier]
pub fn mptcp_lb_tc(ctx: TcContext) -> i32 {
    match balance(&ctx) {
        Action::Pass => TCX_NEXT,
        Action::Drop => TC_ACT_SHOT,
        // SAFETY: plain helper call; it returns the program's verdict.
        Action::Redirect(ifindex) => unsafe { bpf_redirect(ifindex, 0) as i32 },
    }
}

#[inline(always)]
fn balance(packet: &impl Packet) -> Action {
    match classify(packet) {
        None => Action::Pass,
        Some(DEFER) => Action::Drop,
        Some(backend) => forward(packet, backend),
    }
}

/// The backend slot of a packet for a VIP; None for anything else.
#[inline(always)]
fn classify(ctx: &impl Packet) -> Option<u32> {
    let counters = lb_counters()?;
    counters.packets += 1;
    let scratch = scratch()?;
    let segment = &mut scratch.segment;
    parse_tcp(ctx, segment)?;
    let opens = tcp::opens(segment.flags);
    let (key, _) = FlowKey::new(segment.family, segment.src, segment.sport, segment.dst, segment.dport);
    // The flow table first: a confirmed flow is a VIP's (VIPs are set when the balancer starts
    // and never removed), so an established packet makes this one lookup.
    let mut reopens_join = false;
    if let Some(flow) = LB_FLOWS.get_ptr_mut(&key) {
        // SAFETY: map value pointer from a successful lookup.
        let flow = unsafe { &mut *flow };
        // A retransmitted SYN keeps its backend, but a join is placed by its token every time:
        // the same 4-tuple may carry a new subflow.
        if !opens || flow.kind != flow_kind::JOIN {
            flow.packets += 1;
            return Some(flow.backend);
        }
        reopens_join = true;
    }
    let vip_key =
        VipKey { addr: addr_bytes(segment.dst), port: segment.dport, family: segment.family, _pad: [0; 5] };
    let Some(vip) = LB_VIPS.get_ptr(&vip_key) else {
        return join_address(ctx, counters);
    };
    // SAFETY: map value pointer from a successful lookup.
    let vip = unsafe { *vip };
    load_options(ctx, &scratch.segment, &mut scratch.options)?;
    Some(mptcp_lb_place(vip.index, vip.steering, u32::from(reopens_join)))
}

/// The backend whose join address the packet in scratch memory goes to; None (the stack's) for
/// any other address. Stateless: every instance forwards it alike from its configuration.
#[inline(always)]
fn join_address(ctx: &impl Packet, counters: &mut mptcp_common::lb::LbCounters) -> Option<u32> {
    let scratch = scratch()?;
    let Some(backend) = LB_JOIN_ADDRS.get_ptr(&AddrKey { addr: addr_bytes(scratch.segment.dst) }) else {
        counters.not_vip += 1;
        return None;
    };
    counters.join_address_packets += 1;
    if tcp::opens(scratch.segment.flags)
        && load_options(ctx, &scratch.segment, &mut scratch.options).is_some()
    {
        let area = scratch.options.0.get(..scratch.segment.options_len.min(40)).unwrap_or(&[]);
        if find_mptcp_option(area, subtype::MP_JOIN).is_some() {
            counters.join_address_joins += 1;
        }
    }
    // SAFETY: map value pointer from a successful lookup.
    Some(unsafe { *backend })
}

/// Hands what this instance learned (of the packet in scratch memory) to the sync daemon, if
/// the balancer syncs. The event is written in scratch memory: 64 bytes more on the stack would
/// pass the 512-byte limit of the call chain.
#[inline(always)]
fn sync(kind: u32, backend: u32, token: u32, kind_of_flow: u32, learned_ns: u64) {
    let (Some(scratch), Some(counters)) = (scratch(), lb_counters()) else {
        return;
    };
    if settings().sync == 0 {
        return;
    }
    let event = &mut scratch.sync;
    (event.kind, event.backend, event.token, event.flow_kind) = (kind, backend, token, kind_of_flow);
    event.learned_ns = learned_ns;
    event.flow = scratch.key;
    if LB_SYNC_EVENTS.output(&scratch.sync, 0).is_err() {
        counters.sync_events_lost += 1;
    }
}

/// Readies the frame for backend slot `index` (direct server return at L2).
#[inline(always)]
fn forward(packet: &impl Packet, index: u32) -> Action {
    let Some(counters) = lb_counters() else {
        return Action::Pass;
    };
    let Some(backend) = LB_BACKENDS.get(index).filter(|b| b.state != backend_state::UNUSED) else {
        counters.no_backend += 1;
        return Action::Drop;
    };
    if !set_macs(packet, &backend.mac, &backend.src_mac) {
        return Action::Pass;
    }
    if let Some(stats) = backend_counters(index) {
        stats.packets += 1;
    }
    counters.forwarded += 1;
    Action::Redirect(backend.ifindex)
}

/// The Maglev choice of VIP slot `vip` for the flow in scratch memory.
#[inline(always)]
fn maglev(vip: u32, key: &FlowKey) -> u32 {
    let slot = vip.saturating_mul(MAGLEV_SIZE as u32).saturating_add(maglev_slot(key));
    LB_MAGLEV.get(slot).copied().unwrap_or(NO_BACKEND)
}

/// Places a packet the flow table does not know: a SYN by its token (MP_JOIN) or the Maglev
/// table, recorded half-open; a packet of a half-open flow where the SYN put it, moving the flow
/// to the flow table (and learning its token) when it confirms the flow; any other packet by the
/// Maglev table alone. `reopens_join`: a SYN on the 4-tuple of a confirmed join, whose entry
/// goes. Returns the backend slot.
///
/// A global BPF function: the verifier checks it once on its own (see the tracker's `track.rs`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn mptcp_lb_place(vip: u32, steering_mode: u32, reopens_join: u32) -> u32 {
    let (Some(scratch), Some(counters)) = (scratch(), lb_counters()) else {
        return NO_BACKEND;
    };
    let segment = &scratch.segment;
    let (key, _) = FlowKey::new(segment.family, segment.src, segment.sport, segment.dst, segment.dport);
    scratch.key = key;
    let flags = segment.flags;
    let area = scratch.options.0.get(..segment.options_len.min(40)).unwrap_or(&[]);
    let half_open = LB_HALF_OPEN.get_ptr_mut(&key);
    if !tcp::opens(flags) {
        let Some(half_open) = half_open else {
            // Nothing to check it against (one direction only): forwarded, not recorded.
            counters.midstream_hashed += 1;
            let capable = find_mptcp_option(area, subtype::MP_CAPABLE)
                .and_then(|o| MpCapable::parse(o).ok())
                .is_some_and(|c| c.receiver_key.is_some());
            if capable || find_mptcp_option(area, subtype::MP_JOIN).is_some() {
                counters.half_open_missing += 1;
            }
            return maglev(vip, &key);
        };
        // SAFETY: map value pointer from a successful lookup.
        let flow = unsafe { &mut *half_open };
        flow.packets += 1;
        let backend = flow.backend;
        if tcp::confirms(flags) {
            if flow.kind == flow_kind::INITIAL
                && flow.token_learned == 0
                && steering_mode == steering::TOKEN
                && mptcp_lb_learn_token(flow.backend) != 0
            {
                flow.token_learned = 1;
            }
            match promote(&LB_HALF_OPEN, &LB_FLOWS, &key, flow) {
                Ok(()) => {
                    counters.half_open_promoted += 1;
                    // SAFETY: helper without arguments.
                    sync(sync_kind::FLOW, backend, 0, flow.kind, unsafe { bpf_ktime_get_ns() });
                }
                Err(_) => counters.table_errors += 1,
            }
        }
        // Not `flow.backend`: once promoted, the half-open slot may be reused.
        return backend;
    }
    if let Some(flow) = half_open
        // SAFETY: map value pointer from a successful lookup.
        && unsafe { (*flow).kind } != flow_kind::JOIN
    {
        // A retransmitted SYN: where the first went.
        // SAFETY: as above.
        let flow = unsafe { &mut *flow };
        flow.packets += 1;
        return flow.backend;
    }
    let join = find_mptcp_option(area, subtype::MP_JOIN).and_then(|o| MpJoin::parse(o).ok());
    let (backend, kind) = match join {
        Some(MpJoin::Syn { token, .. }) if steering_mode == steering::TOKEN => {
            match LB_TOKENS.get_ptr(token) {
                // SAFETY: map value pointer from a successful lookup.
                Some(owner) => {
                    counters.joins_steered_by_token += 1;
                    (unsafe { (*owner).backend }, flow_kind::JOIN)
                }
                None => {
                    // Remembered, so that the sync daemon can tell a join that beat the sync.
                    // SAFETY: helper without arguments.
                    let now = unsafe { bpf_ktime_get_ns() };
                    let first = LB_UNKNOWN_TOKENS.insert(token, now, u64::from(BPF_NOEXIST)).is_ok();
                    if first && settings().unknown_token == unknown_token::RETRY_ONCE {
                        counters.joins_deferred += 1;
                        return DEFER;
                    }
                    counters.joins_unknown_token += 1;
                    (maglev(vip, &key), flow_kind::JOIN)
                }
            }
        }
        Some(_) => {
            counters.joins_hashed += 1;
            (maglev(vip, &key), flow_kind::JOIN)
        }
        None => {
            counters.flows_hashed += 1;
            let capable = find_mptcp_option(area, subtype::MP_CAPABLE).is_some();
            (maglev(vip, &key), if capable { flow_kind::INITIAL } else { flow_kind::PLAIN })
        }
    };
    if backend == NO_BACKEND {
        return NO_BACKEND;
    }
    if let Some(flow) = half_open {
        // A join's SYN again (retransmitted, or a new subflow on the tuple): placed afresh.
        // SAFETY: map value pointer from a successful lookup.
        let flow = unsafe { &mut *flow };
        (flow.backend, flow.kind) = (backend, kind);
        flow.packets += 1;
        return backend;
    }
    if reopens_join != 0 {
        let _ = LB_FLOWS.remove(&key);
    }
    let flow = LbFlow { backend, kind, token_learned: 0, _pad: 0, packets: 1 };
    if LB_HALF_OPEN.insert(&key, &flow, 0).is_err() {
        counters.table_errors += 1;
        return backend;
    }
    counters.half_open_created += 1;
    if let Some(stats) = backend_counters(backend) {
        match kind {
            flow_kind::JOIN => stats.subflows += 1,
            flow_kind::INITIAL => stats.connections += 1,
            _ => stats.plain_flows += 1,
        }
    }
    backend
}

/// Learns the server's token from an MP_CAPABLE carrying both keys (the third ACK, or the first
/// data packet) and maps it to `backend`; 1 when learned. Called only for the packet that
/// confirms a flow whose MP_CAPABLE SYN the half-open table holds: one token per flow, and
/// never for a lone ACK.
///
/// A global BPF function, for the verifier (and it keeps the SHA-256 off the fast path's frame).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn mptcp_lb_learn_token(backend: u32) -> u32 {
    let (Some(scratch), Some(counters), Some(schedule)) =
        (scratch(), lb_counters(), DIGEST_SCHEDULE.get_ptr_mut(0))
    else {
        return 0;
    };
    let area = scratch.options.0.get(..scratch.segment.options_len.min(40)).unwrap_or(&[]);
    let Some(capable) = find_mptcp_option(area, subtype::MP_CAPABLE).and_then(|o| MpCapable::parse(o).ok())
    else {
        return 0;
    };
    let Some(server_key) = capable.receiver_key else {
        return 0;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let settings = settings();
    if settings.learn_rate != 0 {
        let segment = &scratch.segment;
        let mut source = AddrKey { addr: addr_bytes(segment.src) };
        if segment.family == 6 {
            // One bucket per /64: a host picks any address in its prefix.
            source.addr[8..].fill(0);
        }
        match admit_source(&LB_LEARN_RATE, &source, now, settings.learn_rate, settings.learn_burst) {
            Ok(true) => {}
            Ok(false) => {
                counters.learn_rate_limited += 1;
                return 0;
            }
            Err(_) => counters.table_errors += 1,
        }
    }
    // SAFETY: this CPU's scratch slot, used by one packet at a time.
    let token = version_key_digest_in(capable.version, server_key, unsafe { &mut *schedule }).token;
    // SAFETY: map value pointer from a successful lookup.
    let existing = LB_TOKENS.get_ptr(token).map(|entry| unsafe { (*entry).backend });
    let live = |slot: u32| LB_BACKENDS.get(slot).is_some_and(|b| b.state != backend_state::UNUSED);
    let outcome = token_learn(existing.map(|owner| (owner, live(owner))), backend);
    if outcome == TokenLearn::Collision {
        counters.token_collisions += 1;
        let count = LB_COLLISIONS.get_ptr(token).map_or(0, |c| {
            // SAFETY: map value pointer from a successful lookup.
            unsafe { (*c).count }
        });
        let collision = LbCollision {
            kept: existing.unwrap_or(NO_BACKEND),
            refused: backend,
            refused_origin: token_origin::LEARNED,
            count: count.saturating_add(1),
            last_ns: now,
        };
        if LB_COLLISIONS.insert(token, &collision, 0).is_err() {
            counters.table_errors += 1;
        }
        return 0;
    }
    let entry = LbToken { backend, origin: token_origin::LEARNED, stored_ns: now };
    if LB_TOKENS.insert(token, &entry, 0).is_err() {
        counters.table_errors += 1;
        return 0;
    }
    // A refresh is no news: the third ACK and the first data packet (both carry the keys) can
    // each find the half-open entry on two CPUs at once, and the second only refreshes.
    if outcome != TokenLearn::Refresh {
        counters.tokens_learned += 1;
        sync(sync_kind::TOKEN, backend, token, flow_kind::INITIAL, now);
    }
    1
}
