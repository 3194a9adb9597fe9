//! Page tokens for every list: keyset pagination. A token carries the list's
//! name and the sort key of the last row of a page; the next page starts
//! strictly after it, so where the sort key of a row never changes, rows
//! written between two pages neither shift nor repeat the rows already seen.
//! Tokens are opaque to clients (hex of the key's parts), checked on the way in:
//! a token that does not decode is `INVALID_ARGUMENT` on `page_token`.

use crate::validate::Violations;

const SEPARATOR: char = '\u{1f}';

/// The token for a page that ended at a row with sort key `parts`.
pub fn encode(parts: &[&str]) -> String {
    let joined = parts.join(&SEPARATOR.to_string());
    joined.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The sort key in `token` (empty token: `None`, the first page). A token that
/// is not one of ours, or not of `arity` parts, is recorded as a violation.
pub fn decode(v: &mut Violations, token: &str, arity: usize) -> Option<Vec<String>> {
    if token.is_empty() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (token.len().is_multiple_of(2) && token.len() <= 2048)
        .then(|| {
            (0..token.len())
                .step_by(2)
                .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect()
        })
        .flatten();
    let parts: Option<Vec<String>> = bytes
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| s.split(SEPARATOR).map(String::from).collect())
        .filter(|p: &Vec<String>| p.len() == arity);
    if parts.is_none() {
        v.add("page_token", "is not a token this list gave out");
    }
    parts
}

/// The scope a token is good for: the list's name and a digest of the
/// filters the page was asked with. A token is taken back only with the same
/// filters: under others its key would start a page in another list, silently
/// skipping or repeating rows.
pub fn scope(list: &str, filters: &[&str]) -> String {
    // FNV-1a over the filters, each closed by a byte no text holds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in filters {
        for b in f.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{list}/{h:016x}")
}

/// The sort key in `token`, if it was given out for `scope` (see [`scope`]);
/// a token of another list or of other filters is a violation naming
/// `page_token`.
pub fn decode_scoped(v: &mut Violations, token: &str, scope: &str, arity: usize) -> Option<Vec<String>> {
    let mut parts = decode(v, token, arity + 1)?;
    if parts[0] != scope {
        let list = scope.split('/').next().unwrap_or(scope);
        match parts[0].split('/').next() == Some(list) {
            true => v.add("page_token", "was given out for other filters: ask the first page again with these"),
            false => v.add("page_token", format!("was given out by another list, not {list}")),
        }
        return None;
    }
    parts.remove(0);
    Some(parts)
}

/// The token for a page of `scope` that ended at sort key `parts`.
pub fn encode_scoped(scope: &str, parts: &[&str]) -> String {
    let mut all = vec![scope];
    all.extend_from_slice(parts);
    encode(&all)
}

/// A part of a decoded key that must be a number.
pub fn number(v: &mut Violations, part: &str) -> i64 {
    part.parse().unwrap_or_else(|_| {
        v.add("page_token", "is not a token this list gave out");
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_token_is_taken_back_only_with_its_filters() {
        let scope = scope("incidents", &["hl-s0", "1", ""]);
        let t = encode_scoped(&scope, &["1764000000000", "01jx"]);
        let mut v = Violations::default();
        assert_eq!(decode_scoped(&mut v, &t, &scope, 2), Some(vec!["1764000000000".into(), "01jx".into()]));
        assert!(v.finish().is_ok());
        // Other filters (the same texts split differently, too), another list.
        for other in [
            super::scope("incidents", &["hl-s1", "1", ""]),
            super::scope("incidents", &["hl-s0", "", "1"]),
            super::scope("incidents", &["hl-s01", "", ""]),
            super::scope("cases", &["hl-s0", "1", ""]),
        ] {
            let mut v = Violations::default();
            assert_eq!(decode_scoped(&mut v, &t, &other, 2), None, "{other}");
            let e = v.finish().expect_err("refused");
            assert!(format!("{e:?}").contains("page_token"), "{e:?}");
        }
    }

    #[test]
    fn a_token_round_trips_and_a_foreign_one_is_refused() {
        let mut v = Violations::default();
        let t = encode(&["1764000000000", "01jx-case"]);
        assert_eq!(decode(&mut v, &t, 2), Some(vec!["1764000000000".to_string(), "01jx-case".to_string()]));
        assert_eq!(decode(&mut v, "", 2), None);
        assert!(v.finish().is_ok());
        for bad in ["zz", "abc", &encode(&["one"]), "ff"] {
            let mut v = Violations::default();
            assert_eq!(decode(&mut v, bad, 2), None, "{bad}");
            assert!(v.finish().is_err(), "{bad} refused");
        }
    }
}
