//! Starting and stopping the balancer, and changing backends while it runs: every command
//! acts on the pinned maps and links, without a daemon.

use std::{net::SocketAddr, path::PathBuf};

use aya::{
    EbpfLoader,
    programs::{TcAttachType, Xdp},
};
use mptcp_common::lb::{LB_MAP_NAMES, LB_VIPS_MAP, MAX_BACKENDS, backend_state};

use super::*;
use crate::bpf::{
    self, BALANCER_OBJECT, IngressHook, Instance, LoaderError, Privilege, XdpAttachMode, check_bpffs,
    check_privileges,
};

/// The balancer's programs: XDP, and the tcx classifier for interfaces where XDP does not pay.
pub(crate) const LB_XDP_PROGRAM: &str = "mptcp_lb";

pub(crate) const LB_TC_PROGRAM: &str = "mptcp_lb_tc";

/// Their links, per interface (`detach` takes whatever links an interface's directory holds).
const LB_XDP_LINK: &str = "lb_xdp";

const LB_TC_LINK: &str = "lb_tc";

/// Loads the balancer, fills its maps from `config` and attaches it to the configured interfaces.
pub async fn start(
    instance: &Instance,
    config: &LbConfig,
    steering_override: Option<Steering>,
) -> Result<(), SteeringError> {
    check_privileges(Privilege::Attach)?;
    check_bpffs()?;
    if instance.exists() {
        return Err(SteeringError::AlreadyRunning(instance.name.clone()));
    }
    let mut links = Vec::new();
    for backend in &config.backends {
        links.push(Link::resolve(backend).await?);
    }
    let mode: XdpAttachMode = config.xdp_mode.map(Into::into).unwrap_or(XdpAttachMode::Auto);
    let guard = bpf::Claim::new(instance)?;
    let mut ebpf_loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> =
        LB_MAP_NAMES.iter().map(|name| (*name, instance.map_path(name))).collect();
    for (name, path) in &paths {
        ebpf_loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = ebpf_loader.load(BALANCER_OBJECT).map_err(LoaderError::Load)?;
    let mut maps =
        LbMaps::open(|name| ebpf.take_map(name).ok_or(SteeringError::Config(format!("map {name} missing"))))?;

    maps.configure(config, &links, steering_override)?;
    for iface in &config.interfaces {
        let dir = instance.iface_dir(iface)?;
        bpf::create_dir(&dir)?;
        match mode.hook(iface) {
            IngressHook::Xdp(xdp_mode) => {
                let xdp: &mut Xdp = bpf::program(&mut ebpf, LB_XDP_PROGRAM)?;
                if xdp.fd().is_err() {
                    xdp.load().map_err(|source| LoaderError::Program {
                        what: "loading the balancer".into(),
                        source,
                    })?;
                }
                bpf::attach_xdp(xdp, iface, xdp_mode, &dir.join(LB_XDP_LINK))?;
            }
            IngressHook::Tc => bpf::attach_tcx(
                &mut ebpf,
                LB_TC_PROGRAM,
                iface,
                TcAttachType::Ingress,
                &dir.join(LB_TC_LINK),
            )?,
        }
    }
    guard.keep();
    Ok(())
}

/// Detaches the balancer from every interface and removes its pins.
pub fn stop(instance: &Instance) -> Result<(), SteeringError> {
    if !instance.map_path(LB_VIPS_MAP).exists() {
        return Err(SteeringError::NotRunning(instance.name.clone()));
    }
    for iface in instance.interfaces()? {
        bpf::detach(instance, &iface)?;
    }
    bpf::remove_instance(instance)?;
    Ok(())
}

/// Adds a backend to the running balancer, serving `vips` (addresses as configured).
pub async fn add_backend(
    instance: &Instance,
    backend: &BackendConfig,
    vips: &[SocketAddr],
) -> Result<(), SteeringError> {
    backend.validate()?;
    let mut maps = LbMaps::pinned(instance)?;
    if maps.slot_of(&backend.name).is_ok() {
        return Err(SteeringError::Config(format!("backend {} exists", backend.name)));
    }
    let slots = maps.backend_slots()?;
    let slot = slots
        .iter()
        .find(|(_, b)| b.state == backend_state::UNUSED)
        .map(|(slot, _)| *slot)
        .ok_or_else(|| SteeringError::Config(format!("all {MAX_BACKENDS} backend slots are used")))?;
    let mut vip_mask = 0u32;
    for address in vips {
        let vip = maps
            .vips
            .get(&vip_key(*address), 0)
            .map_err(|_| SteeringError::Config(format!("no VIP {address}")))?;
        vip_mask |= 1 << vip.index;
    }
    let link = Link::resolve(backend).await?;
    maps.set_backend(slot, &backend_entry(backend, &link, vip_mask))?;
    maps.set_join_addresses(slot, &backend.join_addresses)?;
    maps.rebuild()
}

/// Drains (no new flows; existing flows and MPTCP connections stay) or removes a backend.
pub fn set_backend_state(instance: &Instance, name: &str, state: u32) -> Result<(), SteeringError> {
    LbMaps::pinned(instance)?.set_backend_state(name, state)
}
