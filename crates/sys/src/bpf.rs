//! The kernel data path's BPF program: loaded from the object build.rs
//! compiled (bpf/forward.bpf.c), attached at tc ingress on interfaces, its
//! maps written from the planner's writes (`ferrolb_datapath::plan`) and
//! its counters read back.
//!
//! No `unsafe` here: aya does the system calls. It lives in this crate so
//! that everything that hands memory to the kernel is in one place.

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{self, SchedClassifierLinkId, TcAttachType};
use aya::programs::SchedClassifier;
use aya::Ebpf;
use ferrolb_datapath::maps::{
    BackendVal, Counters, RangeKey, SvcKey, SvcVal, BACKEND_LEN, COUNTERS_LEN, RANGE_KEY_LEN,
    SVC_KEY_LEN, SVC_VAL_LEN,
};
use ferrolb_datapath::plan::Writes;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The compiled program (empty when this binary was built without clang).
const PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/forward.bpf.o"));
/// Its entry point.
const ENTRY: &str = "ferrolb_forward";

/// Why the kernel data path cannot run (the service then runs in user space).
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The binary carries no program.
    #[error("this binary was built without the kernel data path (clang and libbpf-dev were missing when it was built)")]
    NotBuilt,
    /// The kernel refused the object or a map.
    #[error("loading the kernel data path: {0} (it needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, and a kernel of 6.7 or later)")]
    Load(String),
    /// Attaching to an interface failed.
    #[error("attaching the kernel data path to {iface}: {error}")]
    Attach {
        /// The interface.
        iface: String,
        /// What failed.
        error: String,
    },
    /// The pin directory cannot be used (not a bpffs, not writable).
    #[error("kernel data path pins: {0}")]
    Pin(String),
    /// A map could not be written or read.
    #[error("kernel data path map {map}: {error}")]
    Map {
        /// The map.
        map: &'static str,
        /// What failed.
        error: String,
    },
}

/// Whether this binary carries the program at all.
pub fn built() -> bool {
    !PROGRAM.is_empty()
}

/// The error, with its causes (aya's loader errors carry the verifier's
/// log in a source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    // A verifier log can be thousands of lines: the end says why.
    if s.len() > 2000 {
        s = format!("...{}", &s[s.len() - 2000..]);
    }
    s
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |e| BpfError::Map {
        map,
        error: chain(&e),
    }
}

/// The layout of the maps this binary's program uses (build.rs hashes
/// `bpf/maps.h`): pinned maps are reused only by a program of the same
/// layout.
const LAYOUT: &str = env!("FERROLB_MAPS_LAYOUT");
/// Every map of the program, pinned and reused together.
const MAPS: [&str; 8] = [
    "services",
    "maglev",
    "backends",
    "flows",
    "reverse",
    "ranges",
    "svc_stats",
    "backend_stats",
];

/// Where the program is attached to one interface.
enum Attachment {
    /// A link the program tracks: it ends with the program.
    Owned(SchedClassifierLinkId),
    /// A tcx link pinned at `path`: it outlives this process (a crash
    /// leaves the data path forwarding for the next speaker to adopt).
    Pinned { link: FdLink, path: PathBuf },
}

/// What a restarted speaker reads back from the pinned maps.
#[derive(Debug, Clone, Default)]
pub struct Adopted {
    /// The services the maps hold.
    pub services: Vec<(SvcKey, SvcVal)>,
    /// The backend entries in use, by id.
    pub backends: Vec<(u32, BackendVal)>,
    /// The allowed source prefixes.
    pub ranges: Vec<RangeKey>,
}

/// The loaded program and where it is attached. Dropping it detaches
/// links it owns and frees unpinned maps (forgetting every flow); pinned
/// links and maps stay until [`Datapath::unpin`].
pub struct Datapath {
    ebpf: Ebpf,
    links: BTreeMap<String, Attachment>,
    /// The pin directory, when pinned.
    pins: Option<PathBuf>,
    /// Links a previous process pinned, not yet taken over or removed.
    stale_links: BTreeMap<String, PinnedLink>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("attached", &self.links.keys().collect::<Vec<_>>())
            .field("pins", &self.pins)
            .finish()
    }
}

fn pin_err(what: &str, e: impl std::fmt::Display) -> BpfError {
    BpfError::Pin(format!("{what}: {e}"))
}

impl Datapath {
    /// Loads the program and creates its maps (empty: nothing is forwarded
    /// until [`Datapath::write`]).
    pub fn load() -> Result<Datapath, BpfError> {
        if !built() {
            return Err(BpfError::NotBuilt);
        }
        let ebpf = Ebpf::load(PROGRAM).map_err(|e| BpfError::Load(chain(&e)))?;
        Datapath::finish_load(ebpf, None)
    }

    /// Loads the program with its maps and links pinned under `dir` (on a
    /// bpffs): maps a previous process of the same layout pinned there are
    /// reused, flows and all, and read back for the planner
    /// ([`Adopted`]); links it pinned are taken over by
    /// [`Datapath::attach`] (the program in them replaced atomically) and
    /// the rest removed by [`Datapath::drop_stale`].
    pub fn load_pinned(dir: &Path) -> Result<(Datapath, Option<Adopted>), BpfError> {
        if !built() {
            return Err(BpfError::NotBuilt);
        }
        let maps_dir = dir.join(format!("maps-{LAYOUT}"));
        let links_dir = dir.join("links");
        for d in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(d).map_err(|e| pin_err(&d.display().to_string(), e))?;
        }
        let existing = maps_dir.join("services").exists();
        let mut loader = aya::EbpfLoader::new();
        for m in MAPS {
            loader.map_pin_path(m, maps_dir.join(m));
        }
        let ebpf = loader.load(PROGRAM).map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::PinError { .. }) => pin_err(
                &format!("pinning the maps in {}", maps_dir.display()),
                chain(&e),
            ),
            _ => BpfError::Load(chain(&e)),
        })?;
        let mut dp = Datapath::finish_load(ebpf, Some(dir.to_path_buf()))?;
        if let Ok(entries) = std::fs::read_dir(&links_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                match PinnedLink::from_pin(e.path()) {
                    Ok(l) => {
                        dp.stale_links.insert(name, l);
                    }
                    // Not a link (or a dead one): nothing to take over.
                    Err(_) => {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        let adopted = if existing {
            Some(dp.read_back()?)
        } else {
            None
        };
        Ok((dp, adopted))
    }

    fn finish_load(mut ebpf: Ebpf, pins: Option<PathBuf>) -> Result<Datapath, BpfError> {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(ENTRY)
            .ok_or_else(|| BpfError::Load(format!("the object has no program {ENTRY}")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| BpfError::Load(chain(&e)))?;
        prog.load().map_err(|e| BpfError::Load(chain(&e)))?;
        Ok(Datapath {
            ebpf,
            links: BTreeMap::new(),
            pins,
            stale_links: BTreeMap::new(),
        })
    }

    /// What the reused maps hold.
    fn read_back(&self) -> Result<Adopted, BpfError> {
        let get = |name: &'static str| {
            self.ebpf.map(name).ok_or(BpfError::Map {
                map: name,
                error: "missing from the object".into(),
            })
        };
        let mut out = Adopted::default();
        let services: HashMap<&MapData, [u8; SVC_KEY_LEN], [u8; SVC_VAL_LEN]> =
            HashMap::try_from(get("services")?).map_err(map_err("services"))?;
        for kv in services.iter() {
            let (k, v) = kv.map_err(map_err("services"))?;
            if let Some(key) = SvcKey::decode(&k) {
                out.services.push((key, SvcVal::decode(&v)));
            }
        }
        let backends: Array<&MapData, [u8; BACKEND_LEN]> =
            Array::try_from(get("backends")?).map_err(map_err("backends"))?;
        for id in 0..backends.len() {
            let b = backends.get(&id, 0).map_err(map_err("backends"))?;
            if let Some(v) = BackendVal::decode(&b) {
                out.backends.push((id, v));
            }
        }
        let families: std::collections::HashMap<u32, bool> = out
            .services
            .iter()
            .map(|(k, v)| (v.id, k.vip.is_ipv4()))
            .collect();
        let ranges: LpmTrie<&MapData, [u8; RANGE_KEY_LEN - 4], u8> =
            LpmTrie::try_from(get("ranges")?).map_err(map_err("ranges"))?;
        for k in ranges.keys() {
            let k = k.map_err(map_err("ranges"))?;
            let data = k.data();
            let svc = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            // A prefix of a service no longer in the map: the family is a
            // guess, and it does not matter: it is only removed.
            let v4 = families.get(&svc).copied().unwrap_or(true);
            if let Some(r) = RangeKey::decode(k.prefix_len(), &data, v4) {
                out.ranges.push(r);
            }
        }
        Ok(out)
    }

    /// Attaches at `iface`'s tc ingress (adding the clsact qdisc if
    /// missing). Attaching twice is a no-op. Pinned: a link a previous
    /// process left on `iface` gets this program in place of its own in
    /// one atomic step (no packet sees neither).
    pub fn attach(&mut self, iface: &str) -> Result<(), BpfError> {
        if self.links.contains_key(iface) {
            return Ok(());
        }
        let attach_err = |error: String| BpfError::Attach {
            iface: iface.to_string(),
            error,
        };
        // On 6.6 and later aya attaches through a tcx link and needs no
        // qdisc; before, the clsact qdisc must exist. One that exists
        // (another tool's, or ours) is fine, so the result only matters if
        // attaching fails.
        let qdisc = tc::qdisc_add_clsact(iface).err().map(|e| chain(&e));
        let with_qdisc = |e: String| match &qdisc {
            Some(q) => format!("{e} (adding the clsact qdisc: {q})"),
            None => e,
        };
        let prog: &mut SchedClassifier =
            self.ebpf
                .program_mut(ENTRY)
                .expect("loaded")
                .try_into()
                .map_err(|e: aya::programs::ProgramError| attach_err(chain(&e)))?;
        let Some(dir) = &self.pins else {
            let link = prog
                .attach(iface, TcAttachType::Ingress)
                .map_err(|e| attach_err(with_qdisc(chain(&e))))?;
            self.links
                .insert(iface.to_string(), Attachment::Owned(link));
            return Ok(());
        };
        let path = dir.join("links").join(iface);
        let taken_over = self.stale_links.remove(iface);
        let adopting = taken_over.is_some();
        let id = match taken_over {
            Some(old) => {
                let link = tc::SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(|e| attach_err(chain(&e)))?;
                prog.attach_to_link(link)
                    .map_err(|e| attach_err(chain(&e)))?
            }
            None => prog
                .attach(iface, TcAttachType::Ingress)
                .map_err(|e| attach_err(with_qdisc(chain(&e))))?,
        };
        let link = prog.take_link(id).map_err(|e| attach_err(chain(&e)))?;
        let fd: FdLink = link.try_into().map_err(|e: LinkError| {
            attach_err(format!(
                "not a tcx link, so it cannot be pinned: {}",
                chain(&e)
            ))
        })?;
        let link =
            if adopting {
                // The pin already names this link.
                fd
            } else {
                FdLink::from(fd.pin(&path).map_err(|e| {
                    attach_err(format!("pinning at {}: {}", path.display(), chain(&e)))
                })?)
            };
        self.links
            .insert(iface.to_string(), Attachment::Pinned { link, path });
        Ok(())
    }

    /// Detaches what a previous process left and this one did not take
    /// over (interfaces no longer wanted) and frees pinned maps of another
    /// layout; call once the interfaces wanted are attached. Returns the
    /// interfaces detached.
    pub fn drop_stale(&mut self) -> Vec<String> {
        let names: Vec<String> = self.stale_links.keys().cloned().collect();
        for (_, l) in std::mem::take(&mut self.stale_links) {
            // Unpinned and closed: the kernel detaches it.
            let _ = l.unpin();
        }
        if let Some(dir) = &self.pins {
            let mine = format!("maps-{LAYOUT}");
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let n = e.file_name().to_string_lossy().to_string();
                    if n.starts_with("maps-") && n != mine {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        names
    }

    /// Detaches from every interface and removes the pins (an orderly
    /// stop): the maps, flows included, are freed with the program.
    pub fn unpin(mut self) {
        let names: Vec<String> = self.links.keys().cloned().collect();
        for n in names {
            let _ = self.detach(&n);
        }
        self.drop_stale();
        if let Some(dir) = &self.pins {
            let _ = std::fs::remove_dir_all(dir.join(format!("maps-{LAYOUT}")));
        }
    }

    /// Whether maps and links are pinned.
    pub fn pinned(&self) -> bool {
        self.pins.is_some()
    }

    /// Detaches from `iface` (no-op if not attached).
    pub fn detach(&mut self, iface: &str) -> Result<(), BpfError> {
        let Some(att) = self.links.remove(iface) else {
            return Ok(());
        };
        let err = |error: String| BpfError::Attach {
            iface: iface.to_string(),
            error,
        };
        match att {
            Attachment::Owned(link) => {
                let prog: &mut SchedClassifier = self
                    .ebpf
                    .program_mut(ENTRY)
                    .expect("loaded")
                    .try_into()
                    .map_err(|e: aya::programs::ProgramError| err(chain(&e)))?;
                prog.detach(link).map_err(|e| err(chain(&e)))
            }
            Attachment::Pinned { link, path } => {
                // Without its pin the link ends when its last descriptor
                // (this one) closes.
                let _ = std::fs::remove_file(&path);
                drop(link);
                Ok(())
            }
        }
    }

    /// The interfaces the program is attached to.
    pub fn attached(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, BpfError> {
        self.ebpf.map_mut(name).ok_or(BpfError::Map {
            map: name,
            error: "missing from the object".into(),
        })
    }

    /// Makes the writes, in their order (see [`Writes`]).
    pub fn write(&mut self, w: &Writes) -> Result<(), BpfError> {
        {
            let mut backends: Array<&mut MapData, [u8; BACKEND_LEN]> =
                Array::try_from(self.map("backends")?).map_err(map_err("backends"))?;
            for (id, b) in &w.backends {
                backends
                    .set(*id, b.encode(), 0)
                    .map_err(map_err("backends"))?;
            }
        }
        {
            let mut maglev: Array<&mut MapData, u32> =
                Array::try_from(self.map("maglev")?).map_err(map_err("maglev"))?;
            for (i, b) in &w.slots {
                maglev.set(*i, *b, 0).map_err(map_err("maglev"))?;
            }
        }
        {
            let mut ranges: LpmTrie<&mut MapData, [u8; RANGE_KEY_LEN - 4], u8> =
                LpmTrie::try_from(self.map("ranges")?).map_err(map_err("ranges"))?;
            for r in &w.ranges_add {
                ranges
                    .insert(&range_key(r), 1, 0)
                    .map_err(map_err("ranges"))?;
            }
        }
        {
            let mut services: HashMap<&mut MapData, [u8; SVC_KEY_LEN], [u8; SVC_VAL_LEN]> =
                HashMap::try_from(self.map("services")?).map_err(map_err("services"))?;
            for (k, v) in &w.services {
                services
                    .insert(k.encode(), v.encode(), 0)
                    .map_err(map_err("services"))?;
            }
            for k in &w.services_del {
                match services.remove(&k.encode()) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err("services")(e)),
                }
            }
        }
        {
            let mut ranges: LpmTrie<&mut MapData, [u8; RANGE_KEY_LEN - 4], u8> =
                LpmTrie::try_from(self.map("ranges")?).map_err(map_err("ranges"))?;
            for r in &w.ranges_del {
                match ranges.remove(&range_key(r)) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err("ranges")(e)),
                }
            }
        }
        {
            let mut backends: Array<&mut MapData, [u8; BACKEND_LEN]> =
                Array::try_from(self.map("backends")?).map_err(map_err("backends"))?;
            for id in &w.backends_del {
                // Written down (zero: no address, not up), not removed: an
                // array's entries always exist.
                backends
                    .set(*id, [0u8; BACKEND_LEN], 0)
                    .map_err(map_err("backends"))?;
            }
        }
        Ok(())
    }

    fn counters(&self, map: &'static str, id: u32) -> Result<Counters, BpfError> {
        let m = self.ebpf.map(map).ok_or(BpfError::Map {
            map,
            error: "missing from the object".into(),
        })?;
        let arr: PerCpuArray<&MapData, [u8; COUNTERS_LEN]> =
            PerCpuArray::try_from(m).map_err(map_err(map))?;
        let per_cpu = arr.get(&id, 0).map_err(map_err(map))?;
        let mut total = Counters::default();
        for c in per_cpu.iter() {
            if let Some(c) = Counters::decode(c) {
                total.add(&c);
            }
        }
        Ok(total)
    }

    /// A service's counters, summed over CPUs (by the id the planner gave it).
    pub fn service_counters(&self, id: u32) -> Result<Counters, BpfError> {
        self.counters("svc_stats", id)
    }

    /// A backend's counters, summed over CPUs.
    pub fn backend_counters(&self, id: u32) -> Result<Counters, BpfError> {
        self.counters("backend_stats", id)
    }
}

/// The LPM trie key: aya adds the prefix length in front of the data.
fn range_key(r: &ferrolb_datapath::maps::RangeKey) -> Key<[u8; RANGE_KEY_LEN - 4]> {
    let b = r.encode();
    let prefix_len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut data = [0u8; RANGE_KEY_LEN - 4];
    data.copy_from_slice(&b[4..]);
    Key::new(prefix_len, data)
}

/// The backend side of direct server return (bpf/decap.bpf.c).
const DECAP_PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/decap.bpf.o"));
/// Its ingress entry point: unwraps tunnelled packets for prepared VIPs.
const DECAP_ENTRY: &str = "ferrolb_decap";
/// Its egress entry point: clamps the MSS of SYN-ACKs from prepared VIPs.
const MSS_ENTRY: &str = "ferrolb_mss";
/// `struct vip_key` / `struct src_key` sizes (bpf/decap.h).
const VIP_KEY_LEN: usize = 20;

/// One VIP a DSR backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecapVip {
    /// The VIP.
    pub addr: std::net::IpAddr,
    /// The largest MSS its SYN-ACKs may advertise (0: leave them alone).
    pub mss: u16,
}

fn vip_key(ip: std::net::IpAddr) -> [u8; VIP_KEY_LEN] {
    let mut k = [0u8; VIP_KEY_LEN];
    k[..16].copy_from_slice(&ferrolb_datapath::maps::addr(ip));
    k[16] = if ip.is_ipv4() { 2 } else { 10 };
    k
}

/// The allowed-source key: IPv4 as `::ffff:a.b.c.d`, its prefix + 96.
fn src_key(ip: std::net::IpAddr, prefix: u8) -> Key<[u8; 16]> {
    match ip {
        std::net::IpAddr::V4(a) => Key::new(96 + u32::from(prefix), a.to_ipv6_mapped().octets()),
        std::net::IpAddr::V6(a) => Key::new(u32::from(prefix), a.octets()),
    }
}

/// Installs the backend side of DSR on `ifaces`: loads bpf/decap.bpf.c,
/// writes `vips` (and, when `sources` is not empty, the only outer sources
/// allowed to tunnel here) and attaches it at each interface's tc ingress
/// and egress as a classic tc filter, replacing one installed before.
///
/// Unlike the load balancer's program (a tcx link that ends with the
/// speaker), these filters outlive the command, as `tc filter add` would:
/// a prepared backend keeps serving when nothing of ferrolb runs on it.
/// [`decap_remove`] takes them off.
pub fn decap_install(
    ifaces: &[String],
    vips: &[DecapVip],
    sources: &[(std::net::IpAddr, u8)],
) -> Result<(), BpfError> {
    if DECAP_PROGRAM.is_empty() {
        return Err(BpfError::NotBuilt);
    }
    let mut ebpf = Ebpf::load(DECAP_PROGRAM).map_err(|e| BpfError::Load(chain(&e)))?;
    {
        let m = ebpf.map_mut("vips").ok_or(BpfError::Map {
            map: "vips",
            error: "missing from the object".into(),
        })?;
        let mut map: HashMap<&mut MapData, [u8; VIP_KEY_LEN], [u8; 4]> =
            HashMap::try_from(m).map_err(map_err("vips"))?;
        for v in vips {
            let mut val = [0u8; 4];
            val[..2].copy_from_slice(&v.mss.to_le_bytes());
            map.insert(vip_key(v.addr), val, 0)
                .map_err(map_err("vips"))?;
        }
    }
    if !sources.is_empty() {
        {
            let m = ebpf.map_mut("sources").ok_or(BpfError::Map {
                map: "sources",
                error: "missing from the object".into(),
            })?;
            let mut map: LpmTrie<&mut MapData, [u8; 16], u8> =
                LpmTrie::try_from(m).map_err(map_err("sources"))?;
            for (ip, prefix) in sources {
                map.insert(&src_key(*ip, *prefix), 1, 0)
                    .map_err(map_err("sources"))?;
            }
        }
        let m = ebpf.map_mut("config").ok_or(BpfError::Map {
            map: "config",
            error: "missing from the object".into(),
        })?;
        let mut map: Array<&mut MapData, u32> = Array::try_from(m).map_err(map_err("config"))?;
        map.set(0, 1, 0).map_err(map_err("config"))?;
    }
    for (entry, kind) in [
        (DECAP_ENTRY, TcAttachType::Ingress),
        (MSS_ENTRY, TcAttachType::Egress),
    ] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(entry)
            .ok_or_else(|| BpfError::Load(format!("the object has no program {entry}")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| BpfError::Load(chain(&e)))?;
        prog.load().map_err(|e| BpfError::Load(chain(&e)))?;
        for iface in ifaces {
            let attach_err = |error: String| BpfError::Attach {
                iface: iface.clone(),
                error,
            };
            // The qdisc may exist (ours from before, or another tool's).
            let _ = tc::qdisc_add_clsact(iface);
            // What an earlier run left: replaced, not stacked.
            let _ = tc::qdisc_detach_program(iface, kind, entry);
            prog.attach_with_options(
                iface,
                kind,
                tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
            )
            .map_err(|e| attach_err(chain(&e)))?;
        }
    }
    // The filters hold the programs, and they their maps; dropping `ebpf`
    // would detach them, which is not what a setup command wants.
    std::mem::forget(ebpf);
    Ok(())
}

/// Takes the backend side of DSR off `ifaces`; returns the interfaces it
/// was on. Interfaces without it are no error.
pub fn decap_remove(ifaces: &[String]) -> Result<Vec<String>, BpfError> {
    let mut removed = Vec::new();
    for iface in ifaces {
        let mut found = false;
        for (entry, kind) in [
            (DECAP_ENTRY, TcAttachType::Ingress),
            (MSS_ENTRY, TcAttachType::Egress),
        ] {
            match tc::qdisc_detach_program(iface, kind, entry) {
                Ok(()) => found = true,
                Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(BpfError::Attach {
                        iface: iface.clone(),
                        error: chain(&e),
                    })
                }
            }
        }
        if found {
            removed.push(iface.clone());
        }
    }
    Ok(removed)
}

/// Removes what a speaker pinned under `dir` and nobody took over (the
/// speaker restarted without kernel-mode ports, or `cleanup-node`): detaches
/// its links and frees its maps. Returns the interfaces detached; a missing
/// directory is no error.
pub fn remove_pins(dir: &Path) -> Vec<String> {
    let mut detached = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("links")) {
        for e in entries.flatten() {
            if let Ok(l) = PinnedLink::from_pin(e.path()) {
                // Unpinned and closed: the kernel detaches it.
                let _ = l.unpin();
                detached.push(e.file_name().to_string_lossy().to_string());
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("maps-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    detached
}
