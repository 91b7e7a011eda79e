//! Choosing the local address to listen on: `OXCCL_SOCKET_IFNAME` (NCCL's syntax), else the
//! address this host uses to reach the rendezvous store, else loopback.

use std::net::{IpAddr, Ipv4Addr};

use crate::error::{Error, Result};

/// Interface selection in `NCCL_SOCKET_IFNAME` syntax: a comma-separated list of name
/// prefixes (`eth,ib`), exact names with a leading `=` (`=eth0`), or exclusions with a
/// leading `^` (`^docker,lo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceFilter {
    exclude: bool,
    exact: bool,
    names: Vec<String>,
}

impl IfaceFilter {
    /// Parses the syntax above.
    pub fn parse(spec: &str) -> IfaceFilter {
        let mut s = spec.trim();
        let exclude = s.starts_with('^');
        if exclude {
            s = &s[1..];
        }
        let exact = s.starts_with('=');
        if exact {
            s = &s[1..];
        }
        IfaceFilter {
            exclude,
            exact,
            names: s.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect(),
        }
    }

    /// Whether interface `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        let hit = self.names.iter().any(|n| if self.exact { name == n } else { name.starts_with(n.as_str()) });
        hit != self.exclude
    }
}

/// The IPv4 addresses of interfaces that `filter` selects, in interface order.
pub fn addresses(filter: &IfaceFilter) -> Result<Vec<(String, IpAddr)>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| Error::io("listing network interfaces", e.into()))?;
    let mut out = Vec::new();
    for a in addrs {
        if !filter.matches(&a.interface_name) {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            out.push((a.interface_name.clone(), IpAddr::V4(sin.ip())));
        }
    }
    Ok(out)
}

/// The address to listen on: the first of `OXCCL_SOCKET_IFNAME`'s interfaces when it is set
/// (or `ifname` when given), else `fallback`, else loopback.
pub fn bind_address(ifname: Option<&str>, fallback: Option<IpAddr>) -> Result<IpAddr> {
    if let Some(spec) = ifname {
        let filter = IfaceFilter::parse(spec);
        let found = addresses(&filter)?;
        return found.first().map(|(_, ip)| *ip).ok_or_else(|| {
            Error::invalid_argument(format!("OXCCL_SOCKET_IFNAME='{spec}' selects no interface with an IPv4 address"))
        });
    }
    Ok(fallback.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)))
}

/// [`bind_address`] with `OXCCL_SOCKET_IFNAME` read from the environment.
pub fn bind_address_from_env(fallback: Option<IpAddr>) -> Result<IpAddr> {
    let spec = std::env::var("OXCCL_SOCKET_IFNAME").ok().filter(|s| !s.trim().is_empty());
    bind_address(spec.as_deref(), fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_ifname_syntax() {
        let f = IfaceFilter::parse("eth,ib");
        assert!(f.matches("eth0") && f.matches("ib1") && !f.matches("lo"));
        let f = IfaceFilter::parse("^lo,docker");
        assert!(!f.matches("lo") && !f.matches("docker0") && f.matches("eth0"));
        let f = IfaceFilter::parse("=eth0");
        assert!(f.matches("eth0") && !f.matches("eth01"));
    }

    #[test]
    fn loopback_is_found_and_missing_interface_is_an_error() {
        assert_eq!(bind_address(Some("lo"), None).unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let e = bind_address(Some("=no-such-if0"), None).unwrap_err();
        assert!(e.to_string().contains("no-such-if0"));
        assert_eq!(bind_address(None, None).unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
