//! Address allocation in the pod subnet. The leases themselves live in the
//! agent's store; this is the pure choice of the next free address.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

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
}
