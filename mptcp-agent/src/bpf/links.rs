//! Attaching programs through links and pinning them, and detaching whatever an interface's
//! directory pins: pinned links keep programs attached after the agent exits.

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink,
        tc::TcAttachOptions,
    },
};

use super::*;

/// Where the ingress program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native XDP where the driver has it, generic XDP otherwise; tcx ingress on veth, where a
    /// native XDP program makes the kernel turn off the peer's segmentation offload and generic
    /// XDP copies every packet (see `cargo xtask bench throughput`).
    Auto,
    /// Generic XDP, run by the kernel stack; works on every interface.
    Skb,
    /// Native XDP in the driver; fails where the driver lacks support.
    Native,
    /// No XDP: the ingress program runs at tcx ingress, on socket buffers.
    Tc,
}

/// The ingress hook an attach mode comes to on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressHook {
    Xdp(XdpMode),
    Tc,
}

impl XdpAttachMode {
    pub(crate) fn hook(self, iface: &str) -> IngressHook {
        match self {
            Self::Auto if driver(iface).as_deref() == Some("veth") => IngressHook::Tc,
            Self::Auto => IngressHook::Xdp(XdpMode::Default),
            Self::Skb => IngressHook::Xdp(XdpMode::Skb),
            Self::Native => IngressHook::Xdp(XdpMode::Driver),
            Self::Tc => IngressHook::Tc,
        }
    }
}

/// The driver of `iface` (ETHTOOL_GDRVINFO), if it tells; in the caller's network namespace.
fn driver(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    /// struct ethtool_drvinfo, up to the driver name.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 164],
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 164] };
    // SAFETY: ifreq is plain data; the name fits (checked at 15 bytes by check_iface).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket for the ioctl, closed by OwnedFd.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if socket < 0 {
        return None;
    }
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: SIOCETHTOOL with a valid ifreq pointing at a DrvInfo of the size the kernel writes.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) } != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

pub(super) fn ifindex(iface: &str) -> Result<u32, LoaderError> {
    let name = CString::new(iface).map_err(|_| LoaderError::InvalidInterfaceName(iface.to_owned()))?;
    // SAFETY: name is NUL-terminated.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(LoaderError::NoSuchInterface(iface.to_owned())),
        index => Ok(index),
    }
}

/// Loads the classifier `name`, attaches it to `iface` through tcx and pins the link at `pin`.
pub(crate) fn attach_tcx(
    ebpf: &mut Ebpf,
    name: &str,
    iface: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<(), LoaderError> {
    let program_error = |what: &str| {
        let what = format!("{what} {name} on {iface}");
        move |source| LoaderError::Program { what, source }
    };
    let tc: &mut SchedClassifier = program(ebpf, name)?;
    // One load serves every interface it is attached to.
    if tc.fd().is_err() {
        tc.load().map_err(program_error("loading"))?;
    }
    let link_id = tc
        .attach_with_options(iface, attach_type, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(program_error("attaching through tcx"))?;
    let link = tc.take_link(link_id).map_err(program_error("taking the tcx link of"))?;
    let link = FdLink::try_from(link).map_err(|e| LoaderError::Program {
        what: format!("tcx link of {name} on {iface} cannot be pinned ({e})"),
        source: ProgramError::UnexpectedProgramType,
    })?;
    pin_link(link, pin)
}

/// Attaches a loaded XDP program to `iface` and pins its link at `pin`.
pub(crate) fn attach_xdp(xdp: &mut Xdp, iface: &str, mode: XdpMode, pin: &Path) -> Result<(), LoaderError> {
    let program_error = |what: &str| {
        let what = format!("{what} on {iface}");
        move |source| LoaderError::Program { what, source }
    };
    let link_id = xdp.attach(iface, mode).map_err(program_error("attaching XDP"))?;
    let link = xdp.take_link(link_id).map_err(program_error("taking the XDP link"))?;
    let link = FdLink::try_from(link).map_err(|e| LoaderError::Program {
        what: format!("XDP on {iface} is attached through netlink, which cannot be pinned ({e})"),
        source: ProgramError::UnexpectedProgramType,
    })?;
    pin_link(link, pin)
}

pub(super) fn pin_link(link: FdLink, path: &Path) -> Result<(), LoaderError> {
    link.pin(path).map(drop).map_err(|source| LoaderError::Pin { path: path.to_owned(), source })
}

/// Detaches every link pinned in an interface's directory at once (even if a running agent still
/// holds it), whichever program it is of (the tracker's, the balancer's), then removes the whole
/// directory.
pub(super) fn detach_dir(dir: &Path) -> Result<(), LoaderError> {
    let io_error = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| LoaderError::Io { what, path, source }
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // A rollback may come before the directory was made.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error("reading", dir)(error)),
    };
    for entry in entries {
        let path = entry.map_err(io_error("reading", dir))?.path();
        bpf_sys::detach_if_link(&path).map_err(io_error("detaching link", &path))?;
    }
    fs::remove_dir_all(dir).map_err(|source| LoaderError::Io {
        what: "removing",
        path: dir.to_owned(),
        source,
    })
}

/// The two bpf(2) commands aya does not wrap: open a pinned object and detach a link.
pub(super) mod bpf_sys {
    use super::*;

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;

    #[repr(C)]
    #[derive(Default)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    struct LinkDetachAttr {
        link_fd: u32,
        _pad: [u32; 5],
    }

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: attr is a #[repr(C)] bpf_attr prefix of the size passed.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
    }

    /// Opens the object pinned at `path` (BPF_OBJ_GET).
    fn obj_get(path: &Path) -> io::Result<OwnedFd> {
        use std::os::unix::ffi::OsStrExt as _;
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut get = ObjGetAttr { pathname: c_path.as_ptr() as u64, ..Default::default() };
        let fd = bpf(BPF_OBJ_GET, &mut get)?;
        // SAFETY: BPF_OBJ_GET returned a new descriptor that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Detaches the link pinned at `path` (BPF_LINK_DETACH) and removes the pin.
    pub(in crate::bpf) fn link_detach(path: &Path) -> io::Result<()> {
        let fd = obj_get(path)?;
        let mut detach = LinkDetachAttr { link_fd: fd.as_raw_fd() as u32, ..Default::default() };
        bpf(BPF_LINK_DETACH, &mut detach)?;
        fs::remove_file(path)
    }

    /// Detaches and unpins `path` if it pins a link; anything else (a map) it leaves alone. A
    /// link's fdinfo names its link type, a map's its map type.
    pub(in crate::bpf) fn detach_if_link(path: &Path) -> io::Result<()> {
        let fd = obj_get(path)?;
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
        if !info.lines().any(|line| line.starts_with("link_type:")) {
            return Ok(());
        }
        let mut detach = LinkDetachAttr { link_fd: fd.as_raw_fd() as u32, ..Default::default() };
        bpf(BPF_LINK_DETACH, &mut detach)?;
        fs::remove_file(path)
    }
}
