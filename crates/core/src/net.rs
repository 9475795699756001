//! Who a client is: network ranges, the trusted proxies whose forwarding headers are believed,
//! and the group of addresses that counts as one client (a /24 for IPv4, a /48 for IPv6, as
//! Arch's pkgstats groups them), so that one host cannot pass for many by changing the last
//! bits of its address.
//!
//! Addresses are used in memory only, for rate limits and connection caps: never stored, never
//! logged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network range, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network's address, host bits cleared.
    net: IpAddr,
    /// The prefix length.
    bits: u8,
}

impl Cidr {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask4(ip, self.bits) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask6(ip, self.bits) == net,
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or range (e.g. 10.0.0.0/8)"))?;
        let ip = canonical(ip);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let net = match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask4(v4, bits)),
            IpAddr::V6(v6) => IpAddr::V6(mask6(v6, bits)),
        };
        Ok(Cidr { net, bits })
    }
}

fn mask4(ip: Ipv4Addr, bits: u8) -> Ipv4Addr {
    let m = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(bits))
    };
    Ipv4Addr::from(u32::from(ip) & m)
}

fn mask6(ip: Ipv6Addr, bits: u8) -> Ipv6Addr {
    let m = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(bits))
    };
    Ipv6Addr::from(u128::from(ip) & m)
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The group of addresses that counts as one client: its /24 (IPv4) or /48 (IPv6).
pub fn client_group(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => IpAddr::V4(mask4(v4, 24)),
        IpAddr::V6(v6) => IpAddr::V6(mask6(v6, 48)),
    }
}

/// Whether `ip` is one of the trusted proxies.
pub fn trusted(proxies: &[Cidr], ip: IpAddr) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// Which header the trusted proxies write. Only that one is read: a client can send the other
/// through a proxy that passes it on untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, AWS and GCP load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy, in which case the
/// forwarding header is read from the nearest hop outwards, skipping trusted proxies, and the
/// first address that is not one is the client. A header that cannot be read leaves the proxy
/// as the client.
pub fn client_address(
    peer: IpAddr,
    proxies: &[Cidr],
    header: ForwardedHeader,
    headers: &axum::http::HeaderMap,
) -> IpAddr {
    if !trusted(proxies, peer) {
        return canonical(peer);
    }
    let hops = forwarded_hops(header, headers);
    let mut client = canonical(peer);
    for hop in hops.into_iter().rev() {
        client = hop;
        if !trusted(proxies, hop) {
            break;
        }
    }
    client
}

/// The addresses in the header (`for=` of `Forwarded`), client first. Unreadable entries
/// (`unknown`, obfuscated names) end the list there: nothing before them is believed.
fn forwarded_hops(header: ForwardedHeader, headers: &axum::http::HeaderMap) -> Vec<IpAddr> {
    let joined = |name: &str| -> Option<String> {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    let raw: Vec<String> = if header == ForwardedHeader::Forwarded {
        let Some(f) = joined("forwarded") else {
            return Vec::new();
        };
        f.split(',')
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| v.trim().trim_matches('"').to_string())
                })
            })
            .collect()
    } else {
        let Some(x) = joined("x-forwarded-for") else {
            return Vec::new();
        };
        x.split(',').map(|s| s.trim().to_string()).collect()
    };
    // Believed from the nearest hop outwards: keep the suffix of readable addresses.
    let mut hops = Vec::new();
    for item in raw.iter().rev() {
        match parse_hop(item) {
            Some(ip) => hops.push(canonical(ip)),
            None => break,
        }
    }
    hops.reverse();
    hops
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]`, `[2001:db8::1]:80` or `2001:db8::1`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?
        .0
        .parse::<Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn ranges_parse_and_match() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.200.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        for bad in ["", "10.0.0.0/33", "nope/8", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
    }

    #[test]
    fn clients_are_grouped_by_24_and_48() {
        assert_eq!(client_group(ip("192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(client_group(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(client_group(ip("2001:db8:aa:bb::1")), ip("2001:db8:aa::"));
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_peers() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let (xff, fwd) = (ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded);
        let at = |peer: &str, header, h: &axum::http::HeaderMap| {
            client_address(ip(peer), &proxies, header, h)
        };
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 10.0.0.7")]);
        // From a stranger: the header is ignored.
        assert_eq!(at("198.51.100.1", xff, &h), ip("198.51.100.1"));
        // From a trusted proxy: the nearest untrusted hop.
        assert_eq!(at("10.0.0.2", xff, &h), ip("203.0.113.9"));
        // A forged leftmost entry does not move the client past an untrusted hop.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(at("10.0.0.2", xff, &h), ip("203.0.113.9"));
        // RFC 7239, with ports and IPv6, read only when it is the proxies' header: a client's
        // own Forwarded passed on by an X-Forwarded-For proxy is not believed.
        let h = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.9",
            ),
            ("x-forwarded-for", "5.5.5.5"),
        ]);
        assert_eq!(at("10.0.0.2", fwd, &h), ip("2001:db8::1"));
        assert_eq!(at("10.0.0.2", xff, &h), ip("5.5.5.5"));
        let h = headers(&[("forwarded", "for=unknown, for=192.0.2.4:80")]);
        assert_eq!(at("10.0.0.2", fwd, &h), ip("192.0.2.4"));
        // No header: the proxy itself.
        assert_eq!(
            at("10.0.0.2", xff, &axum::http::HeaderMap::new()),
            ip("10.0.0.2")
        );
    }
}
