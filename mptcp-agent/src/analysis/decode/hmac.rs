//! A verdict on every MP_JOIN and ADD_ADDR HMAC: recomputed from the keys and nonces the
//! capture holds, or unknown with the reason.

use super::report::{AddAddrRecord, Connection, HmacCheck, HmacOption, Subflow, Verdict};
use crate::dataplane::handshake;

/// The MP_JOIN HMACs one subflow carried, as (frame, HMAC); ADD_ADDR HMACs are in its records.
#[derive(Debug, Default)]
pub(super) struct HmacInputs {
    pub(super) join_synacks: Vec<(u64, u64)>,
    pub(super) join_acks: Vec<(u64, [u8; 20])>,
}

/// Every check of one ended subflow, in frame order; `connection` is the one it belongs to.
pub(super) fn checks(
    inputs: &HmacInputs,
    add_addrs: &[AddAddrRecord],
    subflow: &Subflow,
    connection: Option<&Connection>,
) -> Vec<HmacCheck> {
    let mut checks = Vec::new();
    for &(frame, received) in &inputs.join_synacks {
        let received = received.to_be_bytes();
        checks.push(check_join(frame, subflow, HmacOption::MpJoinSynAck, &received, connection));
    }
    for (frame, received) in &inputs.join_acks {
        checks.push(check_join(*frame, subflow, HmacOption::MpJoinAck, received, connection));
    }
    for add in add_addrs.iter().filter(|add| add.hmac.is_some()) {
        checks.push(check_add_addr(add, subflow, connection));
    }
    checks.sort_by_key(|check| check.frame);
    checks
}

/// (key of the subflow's initiator, key of its responder), as far as the capture tells.
fn subflow_keys(subflow: &Subflow, connection: Option<&Connection>) -> (Option<u64>, Option<u64>) {
    let Some(connection) = connection else {
        return (None, None);
    };
    match &subflow.join {
        // The SYN names the responder by its token.
        Some(join) => connection
            .keys_for_token(join.token)
            .map(|(responder, initiator)| (initiator, responder))
            .unwrap_or((None, None)),
        None => (connection.initiator_key, connection.responder_key),
    }
}

fn check_join(
    frame: u64,
    subflow: &Subflow,
    option: HmacOption,
    received: &[u8],
    connection: Option<&Connection>,
) -> HmacCheck {
    let (initiator_key, responder_key) = subflow_keys(subflow, connection);
    let nonces = subflow.join.as_ref().and_then(|j| Some((j.initiator_nonce, j.responder_nonce?)));
    let v0 = subflow.version == Some(0);
    let expected = match (initiator_key.zip(responder_key), nonces) {
        (None, _) => Err("the keys of this subflow's connection are not in the capture"),
        (Some(_), None) => Err("the MP_JOIN SYN or SYN-ACK with the nonces is not in the capture"),
        (Some((a, b)), Some((ra, rb))) => Ok(match option {
            HmacOption::MpJoinSynAck if v0 => {
                handshake::join_synack_hmac_v0(b, a, rb, ra).to_be_bytes().to_vec()
            }
            HmacOption::MpJoinSynAck => handshake::join_synack_hmac(b, a, rb, ra).to_be_bytes().to_vec(),
            _ if v0 => handshake::join_ack_hmac_v0(a, b, ra, rb).to_vec(),
            _ => handshake::join_ack_hmac(a, b, ra, rb).to_vec(),
        }),
    };
    hmac_check(frame, subflow, option, received, expected)
}

fn check_add_addr(add: &AddAddrRecord, subflow: &Subflow, connection: Option<&Connection>) -> HmacCheck {
    let (initiator_key, responder_key) = subflow_keys(subflow, connection);
    let (sender_key, receiver_key) = if add.sender == subflow.initiator {
        (initiator_key, responder_key)
    } else {
        (responder_key, initiator_key)
    };
    let expected = sender_key
        .zip(receiver_key)
        .map(|(sender, receiver)| {
            handshake::add_addr_hmac(sender, receiver, add.addr_id, add.addr, add.port).to_be_bytes().to_vec()
        })
        .ok_or("the keys of this subflow's connection are not in the capture");
    let received = add.hmac.unwrap_or_default().to_be_bytes();
    hmac_check(add.frame, subflow, HmacOption::AddAddr, &received, expected)
}

fn hmac_check(
    frame: u64,
    subflow: &Subflow,
    option: HmacOption,
    received: &[u8],
    expected: Result<Vec<u8>, &str>,
) -> HmacCheck {
    let (verdict, reason) = match &expected {
        Ok(expected) if expected == received => (Verdict::Verified, None),
        Ok(_) => (Verdict::Failed, None),
        Err(reason) => (Verdict::Unknown, Some((*reason).to_owned())),
    };
    HmacCheck {
        frame,
        subflow: subflow.id,
        connection: subflow.connection,
        option,
        received: hex(received),
        expected: expected.ok().map(|e| hex(&e)),
        verdict,
        reason,
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
