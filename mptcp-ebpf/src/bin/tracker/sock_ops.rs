//! cgroup sock_ops attach point: the kernel's own view of each MPTCP subflow (window, RTT,
//! acknowledged bytes, losses) on every ACK, and what the agent's decisions make of it: a coupled
//! window, or a BBR subflow's pacing cap (see `mptcp_common::cc`).

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_getsockopt, bpf_setsockopt},
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use mptcp_common::{
    cc::{AckSample, CcAction, CcCongestion, CcEvent, CcSubflow, algorithm, cc_event, model},
    maps::{AddrWords, FlowKey, ipv4_mapped},
};

use crate::maps::{
    CC_CONGESTION, CC_DECISIONS, CC_EVENTS, CC_SUBFLOWS, HALF_OPEN_SUBFLOWS, SUBFLOWS, config,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;
const SOL_TCP: i32 = 6;
const TCP_BPF_SNDCWND_CLAMP: i32 = 1002;
const TCP_CONGESTION: i32 = 13;
const TCP_NOTSENT_LOWAT: i32 = 25;
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn mptcp_sock_ops(ctx: SockOpsContext) -> u32 {
    let Some(key) = flow_key(&ctx) else {
        return 1;
    };
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(&ctx, &key),
        BPF_SOCK_OPS_RTT_CB => ack(&ctx, &key),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            if CC_SUBFLOWS.remove(&key).is_ok() {
                // Lost when the ring is full: the controller then forgets it when it falls silent.
                let event = CcEvent { key, kind: cc_event::CLOSED, ..CcEvent::default() };
                let _ = CC_EVENTS.output(&event, 0);
            }
            let _ = CC_DECISIONS.remove(&key);
        }
        _ => {}
    }
    1
}

/// A tracked MPTCP subflow gets an entry and per-ACK callbacks; any other socket nothing more.
#[inline(always)]
fn established(ctx: &SockOpsContext, key: &FlowKey) {
    // The socket is established before the tracker sees the ACK that moves its subflow out of
    // the half-open table (the client's third ACK is still to be sent), so look in both.
    let Some(subflow) = SUBFLOWS.get_ptr(key).or_else(|| HALF_OPEN_SUBFLOWS.get_ptr(key)) else {
        return;
    };
    // SAFETY: map value pointer from a successful lookup.
    let subflow = unsafe { &*subflow };
    let token = if subflow.conn_token != 0 { subflow.conn_token } else { subflow.join_token };
    let coupling = coupling_model(ctx);
    // Stamped now, so that the agent does not take it for a forgotten entry before its first ACK.
    let entry = CcSubflow {
        token,
        model: coupling,
        // SAFETY: plain helper call.
        updated_ns: unsafe { bpf_ktime_get_ns() },
        ..CcSubflow::default()
    };
    if CC_SUBFLOWS.insert(key, &entry, 0).is_ok() {
        let _ = ctx.set_cb_flags((BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
    if token != 0 && coupling != model::PACED {
        // The connection's first window-coupled subflow makes the entry; the others find it.
        // Without one (full table), each loss is its own event.
        let _ = CC_CONGESTION.insert(&token, &CcCongestion::default(), u64::from(BPF_NOEXIST));
    }
    if config().cc_algorithm != algorithm::NONE && coupling == model::WINDOW {
        // LIA, OLIA and BALIA are defined on Reno's loss response, which the coupled window
        // reads (a lower ssthresh) and then replaces: a loss-based subflow other than cubic
        // (whose curve the controller follows) runs Reno.
        let mut reno = *b"reno\0";
        // SAFETY: the helper reads the NUL-terminated name.
        unsafe {
            bpf_setsockopt(
                ctx.ops.cast(),
                SOL_TCP,
                TCP_CONGESTION,
                reno.as_mut_ptr().cast(),
                reno.len() as i32,
            )
        };
    }
}

/// How the socket's congestion control is coupled: BBR (`bbr`, or a later version's name that
/// starts with it) by pacing, cubic by its own curve, anything else as Reno.
#[inline(always)]
fn coupling_model(ctx: &SockOpsContext) -> u32 {
    let mut name = [0u8; 16];
    // SAFETY: the helper writes at most the buffer's length.
    let read = unsafe {
        bpf_getsockopt(ctx.ops.cast(), SOL_TCP, TCP_CONGESTION, name.as_mut_ptr().cast(), name.len() as i32)
    };
    if read != 0 {
        model::WINDOW
    } else if name.starts_with(b"bbr") {
        model::PACED
    } else if name.starts_with(b"cubic\0") {
        model::CUBIC
    } else {
        model::WINDOW
    }
}

#[inline(always)]
fn ack(ctx: &SockOpsContext, key: &FlowKey) {
    let Some(state) = CC_SUBFLOWS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: map value pointers from successful lookups; the socket lock serialises callbacks.
    let state = unsafe { &mut *state };
    let decision = CC_DECISIONS.get_ptr(key).map(|d| unsafe { &*d });
    // SAFETY (field reads): the context is the kernel's bpf_sock_ops of a full socket.
    let ops = unsafe { &*ctx.ops };
    let sample = AckSample {
        snd_cwnd: ops.snd_cwnd,
        ssthresh: ops.snd_ssthresh,
        // The kernel keeps srtt in 1/8 us.
        srtt_us: ops.srtt_us >> 3,
        mss: ops.mss_cache,
        bytes_acked: ops.bytes_acked,
        total_retrans: ops.total_retrans,
        // SAFETY: plain helper call.
        now_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Two subflows of one connection may run this at once on two CPUs, and both take a loss
    // as the event's first: each then makes its own decrease, as without the rule.
    let congestion = if state.model == model::PACED || state.token == 0 || !state.reports_loss(&sample) {
        None
    } else {
        CC_CONGESTION.get_ptr_mut(&state.token).map(|c| unsafe { &mut *c })
    };
    let action = state.on_ack(&sample, decision, congestion);
    if state.notify_due(sample.now_ns) {
        let event = CcEvent { key: *key, kind: cc_event::UPDATE, _pad: 0, subflow: *state };
        // When the ring is full the next ACK tries again.
        if CC_EVENTS.output(&event, 0).is_ok() {
            state.notified_ns = sample.now_ns;
        }
    }
    match action {
        None => {}
        Some(CcAction::Clamp(clamp)) => {
            set_u32(ctx, SOL_TCP, TCP_BPF_SNDCWND_CLAMP, clamp);
            set_u32(ctx, SOL_TCP, TCP_NOTSENT_LOWAT, state.unsent_limit());
        }
        Some(CcAction::PacingCap(rate)) => set_u32(ctx, SOL_SOCKET, SO_MAX_PACING_RATE, rate),
    }
}

/// A 4-byte socket option; a refusal leaves the socket as it was, and the next change tries
/// again.
#[inline(always)]
fn set_u32(ctx: &SockOpsContext, level: i32, name: i32, mut value: u32) {
    // SAFETY: the helper reads 4 bytes of `value`.
    unsafe { bpf_setsockopt(ctx.ops.cast(), level, name, (&raw mut value).cast(), size_of::<u32>() as i32) };
}

/// The socket's 4-tuple as the tracking tables key it (IPv4-mapped for IPv4, IPv4-mapped IPv6
/// addresses of dual-stack sockets included).
#[inline(always)]
fn flow_key(ctx: &SockOpsContext) -> Option<FlowKey> {
    let (family, local, remote) = match ctx.family() {
        // The kernel gives addresses in network order: their bytes in memory are wire order.
        AF_INET => {
            (4, ipv4_mapped(ctx.local_ip4().to_ne_bytes()), ipv4_mapped(ctx.remote_ip4().to_ne_bytes()))
        }
        AF_INET6 => {
            // SAFETY: fields of the kernel's bpf_sock_ops.
            let (local, remote) =
                unsafe { (ip6_words(&(*ctx.ops).local_ip6), ip6_words(&(*ctx.ops).remote_ip6)) };
            let prefix_mask = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
            let mapped = local[0] == 0 && local[1] & prefix_mask == ipv4_mapped([0; 4])[1];
            (if mapped { 4 } else { 6 }, local, remote)
        }
        _ => return None,
    };
    // local_port is in host order; remote_port is the network-order port in the upper half of
    // a network-order word.
    let local_port = ctx.local_port() as u16;
    let remote_port = u32::from_be(ctx.remote_port()) as u16;
    Some(FlowKey::new(family, local, local_port, remote, remote_port).0)
}

/// An IPv6 address of the context, read as four 4-byte loads: the verifier rejects wider ones
/// there, which LLVM would otherwise merge them into.
#[inline(always)]
fn ip6_words(field: &[u32; 4]) -> AddrWords {
    // SAFETY: aligned reads of the four words of a context field.
    let words = field.each_ref().map(|word| unsafe { core::ptr::read_volatile(word) });
    // SAFETY: 16 bytes either way, any bit pattern valid; the memory order is kept.
    unsafe { core::mem::transmute::<[u32; 4], AddrWords>(words) }
}
