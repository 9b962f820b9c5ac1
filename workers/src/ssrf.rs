//! The SSRF guard: outbound calls from executors may not reach loopback, private,
//! link-local (cloud metadata included), unspecified, multicast or other special addresses,
//! IPv4 or IPv6 (mapped addresses included), unless an allow-list says so. Host names are
//! resolved here and the call pinned to the checked address, so DNS cannot answer twice.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    /// The URL has no host or a scheme other than http(s).
    #[error("only http and https URLs with a host are allowed")]
    BadUrl,
    /// The host did not resolve.
    #[error("the host does not resolve")]
    Unresolved,
    /// The host resolves to a forbidden address.
    #[error("destination {0} is not allowed")]
    Forbidden(IpAddr),
}

/// Checks destinations against the forbidden ranges and the allow-list.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<IpNet>,
}

impl Guard {
    /// A guard that also allows `allow` (CIDRs from `RUNLEDGER_HTTP_ALLOW`).
    pub fn new(allow: &[String]) -> Self {
        Self {
            allow: allow.iter().filter_map(|c| c.parse().ok()).collect(),
        }
    }

    /// Whether `ip` may be reached.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip)) || !forbidden(ip)
    }

    /// Resolves `host` and checks every address; returns one to connect to.
    ///
    /// # Errors
    /// [`SsrfError`].
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, SsrfError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| SsrfError::Unresolved)?
                .collect(),
        };
        // Every answer must pass: a name that resolves to one public and one private address
        // is refused rather than raced.
        if let Some(bad) = addrs.iter().find(|a| !self.permits(a.ip())) {
            return Err(SsrfError::Forbidden(bad.ip()));
        }
        addrs.first().copied().ok_or(SsrfError::Unresolved)
    }
}

/// Addresses no outbound call may reach by default.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            forbidden_v6(v6)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, cloud metadata included
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xC0) == 64) // 100.64/10, carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24
        || (o[0] == 198 && (o[1] & 0xFE) == 18) // 198.18/15
        || o[0] >= 240
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xFE00) == 0xFC00 // fc00::/7 unique local
        || (s[0] & 0xFFC0) == 0xFE80 // fe80::/10 link local
        || (s[0] & 0xFFC0) == 0xFEC0 // fec0::/10 site local
        || (s[0] == 0x64 && s[1] == 0xFF9B) // 64:ff9b::/96 and 64:ff9b:1::/48, NAT64 onto IPv4
        || (s[0] == 0x2001 && s[1] == 0x0DB8) // documentation
        || ip.to_ipv4().is_some_and(|v4| forbidden_v4(v4) && s[5] == 0) // ::a.b.c.d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_forbidden_class_is_refused() {
        for s in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ffff::1",
            "ff02::1",
        ] {
            assert!(forbidden(ip(s)), "{s} should be refused");
        }
        for s in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!forbidden(ip(s)), "{s} should be allowed");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_ranges() {
        let g = Guard::new(&["127.0.0.1/32".into()]);
        assert!(g.permits(ip("127.0.0.1")));
        assert!(!g.permits(ip("127.0.0.2")));
        assert!(!g.permits(ip("10.0.0.1")));
    }

    #[tokio::test]
    async fn names_are_resolved_before_they_are_judged() {
        let g = Guard::default();
        assert!(
            matches!(g.resolve("localhost", 80).await, Err(SsrfError::Forbidden(a)) if a.is_loopback())
        );
        assert!(matches!(
            g.resolve("[::1]", 80).await,
            Err(SsrfError::Forbidden(_))
        ));
        assert!(matches!(
            g.resolve("169.254.169.254", 80).await,
            Err(SsrfError::Forbidden(_))
        ));
    }
}
