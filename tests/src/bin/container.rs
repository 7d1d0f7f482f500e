//! `ferrolb-container SPEC.json`: starts one container the way runc does for
//! the kubelet, then becomes it (execve, no fork: the process id the test
//! sees is the container's).
//!
//! Run as root inside the pod's network namespace (`ip netns exec`). In a
//! mount namespace of its own it makes the image directory the root
//! (pivot_root), mounts `/proc` with `/proc/sys` read-only unless
//! privileged, `/sys` read-only, a `/dev` with the usual character devices,
//! the volumes (the ServiceAccount token), then remounts the root read-only
//! when asked; it sets the host name of a pod with a network of its own,
//! the user and group, the capability sets (bounding, permitted, effective,
//! inheritable, ambient: exactly the container's), `no_new_privs`, and
//! executes the command with exactly the container's environment. Failures
//! print one line and exit 127, as a runtime's start error would.
//!
//! With `seccompProfile: RuntimeDefault` it installs a filter that refuses
//! (EPERM) the system calls the container runtimes' default profile blocks
//! for a container without CAP_SYS_ADMIN (mount, unshare, setns, ptrace,
//! bpf, kexec, module loading, keyctl, ...).
//!
//! Not emulated: cgroup limits, a PID namespace (the test reads
//! `/proc/PID/status` of the container from outside), AppArmor.

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, execve, pivot_root, sethostname, setresgid, setresuid, Gid, Uid};
use serde_json::Value;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What the runner asks for (tests/src/pods.rs writes it).
struct Spec {
    root: PathBuf,
    read_only_root: bool,
    privileged: bool,
    hostname: Option<String>,
    mounts: Vec<(PathBuf, String, bool)>,
    env: Vec<String>,
    argv: Vec<String>,
    uid: u32,
    gid: u32,
    caps: Vec<String>,
    no_new_privs: bool,
    seccomp_default: bool,
}

fn parse(v: &Value) -> Result<Spec, String> {
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Spec {
        root: PathBuf::from(s("root").ok_or("spec has no root")?),
        read_only_root: v["readOnlyRoot"].as_bool().unwrap_or(false),
        privileged: v["privileged"].as_bool().unwrap_or(false),
        hostname: s("hostname"),
        mounts: v["mounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            PathBuf::from(m["source"].as_str().unwrap_or("")),
                            m["target"].as_str().unwrap_or("").to_string(),
                            m["readOnly"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        env: strings("env"),
        argv: strings("argv"),
        uid: v["uid"].as_u64().unwrap_or(0) as u32,
        gid: v["gid"].as_u64().unwrap_or(0) as u32,
        caps: strings("capabilities"),
        no_new_privs: v["noNewPrivs"].as_bool().unwrap_or(false),
        seccomp_default: v["seccomp"].as_str() == Some("RuntimeDefault"),
    })
}

fn at(root: &Path, inside: &str) -> PathBuf {
    root.join(inside.trim_start_matches('/'))
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind {} on {}: {e}", source.display(), target.display()))?;
    if read_only {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("remount {} read-only: {e}", target.display()))?;
    }
    Ok(())
}

fn mkdirs(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

fn filesystem(spec: &Spec) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare the mount namespace: {e}"))?;
    // Nothing mounted here may leak back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    let root = &spec.root;
    // pivot_root needs the new root to be a mount point.
    bind(root, root, false)?;
    for d in ["proc", "sys", "dev"] {
        mkdirs(&at(root, d))?;
    }
    let proc_dir = at(root, "proc");
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    let sys_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !spec.privileged {
        // As runc: these /proc paths are read-only for unprivileged containers.
        for p in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
            let path = proc_dir.join(p);
            if path.exists() {
                bind(&path, &path, true)?;
            }
        }
    }
    mount(
        Some("sysfs"),
        &at(root, "sys"),
        Some("sysfs"),
        if spec.privileged {
            sys_flags
        } else {
            sys_flags | MsFlags::MS_RDONLY
        },
        None::<&str>,
    )
    .map_err(|e| format!("mount /sys: {e}"))?;
    let dev = at(root, "dev");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755,size=65536k"),
    )
    .map_err(|e| format!("mount /dev: {e}"))?;
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(d);
        std::fs::write(&target, b"").map_err(|e| format!("create /dev/{d}: {e}"))?;
        bind(&Path::new("/dev").join(d), &target, false)?;
    }
    for (source, target, read_only) in &spec.mounts {
        let t = at(root, target);
        mkdirs(&t)?;
        bind(source, &t, *read_only)?;
    }
    chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    // runc's trick: stack the old root under the new one, then detach it.
    pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach the old root: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    if spec.read_only_root {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("remount / read-only: {e}"))?;
    }
    Ok(())
}

fn capability(name: &str) -> Result<Capability, String> {
    let full = format!("CAP_{}", name.to_ascii_uppercase());
    full.parse::<Capability>()
        .map_err(|_| format!("unknown capability {name}"))
}

fn credentials(spec: &Spec) -> Result<(), String> {
    let keep: CapsHashSet = if spec.privileged {
        // Everything the runtime itself holds (a sandbox may hold less than all).
        caps::read(None, CapSet::Permitted).map_err(|e| format!("read capabilities: {e}"))?
    } else {
        spec.caps
            .iter()
            .map(|c| capability(c))
            .collect::<Result<_, _>>()?
    };
    // The bounding set first: dropping from it needs CAP_SETPCAP, held until the uid changes.
    for c in caps::all() {
        if !keep.contains(&c) {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(|e| format!("drop {c} from bounding: {e}"))?;
        }
    }
    nix::unistd::setgroups(&[Gid::from_raw(spec.gid)]).map_err(|e| format!("setgroups: {e}"))?;
    setresgid(
        Gid::from_raw(spec.gid),
        Gid::from_raw(spec.gid),
        Gid::from_raw(spec.gid),
    )
    .map_err(|e| format!("setresgid {}: {e}", spec.gid))?;
    if spec.uid != 0 {
        // Keep the permitted set across the change to a non-zero uid.
        nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keepcaps: {e}"))?;
        setresuid(
            Uid::from_raw(spec.uid),
            Uid::from_raw(spec.uid),
            Uid::from_raw(spec.uid),
        )
        .map_err(|e| format!("setresuid {}: {e}", spec.uid))?;
    }
    let set = |which: CapSet| {
        caps::set(None, which, &keep).map_err(|e| format!("set {which:?} capabilities: {e}"))
    };
    set(CapSet::Effective)?;
    set(CapSet::Permitted)?;
    set(CapSet::Effective)?;
    set(CapSet::Inheritable)?;
    // Ambient capabilities survive execve for a non-root user, as the
    // runtime gives them; for root the bounding set decides anyway.
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient: {e}"))?;
    for c in &keep {
        caps::raise(None, CapSet::Ambient, *c).map_err(|e| format!("raise {c} ambient: {e}"))?;
    }
    if spec.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    Ok(())
}

/// The system calls the runtimes' default seccomp profile (moby's
/// `default.json`, containerd's and CRI-O's copies) refuses to a container
/// without CAP_SYS_ADMIN and friends.
const RUNTIME_DEFAULT_DENIED: &[i64] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_bpf,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_init_module,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_mount,
    libc::SYS_move_mount,
    libc::SYS_open_by_handle_at,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_perf_event_open,
    libc::SYS_pivot_root,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_ptrace,
    libc::SYS_quotactl,
    libc::SYS_reboot,
    libc::SYS_request_key,
    libc::SYS_setns,
    libc::SYS_settimeofday,
    libc::SYS_swapoff,
    libc::SYS_swapon,
    libc::SYS_umount2,
    libc::SYS_unshare,
    libc::SYS_userfaultfd,
];

/// The runtime default profile's exceptions by capability (containerd's
/// `seccomp_default.go`, moby's `default.json`): `bpf` with CAP_BPF,
/// `perf_event_open` with CAP_PERFMON (either with CAP_SYS_ADMIN).
fn allowed_by_caps(nr: i64, caps: &[String]) -> bool {
    let has = |c: &str| caps.iter().any(|x| x.eq_ignore_ascii_case(c));
    match nr {
        libc::SYS_bpf => has("BPF") || has("SYS_ADMIN"),
        libc::SYS_perf_event_open => has("PERFMON") || has("SYS_ADMIN"),
        _ => false,
    }
}

fn seccomp_runtime_default(caps: &[String]) -> Result<(), String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp on {}: {e:?}", std::env::consts::ARCH))?;
    let rules = RUNTIME_DEFAULT_DENIED
        .iter()
        .filter(|nr| !allowed_by_caps(**nr, caps))
        .map(|nr| (*nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("seccomp filter: {e}"))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("seccomp filter: {e:?}"))?;
    seccompiler::apply_filter(&program).map_err(|e| format!("install the seccomp filter: {e}"))
}

fn start(spec: &Spec) -> Result<std::convert::Infallible, String> {
    if let Some(h) = &spec.hostname {
        unshare(CloneFlags::CLONE_NEWUTS).map_err(|e| format!("unshare UTS: {e}"))?;
        sethostname(h).map_err(|e| format!("sethostname {h}: {e}"))?;
    }
    filesystem(spec)?;
    credentials(spec)?;
    // Last before exec: the filter refuses the very calls made above.
    if spec.seccomp_default {
        seccomp_runtime_default(&spec.caps)?;
    }
    let c = |s: &String| CString::new(s.as_str()).map_err(|_| format!("NUL in {s:?}"));
    let argv: Vec<CString> = spec.argv.iter().map(c).collect::<Result<_, _>>()?;
    let env: Vec<CString> = spec.env.iter().map(c).collect::<Result<_, _>>()?;
    let prog = argv.first().ok_or("the container has no command")?;
    execve(prog, &argv, &env).map_err(|e| {
        format!(
            "exec {:?}: {e} (is it in the image, at that path?)",
            spec.argv[0]
        )
    })
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: ferrolb-container SPEC.json");
        return ExitCode::from(2);
    };
    let spec = std::fs::read(&path)
        .map_err(|e| format!("read {path}: {e}"))
        .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| format!("{path}: {e}")))
        .and_then(|v| parse(&v));
    let err = match spec {
        Ok(spec) => match start(&spec) {
            Ok(never) => match never {},
            Err(e) => e,
        },
        Err(e) => e,
    };
    eprintln!("ferrolb-container: cannot start the container: {err}");
    ExitCode::from(127)
}
