//! Who owns an MPTCP connection: its socket's uid, inode and cgroup from the kernel's socket
//! diagnostics (sock_diag, the MPTCP socket found by its token), and the process that holds the
//! socket from /proc. Path rules that name a cgroup or a process match on it.

use std::{fs, io, net::IpAddr, path::Path};

use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    Nla as _,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use serde::Serialize;

/// IPPROTO_MPTCP: above 255, so the request names it in an attribute.
const IPPROTO_MPTCP: u32 = 262;
/// INET_DIAG_REQ_PROTOCOL, the request attribute carrying a protocol number above 255.
const INET_DIAG_REQ_PROTOCOL: u16 = 3;
/// INET_DIAG_CGROUP_ID: the socket's cgroup v2 ID (kernel 5.7 and later), in every answer.
const INET_DIAG_CGROUP_ID: u16 = 21;
/// /proc entries looked at for the process holding a socket, so a host with very many
/// processes does not hold the path manager up: past these the process is unknown.
const MAX_PROCESSES: usize = 4096;

/// The owner of a connection's MPTCP socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub uid: u32,
    pub inode: u32,
    /// The cgroup v2 ID (the inode of its directory); absent on kernels before 5.7.
    pub cgroup_id: Option<u64>,
    /// The process holding the socket, and its name (`comm`), if one was found.
    pub pid: Option<u32>,
    pub process: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// Logged as one string in the `path_rule` record: the cause is in the message.
    #[error("sock_diag socket: {0}")]
    Socket(io::Error),
    #[error("sock_diag of the MPTCP socket with token {token:#010x}: {message}")]
    Diag { token: u32, message: String },
}

/// The request for one MPTCP socket: an inet_diag request and the protocol attribute.
struct MptcpRequest {
    request: InetRequest,
    protocol: DefaultNla,
}

impl MptcpRequest {
    /// For the MPTCP socket with local token `token`, of `remote`'s family.
    fn new(token: u32, remote: IpAddr) -> Self {
        let mut socket_id = if remote.is_ipv4() { SocketId::new_v4() } else { SocketId::new_v6() };
        // The MPTCP diag module finds an exact socket by the token in the cookie's first word.
        socket_id.cookie[..4].copy_from_slice(&token.to_ne_bytes());
        Self {
            request: InetRequest {
                family: if remote.is_ipv4() { AF_INET } else { AF_INET6 },
                // The low byte; the attribute carries the whole number.
                protocol: IPPROTO_MPTCP as u8,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id,
            },
            protocol: DefaultNla::new(INET_DIAG_REQ_PROTOCOL, IPPROTO_MPTCP.to_ne_bytes().to_vec()),
        }
    }
}

impl NetlinkSerializable for MptcpRequest {
    fn message_type(&self) -> u16 {
        SOCK_DIAG_BY_FAMILY
    }

    fn buffer_len(&self) -> usize {
        self.request.buffer_len() + self.protocol.buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let (request, attributes) = buffer.split_at_mut(self.request.buffer_len());
        self.request.emit(request);
        self.protocol.emit(attributes);
    }
}

/// The owner of the MPTCP socket whose local token is `token`; `remote` gives its family.
pub fn owner(token: u32, remote: IpAddr) -> Result<Owner, OwnerError> {
    let diag = |message: String| OwnerError::Diag { token, message };
    let request = MptcpRequest::new(token, remote);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);

    let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(OwnerError::Socket)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(OwnerError::Socket)?;
    socket.send(&buffer, 0).map_err(OwnerError::Socket)?;
    let (answer, _) = socket.recv_from_full().map_err(OwnerError::Socket)?;
    let answer = NetlinkMessage::<SockDiagMessage>::deserialize(&answer).map_err(|e| diag(e.to_string()))?;
    let response = match answer.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => response,
        NetlinkPayload::Error(error) => return Err(diag(error.to_io().to_string())),
        other => return Err(diag(format!("unexpected answer {other:?}"))),
    };
    let cgroup_id = response.nlas.iter().find_map(|nla| match nla {
        Nla::Other(nla) if nla.kind() == INET_DIAG_CGROUP_ID && nla.value_len() == 8 => {
            let mut id = [0; 8];
            nla.emit_value(&mut id);
            Some(u64::from_ne_bytes(id))
        }
        _ => None,
    });
    let inode = response.header.inode;
    let pid = holder(Path::new("/proc"), inode);
    let process = pid.and_then(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).ok());
    Ok(Owner {
        uid: response.header.uid,
        inode,
        cgroup_id,
        pid,
        process: process.map(|name| name.trim_end().to_owned()),
    })
}

/// The first process under `proc` with a descriptor on socket `inode`.
fn holder(proc: &Path, inode: u32) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    let processes = fs::read_dir(proc).ok()?;
    processes
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .take(MAX_PROCESSES)
        .find(|pid| {
            // A process that ends or hides its descriptors (another user's, without
            // CAP_SYS_PTRACE) holds nothing we can see.
            let Ok(fds) = fs::read_dir(proc.join(pid.to_string()).join("fd")) else { return false };
            fds.filter_map(Result::ok)
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()))
        })
}

/// The cgroup v2 ID of `path` under the hierarchy mounted at `root`: its directory's inode.
pub fn cgroup_id(root: &Path, path: &str) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(root.join(path.trim_start_matches('/')))?.ino())
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd as _};

    use super::*;

    #[test]
    fn the_holder_of_a_socket_is_this_process() {
        use std::os::unix::fs::MetadataExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap().ino();
        assert_eq!(holder(Path::new("/proc"), inode as u32), Some(std::process::id()));
        assert_eq!(holder(Path::new("/nonexistent"), inode as u32), None);
    }

    #[test]
    fn the_request_names_mptcp_in_its_attribute() {
        let request = MptcpRequest::new(0x0102_0304, "192.0.2.1".parse().unwrap());
        let mut buffer = vec![0; request.buffer_len()];
        request.serialize(&mut buffer);
        // inet_diag_req_v2 is 56 bytes, the cookie at 48; then the attribute: length 8, type 3, 262.
        assert_eq!(buffer.len(), 64);
        assert_eq!((buffer[0], buffer[1]), (AF_INET, 6));
        assert_eq!(buffer[48..52], 0x0102_0304u32.to_ne_bytes());
        assert_eq!(buffer[56..], [8, 0, 3, 0, 6, 1, 0, 0]);
    }
}
