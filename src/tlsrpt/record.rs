//! The `_smtp._tls.<domain>` TXT record (RFC 8460 §3): where a domain wants its reports.
//!
//! Pure functions over the record's text; the lookup is [`crate::resolve::MxResolver::txt`].

use crate::address::Mailbox;

/// The version tag every record starts with.
pub const VERSION: &str = "v=TLSRPTv1";

/// A parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The `rua` destinations, in the record's order (at least one).
    pub rua: Vec<Rua>,
}

/// One report destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:`: the address (percent-decoded, without `?` parameters).
    Mailto(String),
    /// `https:`: the URL as published, to POST the report to (§5.4).
    Https(String),
}

/// The host, explicit port and path of an `https:` rua, checked by [`parse_record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsTarget {
    /// Host name (lowercased).
    pub host: String,
    /// Port given in the URL, if any.
    pub port: Option<u16>,
    /// Path and query, `/` when empty.
    pub path: String,
}

/// Split an `https://host[:port][/path]` URL; the scheme is case-insensitive. Only host names
/// (no address literals, no user info) are accepted: the certificate is checked for the name.
pub fn https_target(url: &str) -> Result<HttpsTarget, String> {
    let bad = |why: &str| format!("bad https URI {url:?}: {why}");
    let rest = url.get(..8).filter(|s| s.eq_ignore_ascii_case("https://")).map(|_| &url[8..]).ok_or_else(|| bad("not https://"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad("user info is not allowed"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| bad("bad port"))?)),
        None => (authority, None),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad("the host must be a DNS name"));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("the path has spaces or non-ASCII characters"));
    }
    let path = if path.is_empty() || path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    Ok(HttpsTarget { host, port, path })
}

/// Parse one record's text (§3): `v=TLSRPTv1` first, then `;`-separated fields; `rua` (a
/// comma-separated list of `mailto:` and `https:` URIs) is required; other fields are
/// ignored. A URI that is neither, or is malformed, makes the record invalid.
pub fn parse_record(txt: &str) -> Result<Record, String> {
    let mut fields: Vec<&str> = txt.split(';').map(|f| f.trim_matches([' ', '\t'])).collect();
    if fields.first() != Some(&VERSION) {
        return Err(format!("a TLS-RPT record starts with {VERSION:?}: {txt:.100?}"));
    }
    // A trailing ';' is allowed (`[field-delim]`); an empty field elsewhere is not.
    if fields.len() > 1 && fields.last() == Some(&"") {
        fields.pop();
    }
    let mut rua = None;
    for field in &fields[1..] {
        if field.is_empty() {
            return Err(format!("empty field in {txt:.100?}"));
        }
        let (name, value) = field.split_once('=').ok_or_else(|| format!("field {field:.40?} has no '='"))?;
        if name != "rua" {
            let ext_ok = name.len() <= 32
                && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ext_ok {
                return Err(format!("bad field name {name:.40?}"));
            }
            continue;
        }
        if rua.is_some() {
            return Err("more than one rua field".into());
        }
        let list = value.split(',').map(|u| parse_uri(u.trim_matches([' ', '\t']))).collect::<Result<Vec<_>, _>>()?;
        rua = Some(list);
    }
    match rua {
        Some(rua) => Ok(Record { rua }),
        None => Err("no rua field".into()),
    }
}

/// Of a name's TXT strings, the TLS-RPT record (§3: those starting with `v=TLSRPTv1`): `Ok(None)`
/// when there is none or more than one (the domain then does not take reports), an error when
/// the one record is invalid.
pub fn select_record(txts: &[String]) -> Result<Option<Record>, String> {
    let mut candidates = txts.iter().filter(|t| t.split(';').next().map(|v| v.trim_matches([' ', '\t'])) == Some(VERSION));
    match (candidates.next(), candidates.next()) {
        (Some(one), None) => parse_record(one).map(Some),
        _ => Ok(None),
    }
}

fn parse_uri(u: &str) -> Result<Rua, String> {
    let scheme = u.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("mailto") => {
            let addr = &u["mailto:".len()..];
            let addr = addr.split('?').next().unwrap_or_default();
            let addr = percent_decode(addr).ok_or_else(|| format!("bad mailto URI {u:?}: bad %-escape"))?;
            let mbox = Mailbox::parse(&addr).map_err(|e| format!("bad mailto URI {u:?}: {e}"))?;
            Ok(Rua::Mailto(mbox.to_string()))
        }
        Some("https") => https_target(u).map(|_| Rua::Https(u.to_string())),
        _ => Err(format!("rua URI {u:.100?} is neither mailto: nor https:")),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_targets() {
        let t = https_target("HTTPS://Reports.Example.com:8443/v1/tlsrpt?x=1").unwrap();
        assert_eq!(t, HttpsTarget { host: "reports.example.com".into(), port: Some(8443), path: "/v1/tlsrpt?x=1".into() });
        assert_eq!(https_target("https://r.example").unwrap().path, "/");
        for bad in ["http://r.example/", "https://", "https://1.2.3.4/", "https://u@r.example/", "https://r.example:0/", "https://r..x/"] {
            assert!(https_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_escapes() {
        assert_eq!(percent_decode("a%2Cb%40").as_deref(), Some("a,b@"));
        assert_eq!(percent_decode("a%2"), None);
    }
}
