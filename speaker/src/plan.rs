//! Standalone planning: gives each service of a standalone config its VIP
//! with the same allocator the Kubernetes controller uses, in file order so
//! the outcome is stable across restarts and hosts.

use ferrolb_alloc::{AllocError, Allocator, Assignment, FamilyPolicy, Port, Request, ServiceKey};
use ferrolb_config::{CheckKind, Config, ConfigError, Service};
use ferrolb_ipset::Family;
use std::fmt::Write;

/// The namespace standalone services live in, for the allocator and logs.
pub const STANDALONE_NAMESPACE: &str = "standalone";

/// A service with the address it got.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedService {
    /// The service as configured.
    pub service: Service,
    /// Its VIP and pool.
    pub assignment: Assignment,
}

/// The VIPs of every standalone service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In file order.
    pub services: Vec<PlannedService>,
}

fn request(index: usize, s: &Service, family: Family) -> Request {
    let mut r = Request::new(ServiceKey::new(STANDALONE_NAMESPACE, s.name.as_str()));
    r.created = index as i64;
    r.families = vec![family];
    r.policy = FamilyPolicy::SingleStack;
    r.requested_ips = s.ip.into_iter().collect();
    r.requested_pool = s.pool.clone();
    r.labels = s.labels.clone();
    // Services naming the same address share it, as long as their ports differ.
    r.sharing_key = s.ip.map(|ip| format!("ip:{ip}"));
    r.ports = s
        .ports
        .iter()
        .map(|p| Port {
            protocol: p.protocol,
            port: p.port,
        })
        .collect();
    r
}

/// Allocates every service's VIP; errors name the service's path.
pub fn plan(config: &Config) -> Result<Plan, Vec<ConfigError>> {
    let mut alloc = Allocator::new(&config.pools);
    let mut services = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in config.services.iter().enumerate() {
        let family = s.ip.map(Family::of).unwrap_or(Family::V4);
        let mut result = alloc.allocate(&request(i, s, family));
        // Without a requested address, a service takes IPv6 when its pools offer no IPv4.
        if s.ip.is_none() && matches!(result, Err(AllocError::FamilyUnavailable { .. })) {
            result = alloc.allocate(&request(i, s, Family::V6));
        }
        match result {
            Ok(assignment) => services.push(PlannedService {
                service: s.clone(),
                assignment,
            }),
            Err(e) => {
                let field = if s.ip.is_some() {
                    ".ip"
                } else if s.pool.is_some() {
                    ".pool"
                } else {
                    ""
                };
                errors.push(ConfigError {
                    path: format!("services[{i}]{field}"),
                    message: e.to_string(),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(Plan { services })
    } else {
        Err(errors)
    }
}

impl Plan {
    /// One block per service: VIP, origin, ports and backends.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "services: {}", self.services.len());
        for p in &self.services {
            let s = &p.service;
            let origin = if s.ip.is_some() {
                "requested"
            } else {
                "allocated"
            };
            let vip = p.assignment.ips[0];
            let _ = writeln!(
                w,
                "  {:<16} {vip} ({origin} from pool {})",
                s.name, p.assignment.pool
            );
            if !s.source_ranges.is_empty() {
                let r: Vec<String> = s.source_ranges.iter().map(|c| c.to_string()).collect();
                let _ = writeln!(w, "    allowed clients: {}", r.join(", "));
            }
            if s.ports.is_empty() {
                let _ = writeln!(w, "    no ports: the VIP is announced only");
            }
            for port in &s.ports {
                let backends: Vec<String> = port
                    .backends
                    .iter()
                    .map(|b| {
                        if b.weight == 1 {
                            b.address.to_string()
                        } else {
                            format!("{} (weight {})", b.address, b.weight)
                        }
                    })
                    .collect();
                let check = match &port.health_check {
                    None => "no health check".to_string(),
                    Some(hc) => match &hc.kind {
                        CheckKind::Tcp => format!(
                            "tcp check every {}",
                            ferrolb_config::duration::format_duration(hc.interval)
                        ),
                        CheckKind::Http { path, .. } => {
                            format!(
                                "http check {path} every {}",
                                ferrolb_config::duration::format_duration(hc.interval)
                            )
                        }
                    },
                };
                let target = match vip {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", port.port),
                    v4 => format!("{v4}:{}", port.port),
                };
                let _ = writeln!(
                    w,
                    "    {} {target} -> {} ({}, {check})",
                    port.protocol,
                    backends.join(", "),
                    port.algorithm
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_plan_is_stable() {
        let text = include_str!("../../examples/standalone.yaml");
        let config = Config::from_yaml(text).unwrap();
        let plan = plan(&config).unwrap();
        let vips: Vec<(String, String)> = plan
            .services
            .iter()
            .map(|p| (p.service.name.clone(), p.assignment.ips[0].to_string()))
            .collect();
        assert_eq!(
            vips,
            [
                ("web".to_string(), "127.0.10.1".to_string()),
                ("dns".to_string(), "127.0.10.0".to_string()),
                ("api".to_string(), "127.0.10.2".to_string()),
            ]
        );
    }

    #[test]
    fn explicit_shared_ip_with_distinct_ports_is_allowed() {
        let c = Config::from_yaml(
            "pools: [{name: p, addresses: [127.0.10.0/30]}]
services:
  - {name: a, ip: 127.0.10.1, ports: [{port: 80, backends: ['127.0.0.1:1']}]}
  - {name: b, ip: 127.0.10.1, ports: [{port: 81, backends: ['127.0.0.1:1']}]}
  - {name: c, ip: 127.0.10.1, ports: [{port: 80, backends: ['127.0.0.1:1']}]}",
        )
        .unwrap();
        let errs = plan(&c).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "services[2].ip");
        assert!(
            errs[0].message.contains("already exposes 80/TCP"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn exhausted_pool_and_v6_fallback() {
        let c = Config::from_yaml(
            "pools: [{name: one, addresses: [127.0.10.1]}, {name: six, addresses: ['fd00::/127'], autoAssign: false}]
services:
  - {name: a}
  - {name: b}
  - {name: c, pool: six}",
        )
        .unwrap();
        let errs = plan(&c).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "services[1]");
        assert!(errs[0]
            .message
            .contains("no free IPv4 address in pool(s) one"));
        let c = Config::from_yaml(
            "pools: [{name: six, addresses: ['fd00::/127'], autoAssign: false}]
services: [{name: c, pool: six}]",
        )
        .unwrap();
        assert_eq!(
            plan(&c).unwrap().services[0].assignment.ips[0].to_string(),
            "fd00::"
        );
    }
}
