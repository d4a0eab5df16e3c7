//! Node identity: a node *is* its canonical listen address.
//!
//! Host names are resolved once, by the controller, when a host is invited; from then on only
//! `NodeId`s are compared, so two names for one host can never make two identities.

use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A node's identity: the `ip:port` it listens on, as announced in its `Hello`.
///
/// Stored compactly (18 bytes: the IPv6 form of the address, IPv4 as `::ffff:a.b.c.d`, and the
/// port, both big-endian) so that comparing two ids is one short `memcmp`. The order, by address
/// then port, is the one RandTree uses wherever it says "the lowest node": the new root after a
/// root failure, the surviving root of a merge. IPv4 addresses order among themselves as
/// numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId {
    ip: [u8; 16],
    port: [u8; 2],
}

impl Ord for NodeId {
    /// Address, then port: the same order as comparing the bytes, in two integer comparisons.
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        u128::from_be_bytes(self.ip)
            .cmp(&u128::from_be_bytes(other.ip))
            .then_with(|| u16::from_be_bytes(self.port).cmp(&u16::from_be_bytes(other.port)))
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl NodeId {
    /// A node id from an address.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        NodeId { ip, port: addr.port().to_be_bytes() }
    }

    /// The id the simulator and local clusters give their `index`-th node:
    /// `127.x.y.z:port` with `x.y.z` the index + 1 in base 256 (so up to 16,777,214 nodes).
    pub fn loopback(index: u32, port: u16) -> Self {
        let n = index.wrapping_add(1) & 0x00ff_ffff;
        let ip = Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8);
        NodeId::new(SocketAddr::new(IpAddr::V4(ip), port))
    }

    /// The inverse of [`NodeId::loopback`]; `None` for any other address.
    pub fn loopback_index(&self) -> Option<u32> {
        let o = &self.ip;
        if o[..10] != [0; 10] || o[10] != 0xff || o[11] != 0xff || o[12] != 127 {
            return None;
        }
        let n = (u32::from(o[13]) << 16) | (u32::from(o[14]) << 8) | u32::from(o[15]);
        n.checked_sub(1)
    }

    /// The id `k` addresses after this one, same port; `None` past the end of the address space.
    /// Runs of consecutive ids are what [`crate::NodeSet`] stores compactly.
    pub fn offset(&self, k: u32) -> Option<NodeId> {
        let ip = u128::from_be_bytes(self.ip).checked_add(u128::from(k))?;
        Some(NodeId { ip: ip.to_be_bytes(), port: self.port })
    }

    /// How many addresses `later` lies after `self`, when both share a port and `later` is not
    /// before `self`.
    pub fn distance(&self, later: &NodeId) -> Option<u128> {
        if self.port != later.port {
            return None;
        }
        u128::from_be_bytes(later.ip).checked_sub(u128::from_be_bytes(self.ip))
    }

    /// (port, address as a 128-bit number): the order [`crate::NodeSet`] keeps its runs in.
    pub(crate) fn run_key(&self) -> (u16, u128) {
        (u16::from_be_bytes(self.port), u128::from_be_bytes(self.ip))
    }

    /// The inverse of [`NodeId::run_key`].
    pub(crate) fn from_run_key(port: u16, ip: u128) -> NodeId {
        NodeId { ip: ip.to_be_bytes(), port: port.to_be_bytes() }
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, u16::from_be_bytes(self.port))
    }
}

impl Serialize for NodeId {
    /// The same bytes as the `SocketAddr` it stands for, written without building one.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let port = u16::from_be_bytes(self.port);
        if s.is_human_readable() {
            return self.addr().serialize(s);
        }
        match self.ip {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] => {
                s.serialize_newtype_variant("SocketAddr", 0, "V4", &([a, b, c, d], port))
            }
            ip => s.serialize_newtype_variant("SocketAddr", 1, "V6", &(ip, port)),
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    /// Reads the bytes of a `SocketAddr` straight into the compact form.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return SocketAddr::deserialize(d).map(NodeId::new);
        }
        /// `SocketAddr`'s compact form: variant, address bytes, port.
        #[derive(Deserialize)]
        enum Wire {
            V4(([u8; 4], u16)),
            V6(([u8; 16], u16)),
        }
        Ok(match Wire::deserialize(d)? {
            Wire::V4((a, port)) => NodeId::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)),
            Wire::V6((ip, port)) => NodeId { ip, port: port.to_be_bytes() },
        })
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr())
    }
}

impl FromStr for NodeId {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(NodeId::new)
    }
}

impl From<SocketAddr> for NodeId {
    fn from(a: SocketAddr) -> Self {
        NodeId::new(a)
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
        assert!(NodeId::loopback(3, 1) < NodeId::loopback(3, 2));
        assert_eq!(NodeId::loopback(0, 7000).to_string(), "127.0.0.1:7000");
        assert_eq!("127.0.0.1:7000".parse::<NodeId>().ok(), Some(NodeId::loopback(0, 7000)));
    }

    #[test]
    fn ipv6_addresses_round_trip() {
        let a: SocketAddr = "[2001:db8::7]:9000".parse().unwrap();
        let id = NodeId::new(a);
        assert_eq!(id.addr(), a);
        assert_eq!(id.loopback_index(), None);
        assert_eq!(id.to_string(), "[2001:db8::7]:9000");
    }

    #[test]
    fn wire_form_is_a_socket_address() {
        for id in [NodeId::loopback(41, 7000), NodeId::new("[2001:db8::7]:9000".parse().unwrap())] {
            let bytes = postcard::to_allocvec(&id).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&id.addr()).unwrap(), "{id}");
            assert_eq!(postcard::from_bytes::<SocketAddr>(&bytes).unwrap(), id.addr());
            assert_eq!(postcard::from_bytes::<NodeId>(&bytes).unwrap(), id);
        }
    }
}
