//! Address allocation in the pod subnet. The leases themselves live in the
//! agent's store; this is the pure choice of the next free address.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// The `n`th address of the subnet (0 is the network address).
pub fn nth(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(n))
}

/// The first free host address after `after` (round robin, so a released
/// address is not handed out again at once), skipping the network, gateway
/// and broadcast addresses. None when the subnet is full.
pub fn allocate(subnet: Ipv4Net, gateway: Ipv4Addr, used: &HashSet<Ipv4Addr>, after: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()) - 1;
    if last < first {
        return None;
    }
    let span = last - first + 1;
    let start = match after {
        Some(a) if subnet.contains(&a) && u32::from(a) >= first && u32::from(a) <= last => u32::from(a) - first + 1,
        _ => 0,
    };
    (0..span).map(|i| Ipv4Addr::from(first + (start + i) % span)).find(|ip| *ip != gateway && !used.contains(ip))
}

/// The `n`th address of an IPv6 subnet (0 is the subnet-router anycast address).
pub fn nth6(subnet: Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(n))
}

/// How many addresses [`allocate6`] looks at before it calls the subnet
/// full: a /64 is never scanned end to end; pods are far fewer than this.
const SCAN6: u128 = 1 << 20;

/// As [`allocate`] for IPv6: the first free address after `after`, from
/// the subnet's second address on (the first is its anycast address, the
/// gateway usually the one after), round robin over the subnet.
pub fn allocate6(subnet: Ipv6Net, gateway: Ipv6Addr, used: &HashSet<Ipv6Addr>, after: Option<Ipv6Addr>) -> Option<Ipv6Addr> {
    let first = u128::from(subnet.network()) + 1;
    let last = u128::from(subnet.broadcast());
    if last < first {
        return None;
    }
    let span = last - first + 1;
    let start = match after {
        Some(a) if subnet.contains(&a) && u128::from(a) >= first => u128::from(a) - first + 1,
        _ => 0,
    };
    (0..span.min(SCAN6)).map(|i| Ipv6Addr::from(first + (start + i) % span)).find(|ip| *ip != gateway && !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_round_robin_and_reports_exhaustion() {
        let net: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let gw = nth(net, 1);
        let mut used = HashSet::new();
        let mut last = None;
        let mut got = Vec::new();
        while let Some(ip) = allocate(net, gw, &used, last) {
            used.insert(ip);
            got.push(ip);
            last = Some(ip);
        }
        assert_eq!(got, (2..=6).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect::<Vec<_>>());
        used.remove(&Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(allocate(net, gw, &used, last), Some(Ipv4Addr::new(10, 0, 0, 3)));
        used.remove(&Ipv4Addr::new(10, 0, 0, 5));
        // After .3 the next free one is .5, not .3 again.
        used.remove(&Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(allocate(net, gw, &used, Some(Ipv4Addr::new(10, 0, 0, 3))), Some(Ipv4Addr::new(10, 0, 0, 5)));
    }

    #[test]
    fn allocates_ipv6_after_the_gateway_and_wraps() {
        let net: Ipv6Net = "fd00:1::/125".parse().unwrap();
        let gw = nth6(net, 1);
        let mut used = HashSet::new();
        let mut last = None;
        let mut got = Vec::new();
        while let Some(ip) = allocate6(net, gw, &used, last) {
            used.insert(ip);
            got.push(ip.to_string());
            last = Some(ip);
        }
        assert_eq!(got, ["fd00:1::2", "fd00:1::3", "fd00:1::4", "fd00:1::5", "fd00:1::6", "fd00:1::7"]);
        used.remove(&"fd00:1::3".parse().unwrap());
        assert_eq!(allocate6(net, gw, &used, last).map(|a| a.to_string()).as_deref(), Some("fd00:1::3"));
        let big: Ipv6Net = "fd00:2::/64".parse().unwrap();
        assert_eq!(allocate6(big, nth6(big, 1), &HashSet::new(), None).map(|a| a.to_string()).as_deref(), Some("fd00:2::2"));
    }
}
