//! Who a request without a valid credential is limited as: its client address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the
/// nearest untrusted address of `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    pub(super) fn of(proxies: &TrustedProxies, request: &Request) -> Self {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
        Self(proxies.client(peer, request.headers()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(client) = parts.extensions.get::<Self>() {
            return Ok(*client);
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
        Ok(Self(peer))
    }
}

/// `TRUSTED_PROXIES`: addresses and CIDR ranges.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    pub fn from_setting(setting: &str) -> anyhow::Result<Self> {
        let mut ranges = Vec::new();
        for entry in setting.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (addr, bits) = entry.split_once('/').unwrap_or((entry, ""));
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| anyhow::anyhow!("TRUSTED_PROXIES: {entry:?} is not an address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = if bits.is_empty() {
                max
            } else {
                bits.parse()
                    .ok()
                    .filter(|bits| *bits <= max)
                    .ok_or_else(|| anyhow::anyhow!("TRUSTED_PROXIES: bad prefix in {entry:?}"))?
            };
            ranges.push((addr, bits));
        }
        Ok(Self { ranges })
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.ranges.iter().any(|(net, bits)| match (net, addr) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(addr) & mask
            }
            _ => false,
        })
    }

    /// Walks `X-Forwarded-For` from the right while the hops are trusted proxies.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Ok(addr) = hop.parse::<IpAddr>() else {
                break;
            };
            client = addr;
            if !self.trusts(addr) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() -> anyhow::Result<()> {
        let proxies = TrustedProxies::from_setting("10.0.0.0/8, ::1")?;
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.1.1.1"),
        );
        let proxy: IpAddr = "10.0.0.5".parse()?;
        let stranger: IpAddr = "5.5.5.5".parse()?;
        assert_eq!(
            proxies.client(proxy, &headers),
            "1.2.3.4".parse::<IpAddr>()?
        );
        assert_eq!(proxies.client(stranger, &headers), stranger);
        assert_eq!(
            proxies.client("::ffff:10.0.0.7".parse()?, &HeaderMap::new()),
            "::ffff:10.0.0.7".parse::<IpAddr>()?
        );
        assert!(TrustedProxies::from_setting("10.0.0.0/33").is_err());
        assert!(TrustedProxies::from_setting("nonsense").is_err());
        Ok(())
    }
}
