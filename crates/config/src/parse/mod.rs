//! Turns the YAML tree into typed structs, checking each field on its own,
//! one module per section. Checks that relate several fields or sections
//! live in `crossref`.

mod bgp;
mod failover;
mod forwarder;
mod l2;
mod labels;
mod pools;
mod services;

use bgp::*;
use failover::*;
use forwarder::*;
use l2::*;
use labels::*;
use pools::*;
use services::*;

use crate::decode::{Ctx, Field, Obj, Path};
use crate::model::*;
use crate::selector::{
    check_label_key, check_label_value, is_dns_label, LabelSelector, Requirement, SelectorOp,
};
use crate::value::Value;
use ferrolb_ipset::{AddrSpec, Cidr, Family, IpSet};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The longest TCP-MD5 key Linux accepts (TCP_MD5SIG_MAXKEYLEN).
const MAX_MD5_KEY: usize = 80;

/// The typed sections, each item with its index in the file so that
/// cross-reference errors name the right path even when an earlier item was
/// rejected.
#[derive(Default)]
pub(crate) struct Draft {
    pub pools: Vec<(usize, Pool)>,
    pub l2: Vec<(usize, L2Advertisement)>,
    pub bgp: Option<BgpDraft>,
    pub members: Vec<(usize, Member)>,
    pub services: Vec<(usize, Service)>,
    pub forwarder: ForwarderSettings,
    pub failover: FailoverSettings,
}

impl Draft {
    pub fn into_config(self) -> Config {
        fn strip<T>(v: Vec<(usize, T)>) -> Vec<T> {
            v.into_iter().map(|(_, t)| t).collect()
        }
        Config {
            pools: strip(self.pools),
            l2: strip(self.l2),
            bgp: self.bgp.map(|(router_id, peers, ads)| Bgp {
                router_id,
                peers: strip(peers),
                advertisements: strip(ads),
            }),
            members: strip(self.members),
            services: strip(self.services),
            forwarder: self.forwarder,
            failover: self.failover,
        }
    }
}

/// Decodes a list keeping each item's index.
fn indexed<T>(
    ctx: &mut Ctx,
    f: Option<Field<'_>>,
    each: fn(&mut Ctx, Field<'_>) -> Option<T>,
) -> Vec<(usize, T)> {
    let Some(f) = f else { return Vec::new() };
    let mut i = 0;
    ctx.list(f, |ctx, f| {
        let item = each(ctx, f).map(|t| (i, t));
        i += 1;
        item
    })
}

pub(crate) fn config(ctx: &mut Ctx, root: &Value) -> Draft {
    if *root == Value::Null {
        return Draft::default();
    }
    let path = Path::root();
    let Some(top) = ctx.object(
        Field {
            value: root,
            path: &path,
        },
        &[
            "pools",
            "l2",
            "bgp",
            "members",
            "services",
            "forwarder",
            "failover",
        ],
    ) else {
        return Draft::default();
    };
    Draft {
        pools: indexed(ctx, top.get("pools"), pool),
        l2: indexed(ctx, top.get("l2"), l2),
        bgp: top.get("bgp").and_then(|f| bgp(ctx, f)),
        members: indexed(ctx, top.get("members"), member),
        services: indexed(ctx, top.get("services"), service),
        forwarder: top
            .get("forwarder")
            .and_then(|f| forwarder(ctx, f))
            .unwrap_or_default(),
        failover: top
            .get("failover")
            .and_then(|f| failover(ctx, f))
            .unwrap_or_default(),
    }
}

/// A name that other sections refer to: a lower-case DNS label.
fn name(ctx: &mut Ctx, obj: &Obj<'_>, what: &str) -> Option<String> {
    let f = obj.require(ctx, "name", &format!("give the {what} a name"))?;
    let name = ctx.string(f)?;
    if !is_dns_label(&name) {
        ctx.error(
            f.path,
            format!("{name:?} is not a valid name: use 1-63 lower-case letters, digits and '-'"),
        );
        return None;
    }
    Some(name)
}
