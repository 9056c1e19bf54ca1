//! The token-steering load balancer, on its client-facing interfaces: at XDP, or at tcx ingress
//! where XDP does not pay (veth: a generic-XDP redirect drops GSO packets, and native XDP
//! redirects into a veth only if its peer runs XDP).
//!
//! Packets to a VIP go to a backend by direct server return at L2: the destination MAC becomes
//! the backend's and the frame is redirected out of the backend's interface, the IP packet left
//! alone. A flow keeps its backend (flow table); a new one is placed by the VIP's Maglev table;
//! an MP_JOIN SYN goes where its token says, the token having been computed here from the
//! connection's MP_CAPABLE third ACK.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, tcx_action_base::TCX_NEXT, xdp_action},
    helpers::generated::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use mptcp_common::{
    keys::key_digest_in,
    lb::{LbFlow, MAGLEV_SIZE, NO_BACKEND, VipKey, backend_state, flow_kind, maglev_slot, steering},
    maps::{FlowKey, addr_bytes},
    mptcp::{MpCapable, MpJoin, subtype},
};
use mptcp_ebpf::packet::{Packet, find_mptcp_option, load_options, parse_tcp, tcp_flags};

use crate::maps::{
    DIGEST_SCHEDULE, LB_BACKENDS, LB_FLOWS, LB_MAGLEV, LB_TOKENS, LB_VIPS, backend_counters, lb_counters,
    scratch,
};

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
    classify(packet).map_or(Action::Pass, |backend| forward(packet, backend))
}

/// The backend slot of a packet for a VIP; None for anything else.
#[inline(always)]
fn classify(ctx: &impl Packet) -> Option<u32> {
    let counters = lb_counters()?;
    counters.packets += 1;
    let scratch = scratch()?;
    let segment = &mut scratch.segment;
    parse_tcp(ctx, segment)?;
    let vip_key =
        VipKey { addr: addr_bytes(segment.dst), port: segment.dport, family: segment.family, _pad: [0; 5] };
    let Some(vip) = LB_VIPS.get_ptr(&vip_key) else {
        counters.not_vip += 1;
        return None;
    };
    // SAFETY: map value pointer from a successful lookup.
    let vip = unsafe { *vip };
    let syn = segment.has(tcp_flags::SYN) && !segment.has(tcp_flags::ACK);
    let (key, _) = FlowKey::new(segment.family, segment.src, segment.sport, segment.dst, segment.dport);
    let backend = match LB_FLOWS.get_ptr_mut(&key) {
        // A retransmitted SYN keeps its backend, but a join is placed by its token every time:
        // the same 4-tuple may carry a new subflow.
        Some(flow) if !syn || unsafe { (*flow).kind } != flow_kind::JOIN => {
            // SAFETY: map value pointer from a successful lookup.
            let flow = unsafe { &mut *flow };
            flow.packets += 1;
            if flow.kind == flow_kind::INITIAL
                && flow.token_learned == 0
                && vip.steering == steering::TOKEN
                && load_options(ctx, &scratch.segment, &mut scratch.options).is_some()
                && mptcp_lb_learn_token(flow.backend) != 0
            {
                flow.token_learned = 1;
            }
            flow.backend
        }
        _ => {
            load_options(ctx, &scratch.segment, &mut scratch.options)?;
            mptcp_lb_place(vip.index, vip.steering, u32::from(syn))
        }
    };
    Some(backend)
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
    // Destination then source MAC: the first 12 bytes of the frame.
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&backend.mac);
    macs[6..].copy_from_slice(&backend.src_mac);
    if !packet.store_bytes(0, &macs) {
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

/// Places a flow the table does not know: an MP_JOIN SYN by its token, anything else by the
/// Maglev table; records it in the flow table. Returns the backend slot.
///
/// A global BPF function: the verifier checks it once on its own (see the tracker's `track.rs`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn mptcp_lb_place(vip: u32, steering_mode: u32, syn: u32) -> u32 {
    let (Some(scratch), Some(counters)) = (scratch(), lb_counters()) else {
        return NO_BACKEND;
    };
    let segment = &scratch.segment;
    let (key, _) = FlowKey::new(segment.family, segment.src, segment.sport, segment.dst, segment.dport);
    let area = scratch.options.0.get(..segment.options_len.min(40)).unwrap_or(&[]);
    let join = if syn != 0 {
        find_mptcp_option(area, subtype::MP_JOIN).and_then(|o| MpJoin::parse(o).ok())
    } else {
        None
    };
    let (backend, kind) = match join {
        Some(MpJoin::Syn { token, .. }) if steering_mode == steering::TOKEN => {
            match LB_TOKENS.get_ptr(token) {
                // SAFETY: map value pointer from a successful lookup.
                Some(owner) => {
                    counters.joins_steered_by_token += 1;
                    (unsafe { *owner }, flow_kind::JOIN)
                }
                None => {
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
            let capable = syn != 0 && find_mptcp_option(area, subtype::MP_CAPABLE).is_some();
            (maglev(vip, &key), if capable { flow_kind::INITIAL } else { flow_kind::PLAIN })
        }
    };
    if backend == NO_BACKEND {
        return NO_BACKEND;
    }
    if let Some(stats) = backend_counters(backend) {
        match kind {
            flow_kind::JOIN => stats.subflows += 1,
            flow_kind::INITIAL => stats.connections += 1,
            _ if syn != 0 => stats.plain_flows += 1,
            _ => {}
        }
    }
    let flow = LbFlow { backend, kind, token_learned: 0, _pad: 0, packets: 1 };
    let _ = LB_FLOWS.insert(&key, &flow, 0);
    backend
}

/// Learns the server's token from an MP_CAPABLE carrying both keys (the third ACK, or the first
/// data packet) and maps it to `backend`; 1 when learned.
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
    // SAFETY: this CPU's scratch slot, used by one packet at a time.
    let token = key_digest_in(server_key, unsafe { &mut *schedule }).token;
    if LB_TOKENS.insert(token, backend, 0).is_err() {
        return 0;
    }
    counters.tokens_learned += 1;
    1
}
