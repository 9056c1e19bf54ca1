//! Builds the eBPF objects (mptcp-ebpf's binary targets `tracker`, `balancer` and `reference`, for
//! bpfel-unknown-none with BTF, by the nightly toolchain and bpf-linker that `cargo xtask setup`
//! installs) into OUT_DIR, each under its target's name, where `src/loader.rs` embeds them, so
//! the agent binary is self-contained.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == "mptcp-ebpf")
        .ok_or_else(|| anyhow!("mptcp-ebpf package not found in the workspace"))?;
    let root_dir =
        ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // mptcp-common is compiled into the programs: rebuild them when it changes.
    let common =
        root_dir.parent().ok_or_else(|| anyhow!("no workspace root above {root_dir}"))?.join("mptcp-common");
    println!("cargo:rerun-if-changed={common}");
    // aya-build forwards the inner cargo's stderr as build warnings; keep only real diagnostics.
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs failed; `cargo xtask setup` installs the nightly rust-src and bpf-linker they need")
}
