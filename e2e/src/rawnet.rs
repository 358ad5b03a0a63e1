//! Hand-made packets for attack tests: an Ethernet frame with a TCP SYN,
//! sent and watched for with an `AF_PACKET` socket in the calling thread's
//! network namespace (a pod's, entered with [`crate::in_netns`]). What a
//! container with `NET_RAW` can do.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The MAC address of `ifname` in the calling thread's network namespace.
pub fn mac_of(ifname: &str) -> [u8; 6] {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in ifname.bytes().enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    // SAFETY: a valid socket and a properly sized ifreq.
    let r = unsafe { libc::ioctl(sock, libc::SIOCGIFHWADDR, &mut req) };
    assert!(r == 0, "SIOCGIFHWADDR {ifname}: {}", std::io::Error::last_os_error());
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    close(sock);
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = data[i] as u8;
    }
    mac
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, part) in s.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).expect("MAC");
    }
    mac
}

fn socket(domain: i32, kind: i32, proto: i32) -> i32 {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

fn close(fd: i32) {
    // SAFETY: closing an fd this module opened.
    unsafe { libc::close(fd) };
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying a TCP SYN from `src:sport` to `dst:dport`.
pub fn syn_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

/// Sends `frame` out of `ifname` and watches that interface for `wait`;
/// returns the TCP flags of every segment from `from:sport` that arrived.
pub fn send_and_watch(ifname: &str, frame: &[u8], from: Ipv4Addr, sport: u16, wait: Duration) -> Vec<u8> {
    let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
    let name = std::ffi::CString::new(ifname).expect("ifname");
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no interface {ifname}");
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = index as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: addr is a valid sockaddr_ll of `len` bytes.
    let r = unsafe { libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) };
    assert!(r == 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: SO_RCVTIMEO with a timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    // SAFETY: frame is a live buffer of its length; addr as above.
    let sent = unsafe { libc::sendto(fd, frame.as_ptr().cast(), frame.len(), 0, &addr as *const _ as *const libc::sockaddr, len) };
    assert!(sent == frame.len() as isize, "sendto: {}", std::io::Error::last_os_error());
    let mut seen = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: buf is a live buffer of its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 54 {
            continue;
        }
        let p = &buf[..n as usize];
        let is_tcp4 = p[12..14] == [0x08, 0x00] && p[23] == 6;
        let ihl = usize::from(p[14] & 0x0f) * 4;
        if is_tcp4 && p[26..30] == from.octets() && p.len() >= 14 + ihl + 14 && u16::from_be_bytes([p[14 + ihl], p[15 + ihl]]) == sport {
            seen.push(p[14 + ihl + 13]);
        }
    }
    close(fd);
    seen
}
