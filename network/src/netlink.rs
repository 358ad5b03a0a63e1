//! Links, addresses and routes through rtnetlink. Each call runs on a
//! private current-thread runtime, so the crate's API stays blocking and the
//! agent calls it from its blocking pool; calls inside a pod's network
//! namespace run on a thread of their own that has joined it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::NetError;

fn nl(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let step = step.into();
    move |e| NetError::Netlink { step, reason: e.to_string() }
}

/// Runs `f` with a fresh netlink handle in the calling thread's network namespace.
pub fn with_handle<T>(f: impl AsyncFnOnce(Handle) -> Result<T, NetError>) -> Result<T, NetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetError::Netlink { step: "runtime".into(), reason: e.to_string() })?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::Netlink { step: "netlink socket".into(), reason: e.to_string() })?;
        let task = tokio::spawn(conn);
        let out = f(handle).await;
        task.abort();
        out
    })
}

/// Runs `f` in the network namespace pinned at `netns`, on a thread of its own.
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> Result<T, NetError> + Send + 'static) -> Result<T, NetError> {
    let fd = std::fs::File::open(netns).map_err(|e| NetError::Netns { path: netns.into(), reason: e.to_string() })?;
    let path = netns.to_path_buf();
    std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Netns { path: path.clone(), reason: e.to_string() })?;
            f()
        })
        .map_err(|e| NetError::Netns { path: netns.into(), reason: e.to_string() })?
        .join()
        .unwrap_or_else(|_| Err(NetError::Netns { path: netns.into(), reason: "thread panicked".into() }))
}

/// A link's index and kind, by name.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<(u32, Option<InfoKind>, Option<u32>)>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some((msg.header.index, kind_of(&msg), controller_of(&msg)))),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("get link {name}"))(e)),
    }
}

fn kind_of(msg: &LinkMessage) -> Option<InfoKind> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

fn controller_of(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Creates the bridge (or checks the existing link is one), gives it the
/// gateway address and brings it up. Returns its index.
pub async fn ensure_bridge(h: &Handle, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<u32, NetError> {
    let index = match link_by_name(h, name).await? {
        Some((idx, Some(InfoKind::Bridge), _)) => idx,
        Some((_, kind, _)) => {
            return Err(NetError::Config(format!("network.bridge: {name:?} exists and is not a bridge (it is {:?})", kind)));
        }
        None => {
            h.link().add(LinkBridge::new(name).build()).execute().await.map_err(nl(format!("create bridge {name}")))?;
            link_by_name(h, name).await?.map(|l| l.0).ok_or_else(|| NetError::Config(format!("bridge {name} vanished")))?
        }
    };
    add_address(h, index, gateway.into(), prefix, name).await?;
    h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(nl(format!("set {name} up")))?;
    Ok(index)
}

/// Adds `ip/prefix` to the link `index` (named `name` in errors); present
/// already is fine. IPv6 addresses skip duplicate address detection: the
/// subnet is berth's, and a tentative address would leave the link without
/// it for a second or two.
pub async fn add_address(h: &Handle, index: u32, ip: IpAddr, prefix: u8, name: &str) -> Result<(), NetError> {
    let mut req = h.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(nl(format!("address {ip}/{prefix} on {name}"))(e)),
    }
}

/// The host's addresses (global ones for IPv6) with their prefix and link name.
pub async fn host_addresses(h: &Handle) -> Result<Vec<(String, IpAddr, u8)>, NetError> {
    let mut names = std::collections::HashMap::new();
    let mut links = h.link().get().execute();
    while let Some(l) = links.try_next().await.map_err(nl("list links"))? {
        names.insert(l.header.index, name_of(&l).unwrap_or_default());
    }
    let mut out = Vec::new();
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(nl("list addresses"))? {
        for attr in &a.attributes {
            if let netlink_packet_route::address::AddressAttribute::Address(ip) = attr {
                let global = match ip {
                    IpAddr::V4(_) => true,
                    IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
                };
                if global {
                    out.push((names.get(&a.header.index).cloned().unwrap_or_default(), *ip, a.header.prefix_len));
                }
            }
        }
    }
    Ok(out)
}

/// Names of links attached to the bridge `bridge_index`.
pub async fn bridge_ports(h: &Handle, bridge_index: u32) -> Result<Vec<String>, NetError> {
    let mut out = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(l) = links.try_next().await.map_err(nl("list links"))? {
        if controller_of(&l) == Some(bridge_index) {
            if let Some(n) = name_of(&l) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Deletes a link by name; absent is fine.
pub async fn delete_link(h: &Handle, name: &str) -> Result<(), NetError> {
    if let Some((idx, _, _)) = link_by_name(h, name).await? {
        match h.link().del(idx).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(nl(format!("delete {name}"))(e)),
        }
    }
    Ok(())
}

/// Creates the veth pair: `host` on the bridge and up; the peer born
/// directly in the namespace of `netns` as `eth0` (no move, no rename). One
/// request: the kernel enslaves and brings up a link it creates when the
/// request names the controller and the up flag, as `ip link add … master
/// … up` asks it to. (The peer cannot be brought up in the same request:
/// the kernel configures it before the pair is joined, and a veth without
/// its peer refuses to open, ENOTCONN.) A `host` left by an earlier attempt
/// makes the request fail with EEXIST; it is deleted and the request made
/// again.
pub async fn create_veth(h: &Handle, host: &str, bridge_index: u32, netns: &std::fs::File) -> Result<(), NetError> {
    let request = || {
        let peer = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new().name("eth0".to_string()).setns_by_fd(netns.as_raw_fd()).build();
        let msg = LinkVeth::new(host, "eth0")
            .controller(bridge_index)
            .up()
            .set_info_data(netlink_packet_route::link::InfoData::Veth(netlink_packet_route::link::InfoVeth::Peer(peer)))
            .build();
        h.link().add(msg).execute()
    };
    match request().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
            delete_link(h, host).await?;
            request().await.map_err(nl(format!("create veth {host}")))
        }
        r => r.map_err(nl(format!("create veth {host}"))),
    }
}

/// The loopback device's index in every network namespace: the kernel
/// registers `lo` first and checks that it got this index
/// (`loopback_net_init`).
const LOOPBACK_INDEX: u32 = 1;

/// Inside the pod: gives `eth0` `ip/prefix` (and the IPv6 address of a
/// dual-stack network), brings it and `lo` up, and routes by default via
/// `gateway` (and the IPv6 gateway).
pub async fn configure_pod_side(
    h: &Handle,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    v6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
) -> Result<(), NetError> {
    let (idx, _, _) = link_by_name(h, "eth0").await?.ok_or_else(|| NetError::Config("eth0 not in the pod".into()))?;
    h.address().add(idx, ip.into(), prefix).execute().await.map_err(nl(format!("address {ip}/{prefix}")))?;
    if let Some((ip6, prefix6, _)) = v6 {
        add_address(h, idx, ip6.into(), prefix6, "eth0").await?;
    }
    h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute().await.map_err(nl("eth0 up"))?;
    h.link().set(LinkUnspec::new_with_index(LOOPBACK_INDEX).up().build()).execute().await.map_err(nl("lo up"))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(idx).build();
    h.route().add(route).execute().await.map_err(nl(format!("default route via {gateway}")))?;
    if let Some((_, _, gateway6)) = v6 {
        let route = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gateway6).output_interface(idx).build();
        h.route().add(route).execute().await.map_err(nl(format!("default route via {gateway6}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkFlags;

    /// The test's bridge and veth, deleted also when the test fails.
    struct Links(Vec<String>);

    impl Drop for Links {
        fn drop(&mut self) {
            for name in self.0.drain(..) {
                let _ = with_handle(async move |h| delete_link(&h, &name).await);
            }
        }
    }

    /// The link's controller and whether it is up.
    async fn state(h: &Handle, name: &str) -> Option<(Option<u32>, bool)> {
        let msg = h.link().get().match_name(name.to_string()).execute().try_next().await.ok()??;
        Some((controller_of(&msg), msg.header.flags.contains(LinkFlags::Up)))
    }

    #[test]
    fn a_veth_is_made_on_the_bridge_and_up_also_over_one_left_behind() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let id = std::process::id() % 100_000;
        let (bridge, host) = (format!("btv{id}"), format!("bvt{id}"));
        let _links = Links(vec![host.clone(), bridge.clone()]);
        // A network namespace of the test's own, alive as long as its fd.
        let netns = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare net");
            std::fs::File::open("/proc/thread-self/ns/net").expect("open the netns")
        })
        .join()
        .expect("netns thread");
        let netns_path = format!("/proc/self/fd/{}", netns.as_raw_fd());
        let b = bridge.clone();
        let bridge_index = with_handle(async move |h| {
            h.link().add(LinkBridge::new(&b).build()).execute().await.map_err(nl("add bridge"))?;
            Ok(link_by_name(&h, &b).await?.map(|(i, _, _)| i))
        })
        .expect("bridge")
        .expect("bridge index");
        let (hv, ns) = (host.clone(), &netns);
        let (first, again) = with_handle(async move |h| {
            create_veth(&h, &hv, bridge_index, ns).await?;
            let first = state(&h, &hv).await;
            // As after a setup that stopped half way: the veth is there.
            create_veth(&h, &hv, bridge_index, ns).await?;
            Ok((first, state(&h, &hv).await))
        })
        .expect("create_veth twice");
        assert_eq!(first, Some((Some(bridge_index), true)), "{host}: on {bridge} and up");
        assert_eq!(again, Some((Some(bridge_index), true)), "{host} made again: on {bridge} and up");
        let eth0 = in_netns(Path::new(&netns_path), || with_handle(async move |h| link_by_name(&h, "eth0").await)).expect("in the netns");
        assert!(eth0.is_some(), "the peer is eth0 in the pod's namespace");
    }
}
