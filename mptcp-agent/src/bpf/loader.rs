//! Loading, attaching and pinning the programs, and finding them again.
//!
//! An *instance* is one dataplane on a host: the interfaces it is attached to share its tables,
//! since an MPTCP connection spans interfaces. It lives under `/sys/fs/bpf/mptcp/INSTANCE/`:
//! `maps/NAME` for the shared maps, per interface `ifaces/IFACE/COUNTERS` with the links
//! `ifaces/IFACE/xdp_ingress` (or `tc_ingress`) and `ifaces/IFACE/tc_egress`, and `sock_ops`, the
//! cgroup link of coupled congestion control. Pinned links keep the programs attached after the
//! agent exits; removing them detaches. The last interface to go takes the shared maps and the
//! sock_ops link with it.

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use crate::report::Chain;
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Map, MapData, MapError},
    pin::PinError,
    programs::{
        CgroupAttachMode, LinkOrder, ProgramError, SchedClassifier, SockOps, TcAttachType, Xdp, XdpMode,
        links::FdLink, tc::TcAttachOptions,
    },
};
use mptcp_common::maps::{COUNTERS_MAP, SHARED_MAP_NAMES};

// The eBPF objects, built by build.rs for bpfel-unknown-none with BTF, one per product: loading
// one creates only its own maps.
/// The tracker: ingress, egress and sock_ops programs and the tracking tables.
pub(crate) static TRACKER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracker"));
/// The load balancer (see `steering`).
pub(crate) static BALANCER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));
/// The benchmarks' reference programs (see `bench`).
pub(crate) static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reference"));

/// Where the BPF filesystem must be mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Directory of this project's pins on the BPF filesystem.
pub const PIN_ROOT: &str = "/sys/fs/bpf/mptcp";
/// Directory of the daemons' files, one folder per instance.
pub const RUN_ROOT: &str = "/run/mptcp-agent";
/// The instance commands use unless told otherwise.
pub const DEFAULT_INSTANCE: &str = "default";

pub(crate) const XDP_PROGRAM: &str = "mptcp_xdp_ingress";
pub(crate) const TC_PROGRAM: &str = "mptcp_tc_egress";
const SOCK_OPS_PROGRAM: &str = "mptcp_sock_ops";
const TC_INGRESS_PROGRAM: &str = "mptcp_tc_ingress";
const XDP_LINK: &str = "xdp_ingress";
const TC_INGRESS_LINK: &str = "tc_ingress";
const TC_LINK: &str = "tc_egress";

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

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("no BPF filesystem mounted at {BPFFS}: mount one with `mount -t bpf bpf {BPFFS}`")]
    NoBpffs,
    #[error(
        "missing privileges: this needs {missing}; run as root or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
    )]
    MissingPrivileges { missing: String },
    #[error("invalid interface name {0:?}")]
    InvalidInterfaceName(String),
    #[error("invalid instance name {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidInstanceName(String),
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error(
        "the dataplane is already attached to {iface} (pinned under {dir}); detach it first with `mptcp-agent detach --iface {iface}`"
    )]
    AlreadyAttached { iface: String, dir: PathBuf },
    #[error("the dataplane is not attached to {iface}: nothing is pinned under {dir}")]
    NotAttached { iface: String, dir: PathBuf },
    #[error("instance {instance} is not running: nothing is pinned under {dir}")]
    NoInstance { instance: String, dir: PathBuf },
    #[error(
        "no cgroup v2 hierarchy is mounted (coupled congestion control attaches to one): mount it with \
         `mount -t cgroup2 none /sys/fs/cgroup` or name a cgroup v2 directory with --cgroup"
    )]
    NoCgroup2,
    #[error("loading the eBPF object failed")]
    Load(#[source] EbpfError),
    #[error("{what} failed")]
    Program {
        what: String,
        #[source]
        source: ProgramError,
    },
    #[error("pinning {path} failed")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("map {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The pins of one dataplane instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub dir: PathBuf,
}

/// Interface names become path components: accept only what the kernel accepts (IFNAMSIZ).
fn check_iface(iface: &str) -> Result<(), LoaderError> {
    if iface.is_empty()
        || iface.len() > 15
        || iface == "."
        || iface == ".."
        || iface.contains(['/', '\0'])
        || iface.chars().any(char::is_whitespace)
    {
        return Err(LoaderError::InvalidInterfaceName(iface.to_owned()));
    }
    Ok(())
}

impl Instance {
    pub fn new(name: &str) -> Result<Self, LoaderError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(LoaderError::InvalidInstanceName(name.to_owned()));
        }
        Ok(Self { name: name.to_owned(), dir: Path::new(PIN_ROOT).join(name) })
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    /// Pin path of the shared map `name`.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub(crate) fn ifaces_dir(&self) -> PathBuf {
        self.dir.join("ifaces")
    }

    /// Directory of one interface's counters and links.
    pub fn iface_dir(&self, iface: &str) -> Result<PathBuf, LoaderError> {
        check_iface(iface)?;
        Ok(self.ifaces_dir().join(iface))
    }

    /// Interfaces the instance is attached to (none when it has no interface directory).
    pub fn interfaces(&self) -> Result<Vec<String>, LoaderError> {
        let dir = self.ifaces_dir();
        let io_error = |source| LoaderError::Io { what: "listing", path: dir.clone(), source };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error(error)),
        };
        let mut ifaces = Vec::new();
        for entry in entries {
            ifaces.push(entry.map_err(io_error)?.file_name().to_string_lossy().into_owned());
        }
        ifaces.sort();
        Ok(ifaces)
    }

    pub fn exists(&self) -> bool {
        self.maps_dir().exists()
    }

    /// Where the daemon of the instance keeps its files (event log, path state).
    pub fn run_dir(&self) -> PathBuf {
        Path::new(RUN_ROOT).join(&self.name)
    }

    /// The pinned link of the instance's sock_ops program (coupled congestion control).
    pub fn sock_ops_link(&self) -> PathBuf {
        self.dir.join("sock_ops")
    }

    fn open(path: PathBuf) -> Result<Map, LoaderError> {
        MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .map_err(|source| LoaderError::Map { path, source })
    }

    /// Opens the shared map `name`; `NoInstance` when nothing is pinned.
    pub fn open_map(&self, name: &str) -> Result<Map, LoaderError> {
        if !self.exists() {
            return Err(LoaderError::NoInstance { instance: self.name.clone(), dir: self.dir.clone() });
        }
        Self::open(self.map_path(name))
    }

    /// Opens the counters of `iface`; `NotAttached` when it has no pins.
    pub fn open_counters(&self, iface: &str) -> Result<Map, LoaderError> {
        let dir = self.iface_dir(iface)?;
        if !dir.exists() {
            return Err(LoaderError::NotAttached { iface: iface.to_owned(), dir });
        }
        Self::open(dir.join(COUNTERS_MAP))
    }
}

/// Linux capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What an operation needs from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Reading pinned maps: CAP_BPF.
    ReadMaps,
    /// Loading and attaching programs: CAP_BPF, CAP_PERFMON (the verifier's variable-offset
    /// stack reads in the option walk) and CAP_NET_ADMIN.
    Attach,
    /// Changing MPTCP endpoints, limits, subflows and sysctls: CAP_NET_ADMIN.
    ManagePaths,
}

/// Checks the effective capabilities up front, so a missing one is named instead of surfacing as
/// an EPERM from deep inside a load.
pub fn check_privileges(needed: Privilege) -> Result<(), LoaderError> {
    let status = fs::read_to_string("/proc/self/status").map_err(|source| LoaderError::Io {
        what: "reading",
        path: "/proc/self/status".into(),
        source,
    })?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if needed != Privilege::ManagePaths && !(has(CAP_BPF) || sys_admin) {
        missing.push("CAP_BPF");
    }
    if needed == Privilege::Attach && !(has(CAP_PERFMON) || sys_admin) {
        missing.push("CAP_PERFMON");
    }
    if needed != Privilege::ReadMaps && !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoaderError::MissingPrivileges { missing: missing.join(", ") })
    }
}

/// Fails unless a BPF filesystem is mounted at [`BPFFS`].
pub fn check_bpffs() -> Result<(), LoaderError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = CString::new(BPFFS).map_err(|_| LoaderError::NoBpffs)?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated and stat is a properly sized out-parameter.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    if rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC { Ok(()) } else { Err(LoaderError::NoBpffs) }
}

fn ifindex(iface: &str) -> Result<u32, LoaderError> {
    let name = CString::new(iface).map_err(|_| LoaderError::InvalidInterfaceName(iface.to_owned()))?;
    // SAFETY: name is NUL-terminated.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(LoaderError::NoSuchInterface(iface.to_owned())),
        index => Ok(index),
    }
}

/// Undoes a half-made attach unless it completed.
struct Rollback {
    instance: Instance,
    iface_dir: PathBuf,
    armed: bool,
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if self.armed {
            if let Err(error) = detach_dir(&self.iface_dir) {
                log::warn!("rolling back {}: {}", self.iface_dir.display(), Chain(&error));
            }
            if let Err(error) = remove_unused(&self.instance) {
                log::warn!("rolling back {}: {}", self.iface_dir.display(), Chain(&error));
            }
        }
    }
}

fn create_dir(path: &Path) -> Result<(), LoaderError> {
    fs::create_dir_all(path).map_err(|source| LoaderError::Io {
        what: "creating",
        path: path.to_owned(),
        source,
    })
}

/// Loads the programs, attaches XDP on ingress and TC (tcx) on egress of `iface`, and pins the
/// links and the interface's counters; the tables are those of `instance`, created with its
/// first interface. On any error nothing stays attached or pinned.
pub fn attach(instance: &Instance, iface: &str, mode: XdpAttachMode) -> Result<Attached, LoaderError> {
    let iface_dir = instance.iface_dir(iface)?;
    check_privileges(Privilege::Attach)?;
    check_bpffs()?;
    ifindex(iface)?;
    if iface_dir.exists() {
        return Err(LoaderError::AlreadyAttached { iface: iface.to_owned(), dir: iface_dir });
    }
    create_dir(&instance.maps_dir())?;
    create_dir(&instance.ifaces_dir())?;
    // Claim the directory atomically: a concurrent attach to the same interface fails here.
    fs::create_dir(&iface_dir).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => {
            LoaderError::AlreadyAttached { iface: iface.to_owned(), dir: iface_dir.clone() }
        }
        _ => LoaderError::Io { what: "creating", path: iface_dir.clone(), source },
    })?;
    // Declared before the Ebpf object so it runs after the object's descriptors are closed.
    let mut rollback = Rollback { instance: instance.clone(), iface_dir: iface_dir.clone(), armed: true };

    let mut ebpf = load_instance(instance, Some(&iface_dir.join(COUNTERS_MAP)))?;

    let program_error = |what: &str| {
        let what = format!("{what} on {iface}");
        move |source| LoaderError::Program { what, source }
    };
    let hook = mode.hook(iface);
    match hook {
        IngressHook::Xdp(xdp_mode) => {
            let xdp: &mut Xdp = program(&mut ebpf, XDP_PROGRAM)?;
            xdp.load().map_err(program_error("loading the XDP program"))?;
            attach_xdp(xdp, iface, xdp_mode, &iface_dir.join(XDP_LINK))?;
        }
        IngressHook::Tc => attach_tcx(
            &mut ebpf,
            TC_INGRESS_PROGRAM,
            iface,
            TcAttachType::Ingress,
            &iface_dir.join(TC_INGRESS_LINK),
        )?,
    }
    attach_tcx(&mut ebpf, TC_PROGRAM, iface, TcAttachType::Egress, &iface_dir.join(TC_LINK))?;
    rollback.armed = false;
    Ok(Attached { dir: iface_dir, hook })
}

/// Loads the tracker's object for `instance`: its shared maps reused (or created and pinned), the
/// interface's counters pinned at `counters`.
fn load_instance(instance: &Instance, counters: Option<&Path>) -> Result<Ebpf, LoaderError> {
    let mut loader = EbpfLoader::new();
    for name in SHARED_MAP_NAMES {
        loader.map_pin_path(name, instance.map_path(name));
    }
    if let Some(path) = counters {
        loader.map_pin_path(COUNTERS_MAP, path);
    }
    loader.load(TRACKER_OBJECT).map_err(LoaderError::Load)
}

/// The root of the cgroup v2 hierarchy, from /proc/self/mounts.
pub fn cgroup2_root() -> Result<PathBuf, LoaderError> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|source| LoaderError::Io {
        what: "reading",
        path: PathBuf::from("/proc/self/mounts"),
        source,
    })?;
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields.get(1).copied().unwrap_or("/")))
        })
        .ok_or(LoaderError::NoCgroup2)
}

/// Attaches the sock_ops program of `instance` to the cgroup v2 directory `cgroup` (every
/// socket of its processes and their descendants) unless it is attached already; the link is
/// pinned at `INSTANCE/sock_ops` and goes with the instance's last interface.
pub fn attach_sock_ops(instance: &Instance, cgroup: &Path) -> Result<bool, LoaderError> {
    check_privileges(Privilege::Attach)?;
    let pin = instance.sock_ops_link();
    if pin.exists() {
        return Ok(false);
    }
    if !instance.exists() {
        return Err(LoaderError::NoInstance { instance: instance.name.clone(), dir: instance.dir.clone() });
    }
    let cgroup_dir = fs::File::open(cgroup).map_err(|source| LoaderError::Io {
        what: "opening the cgroup (a cgroup v2 directory)",
        path: cgroup.to_owned(),
        source,
    })?;
    let mut ebpf = load_instance(instance, None)?;
    let program_error = |what: &str| {
        let what = format!("{what} {SOCK_OPS_PROGRAM} on {}", cgroup.display());
        move |source| LoaderError::Program { what, source }
    };
    let sock_ops: &mut SockOps = program(&mut ebpf, SOCK_OPS_PROGRAM)?;
    sock_ops.load().map_err(program_error("loading"))?;
    let link_id =
        sock_ops.attach(&cgroup_dir, CgroupAttachMode::Single).map_err(program_error("attaching"))?;
    let link = sock_ops.take_link(link_id).map_err(program_error("taking the link of"))?;
    let link = FdLink::try_from(link).map_err(|e| LoaderError::Program {
        what: format!("the cgroup link of {SOCK_OPS_PROGRAM} cannot be pinned ({e})"),
        source: ProgramError::UnexpectedProgramType,
    })?;
    pin_link(link, &pin)?;
    Ok(true)
}

/// What `attach` did.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The interface's pin directory.
    pub dir: PathBuf,
    pub hook: IngressHook,
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

pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LoaderError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| LoaderError::Program {
        what: format!("finding program {name} in the embedded object"),
        source: ProgramError::UnexpectedProgramType,
    })?;
    program.try_into().map_err(|source| LoaderError::Program {
        what: format!("program {name} has an unexpected type"),
        source,
    })
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

/// An instance being created: removed with everything in it unless `keep` is called.
pub(crate) struct Claim {
    instance: Instance,
    kept: bool,
}

impl Claim {
    /// Creates the instance's directories; fails if the instance exists.
    pub(crate) fn new(instance: &Instance) -> Result<Self, LoaderError> {
        create_dir(&instance.dir)?;
        fs::create_dir(instance.maps_dir()).map_err(|source| LoaderError::Io {
            what: "creating",
            path: instance.maps_dir(),
            source,
        })?;
        create_dir(&instance.ifaces_dir())?;
        Ok(Self { instance: instance.clone(), kept: false })
    }

    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.kept {
            // A rollback: report what could not be undone, undo the rest.
            let undo = || -> Result<(), LoaderError> {
                for iface in self.instance.interfaces()? {
                    if let Err(error) = detach_dir(&self.instance.iface_dir(&iface)?) {
                        log::warn!("rolling back {iface}: {}", Chain(&error));
                    }
                }
                remove_instance(&self.instance)
            };
            if let Err(error) = undo() {
                log::warn!("rolling back instance {}: {}", self.instance.name, Chain(&error));
            }
        }
    }
}

/// Removes an instance's pins (its links must be detached already).
pub(crate) fn remove_instance(instance: &Instance) -> Result<(), LoaderError> {
    if instance.dir.exists() {
        fs::remove_dir_all(&instance.dir).map_err(|source| LoaderError::Io {
            what: "removing",
            path: instance.dir.clone(),
            source,
        })?;
    }
    remove_root_if_empty();
    Ok(())
}

/// The project's pin directory goes with its last instance; while another instance lives in it
/// the removal fails (ENOTEMPTY), which is the point.
fn remove_root_if_empty() {
    let _ = fs::remove_dir(PIN_ROOT);
}

fn pin_link(link: FdLink, path: &Path) -> Result<(), LoaderError> {
    link.pin(path).map(drop).map_err(|source| LoaderError::Pin { path: path.to_owned(), source })
}

/// Detaches the programs from `iface` and removes its pins; the last interface of the instance
/// takes the shared maps with it.
pub fn detach(instance: &Instance, iface: &str) -> Result<(), LoaderError> {
    let iface_dir = instance.iface_dir(iface)?;
    check_privileges(Privilege::Attach)?;
    check_bpffs()?;
    if !iface_dir.exists() {
        return Err(LoaderError::NotAttached { iface: iface.to_owned(), dir: iface_dir });
    }
    detach_dir(&iface_dir)?;
    remove_unused(instance)
}

/// Removes the instance's shared maps and its sock_ops link once no interface uses them, and
/// the project directory once no instance is left.
fn remove_unused(instance: &Instance) -> Result<(), LoaderError> {
    if instance.interfaces()?.is_empty() {
        let sock_ops = instance.sock_ops_link();
        if sock_ops.exists() {
            bpf_sys::link_detach(&sock_ops).map_err(|source| LoaderError::Io {
                what: "detaching link",
                path: sock_ops.clone(),
                source,
            })?;
        }
        remove_instance(instance)?;
    }
    remove_root_if_empty();
    Ok(())
}

/// Detaches every link pinned in an interface's directory at once (even if a running agent still
/// holds it), whichever program it is of (the tracker's, the balancer's), then removes the whole
/// directory.
fn detach_dir(dir: &Path) -> Result<(), LoaderError> {
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
mod bpf_sys {
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
    pub(super) fn link_detach(path: &Path) -> io::Result<()> {
        let fd = obj_get(path)?;
        let mut detach = LinkDetachAttr { link_fd: fd.as_raw_fd() as u32, ..Default::default() };
        bpf(BPF_LINK_DETACH, &mut detach)?;
        fs::remove_file(path)
    }

    /// Detaches and unpins `path` if it pins a link; anything else (a map) it leaves alone. A
    /// link's fdinfo names its link type, a map's its map type.
    pub(super) fn detach_if_link(path: &Path) -> io::Result<()> {
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
