//! The tracker on an instance: its ingress and egress programs on each interface, the sock_ops
//! program on a cgroup; the last interface to go takes the shared maps and the sock_ops link
//! with it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, ProgramError, SockOps, TcAttachType, Xdp, links::FdLink},
};
use mptcp_common::maps::{COUNTERS_MAP, SHARED_MAP_NAMES};

use super::*;
use crate::report::Chain;

pub(crate) const XDP_PROGRAM: &str = "mptcp_xdp_ingress";
pub(crate) const TC_PROGRAM: &str = "mptcp_tc_egress";

const SOCK_OPS_PROGRAM: &str = "mptcp_sock_ops";
pub(crate) const TC_INGRESS_PROGRAM: &str = "mptcp_tc_ingress";
/// Link pins in an interface's directory.
const XDP_LINK: &str = "xdp_ingress";
const TC_INGRESS_LINK: &str = "tc_ingress";
const TC_LINK: &str = "tc_egress";

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
    create_new_dir(&iface_dir).map_err(|source| match source.kind() {
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
