//! `cargo xtask setup`: installs what a fresh Debian machine lacks, checks what cannot be
//! installed, and does nothing slow when everything is already there.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::util::{cargo, is_root, output, run};

/// Debian packages the project's commands, tests and demo call.
const PACKAGES: &[&str] = &[
    "bpftool",
    "ethtool",
    "iperf3",
    "iproute2",
    "iputils-ping",
    "mptcpd",
    // The path manager plugins (addr_adv, sspi) that `bench failover` runs mptcpd with: only
    // recommended by mptcpd, so --no-install-recommends leaves them out.
    "mptcpd-plugins",
    "mptcpize",
    "prometheus",
    "python3-scapy",
    "tcpdump",
    "tmux",
    "tshark",
    "util-linux",
    "xdp-tools",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The toolchain that builds the eBPF crate (`-Z build-std=core`).
const EBPF_TOOLCHAIN: &str = "nightly";

pub fn setup() -> Result<()> {
    ensure!(
        is_root(),
        "cargo xtask setup needs root: it installs Debian packages, mounts the BPF filesystem, \
         and the dataplane needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
    );
    kernel()?;
    packages()?;
    toolchain()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

/// What the kernel must offer; none of it can be installed, so name what is missing.
fn kernel() -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").context("reading the kernel release")?;
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    ensure!(
        (major, minor) >= (6, 6),
        "kernel {} is too old: the dataplane needs Linux >= 6.6 (tcx links)",
        release.trim()
    );
    ensure!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "the kernel has no BTF (/sys/kernel/btf/vmlinux): enable CONFIG_DEBUG_INFO_BTF"
    );
    ensure!(
        Path::new("/proc/sys/net/mptcp/enabled").exists(),
        "the kernel has no MPTCP (/proc/sys/net/mptcp): enable CONFIG_MPTCP and CONFIG_MPTCP_IPV6"
    );
    Ok(())
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .map(|out| !String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn toolchain() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to find the nightly toolchain")?;
    ensure!(
        toolchains.lines().any(|line| line.starts_with(EBPF_TOOLCHAIN)),
        "the {EBPF_TOOLCHAIN} toolchain is missing; it builds the eBPF programs (-Z build-std=core): \
         install it with `rustup toolchain install {EBPF_TOOLCHAIN}`"
    );
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))?;
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN]))?;
    }
    Ok(())
}

/// bpf-linker built against the nightly rustc's own libLLVM, so the bitcode it links comes from
/// the same LLVM that reads it.
fn bpf_linker() -> Result<()> {
    let installed = Command::new("bpf-linker").arg("--version").output().is_ok_and(|out| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    });
    if installed {
        return Ok(());
    }
    let nightly = format!("+{EBPF_TOOLCHAIN}");
    let version = output(Command::new("rustc").args([&nightly, "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in `rustc +nightly -vV`")?
        .trim()
        .to_owned();
    let sysroot = PathBuf::from(output(Command::new("rustc").args([&nightly, "--print", "sysroot"]))?.trim());
    let libllvm = find_libllvm(&sysroot.join("lib"), &llvm_major)?;
    let prefix = cargo_home().join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = libllvm.file_name().context("libLLVM has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("building bpf-linker {BPF_LINKER_VERSION} against {}", libllvm.display());
    run(cargo()
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{llvm_major}")])
        .env("LLVM_PREFIX", &prefix))
}

/// The real (versioned) libLLVM shared object of a toolchain, not its linker-script alias.
fn find_libllvm(dir: &Path, major: &str) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}.");
    fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name().is_some_and(|name| name.to_string_lossy().starts_with(&prefix))
                && fs::metadata(path).is_ok_and(|m| m.is_file())
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    if mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some("/sys/fs/bpf") && line.contains(" bpf "))
    {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .map_err(|e| e.context("mounting the BPF filesystem at /sys/fs/bpf"))?;
    if !Path::new("/sys/fs/bpf").is_dir() {
        bail!("/sys/fs/bpf is not a directory after mounting");
    }
    Ok(())
}
