//! The virtual-MAC links of owned VIP groups: a macvlan with the group's
//! MAC on each announcing interface, so the kernel takes in traffic sent to
//! that MAC (a switch delivers it to this port once the owner has sent from
//! it). The layer 2 thread says which links it wants; this worker, on the
//! main runtime, makes them with rtnetlink off that thread (so a slow
//! kernel never delays a heartbeat) and reports each one ready or failed.
//! The naming and the MACs are pure (`ferrolb_l2::vmac`).

use ferrolb_l2::vmac::LINK_ALIAS_PREFIX;
use ferrolb_l2::wire::Mac;
use std::collections::BTreeMap;
use tokio::sync::watch;

/// One link wanted: the group's MAC on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Its name (`ferrolb_l2::vmac::link_name`).
    pub name: String,
    /// Its alias, naming the group for operators.
    pub alias: String,
}

/// The links wanted, by (parent interface index, MAC).
pub type Wanted = BTreeMap<(u32, Mac), Want>;

/// What became of a wanted link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Up: traffic to the MAC is taken in here.
    Ready,
    /// Not made; the group answers with the node's MAC. Why, for the operator.
    Failed(String),
}

/// The worker's report: a status for every wanted link it has handled.
pub type Statuses = BTreeMap<(u32, Mac), Status>;

/// The handle the layer 2 thread holds.
pub struct Worker {
    want: watch::Sender<Wanted>,
}

impl Worker {
    /// Starts the worker on `runtime`; statuses arrive on the receiver.
    pub fn spawn(runtime: &tokio::runtime::Handle) -> (Worker, watch::Receiver<Statuses>) {
        let (want, mut rx) = watch::channel(Wanted::new());
        let (status_tx, status_rx) = watch::channel(Statuses::new());
        runtime.spawn(async move {
            // (parent, MAC) -> link index, for the links this run made.
            let mut held: BTreeMap<(u32, Mac), u32> = BTreeMap::new();
            while rx.changed().await.is_ok() {
                let wanted = rx.borrow_and_update().clone();
                let before = held.clone();
                let done = tokio::task::spawn_blocking(move || reconcile(before, &wanted)).await;
                match done {
                    Ok((h, statuses)) => {
                        held = h;
                        status_tx.send_replace(statuses);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the virtual MAC worker failed; virtual MACs are no longer made or removed");
                        return;
                    }
                }
            }
            // The layer 2 thread is gone (the speaker stops): give every link up.
            let _ = tokio::task::spawn_blocking(move || reconcile(held, &Wanted::new())).await;
        });
        (Worker { want }, status_rx)
    }

    /// Wants exactly `links` (made now, removed when absent).
    pub fn want(&self, links: Wanted) {
        self.want.send_if_modified(|w| {
            let changed = *w != links;
            *w = links;
            changed
        });
    }
}

/// Removes the links not wanted, then makes the new ones; blocking.
fn reconcile(
    mut held: BTreeMap<(u32, Mac), u32>,
    wanted: &Wanted,
) -> (BTreeMap<(u32, Mac), u32>, Statuses) {
    // Removed first: a group moving between interfaces never holds two links.
    let gone: Vec<(u32, Mac)> = held
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    for k in gone {
        if let Some(index) = held.remove(&k) {
            match crate::netlink::delete_link(index) {
                Ok(()) => tracing::info!(mac = %k.1, parent = k.0, "virtual MAC given up"),
                Err(e) => {
                    tracing::error!(mac = %k.1, link = index, error = %e, "cannot remove a virtual MAC link; traffic to it may still arrive here")
                }
            }
        }
    }
    let mut statuses = Statuses::new();
    for (k, w) in wanted {
        if held.contains_key(k) {
            statuses.insert(*k, Status::Ready);
            continue;
        }
        match crate::netlink::create_macvlan(&w.name, k.0, k.1 .0, &w.alias) {
            Ok(index) => {
                tracing::info!(mac = %k.1, link = %w.name, parent = k.0, "virtual MAC held");
                held.insert(*k, index);
                statuses.insert(*k, Status::Ready);
            }
            Err(e) => {
                statuses.insert(*k, Status::Failed(explain(&e)));
            }
        }
    }
    (held, statuses)
}

/// What a refusal means for the operator.
fn explain(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(1) => format!("{e}: the speaker lacks CAP_NET_ADMIN"),
        Some(16) => format!("{e}: the interface is a bridge port or bond slave, which cannot carry a macvlan; announce on the bridge or bond instead"),
        Some(95) | Some(22) => format!("{e}: this interface or kernel cannot carry a macvlan (no macvlan module?)"),
        _ => e.to_string(),
    }
}

/// Removes every virtual-MAC link on this host (an earlier run's, found by
/// their alias); returns their names. Blocking.
pub fn remove_all() -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for l in crate::netlink::links()? {
        let ours = l.kind.as_deref() == Some("macvlan")
            && l.alias
                .as_deref()
                .is_some_and(|a| a.starts_with(LINK_ALIAS_PREFIX));
        if ours {
            crate::netlink::delete_link(l.index)?;
            removed.push(l.name);
        }
    }
    Ok(removed)
}

/// [`remove_all`] off the runtime, logged: what was removed, or why not
/// (the next start tries again). `when` says which links these are.
pub async fn remove_all_logged(when: &str) {
    match tokio::task::spawn_blocking(remove_all).await {
        Ok(Ok(removed)) if !removed.is_empty() => {
            tracing::info!(links = ?removed, "removed the virtual MAC links {when}")
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot list or remove the virtual MAC links {when}")
        }
        _ => {}
    }
}
