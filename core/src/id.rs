//! Node identity: a node *is* its canonical listen address.
//!
//! Host names are resolved once, by the controller, when a host is invited; from then on only
//! `NodeId`s are compared, so two names for one host can never make two identities.

use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A node's identity: the `ip:port` it listens on, as announced in its `Hello`.
///
/// The order (IPv4 before IPv6, then address, then port) is the one RandTree uses wherever it
/// says "the lowest node": the new root after a root failure, the surviving root of a merge.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub SocketAddr);

impl NodeId {
    /// A node id from an address.
    pub const fn new(addr: SocketAddr) -> Self {
        NodeId(addr)
    }

    /// The id the simulator and local clusters give their `index`-th node:
    /// `127.x.y.z:port` with `x.y.z` the index + 1 in base 256 (so up to 16,777,214 nodes).
    pub fn loopback(index: u32, port: u16) -> Self {
        let n = index.wrapping_add(1) & 0x00ff_ffff;
        let ip = Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8);
        NodeId(SocketAddr::new(IpAddr::V4(ip), port))
    }

    /// The inverse of [`NodeId::loopback`]; `None` for any other address.
    pub fn loopback_index(&self) -> Option<u32> {
        match self.0.ip() {
            IpAddr::V4(ip) => {
                let o = ip.octets();
                if o[0] != 127 {
                    return None;
                }
                let n = (u32::from(o[1]) << 16) | (u32::from(o[2]) << 8) | u32::from(o[3]);
                n.checked_sub(1)
            }
            IpAddr::V6(_) => None,
        }
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for NodeId {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(NodeId)
    }
}

impl From<SocketAddr> for NodeId {
    fn from(a: SocketAddr) -> Self {
        NodeId(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_round_trips_and_orders_by_index() {
        for i in [0u32, 1, 254, 255, 256, 65_535, 1_000_000] {
            let id = NodeId::loopback(i, 7000);
            assert_eq!(id.loopback_index(), Some(i), "{id}");
        }
        assert!(NodeId::loopback(3, 1) < NodeId::loopback(300, 1));
        assert_eq!(NodeId::loopback(0, 7000).to_string(), "127.0.0.1:7000");
        assert_eq!("127.0.0.1:7000".parse::<NodeId>().ok(), Some(NodeId::loopback(0, 7000)));
    }
}
