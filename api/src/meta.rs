//! Object metadata shared by every kind, and the RFC 3339 timestamps the server writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `metadata` of every object. Server-owned fields (uid, resourceVersion, generation, timestamps)
/// are accepted in manifests but overwritten by the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// When `name` is empty on create, the server appends five random characters to this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The etcd mod revision of the stored object, as a decimal string (Kubernetes' shape).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// Bumped by the server on every change to the object's spec, never on status.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Set when a graceful deletion has started (pods bound to a node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A link from a dependent to its owner; deleting the owner cascades along these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    /// At most one owner of an object is its managing controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

impl ObjectMeta {
    /// The object's resourceVersion as a number (0 when unset or not a number).
    pub fn revision(&self) -> i64 {
        self.resource_version.parse().unwrap_or(0)
    }

    /// The owner reference marked `controller: true`, if any.
    pub fn controller_ref(&self) -> Option<&OwnerReference> {
        self.owner_references
            .iter()
            .find(|r| r.controller == Some(true))
    }
}

/// RFC 3339 timestamps in UTC, as Kubernetes writes them.
pub mod time {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// `2026-11-22T10:04:05Z`.
    pub fn format(t: SystemTime) -> String {
        let (date, secs) = split(t);
        format!(
            "{date}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }

    /// `2026-11-22T10:04:05.123456Z` (Kubernetes' MicroTime, used by leases).
    pub fn format_micros(t: SystemTime) -> String {
        let (date, secs) = split(t);
        let micros = t
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_micros();
        format!(
            "{date}T{:02}:{:02}:{:02}.{micros:06}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }

    /// The current time, formatted.
    pub fn now() -> String {
        format(SystemTime::now())
    }

    fn split(t: SystemTime) -> (String, u64) {
        let total = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let days = (total / 86_400) as i64;
        let (y, m, d) = civil_from_days(days);
        (format!("{y:04}-{m:02}-{d:02}"), total % 86_400)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; `None` if it is not that.
    pub fn parse(s: &str) -> Option<SystemTime> {
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = s.get(r)?;
            part.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
            return None;
        }
        if h > 23 || mi > 59 || se > 60 {
            return None;
        }
        let mut rest = &s[19..];
        let mut nanos = 0u32;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let mut n: u64 = 0;
            for (i, c) in frac[..digits].bytes().enumerate() {
                if i < 9 {
                    n = n * 10 + u64::from(c - b'0');
                }
            }
            for _ in digits..9 {
                n *= 10;
            }
            nanos = u32::try_from(n).ok()?;
            rest = &frac[digits..];
        }
        let offset = match rest {
            "Z" | "z" => 0,
            _ => {
                let sign = match rest.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                    return None;
                }
                sign * (num_str(&rest[1..3])? * 3600 + num_str(&rest[4..6])? * 60)
            }
        };
        let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset;
        let secs = u64::try_from(secs).ok()?;
        Some(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    fn num_str(s: &str) -> Option<i64> {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    }

    // Howard Hinnant's days-from-civil algorithms (public domain arithmetic).
    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn formats_and_parses_back_to_the_same_instant() {
            let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
            let s = format(t);
            assert_eq!(s, "2026-11-18T11:06:40Z");
            assert_eq!(parse(&s), Some(t));
            let m = UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
            assert_eq!(format_micros(m), "2026-11-18T11:06:40.123456Z");
            assert_eq!(parse(&format_micros(m)), Some(m));
        }

        #[test]
        fn formats_the_epoch_and_leap_days() {
            assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00Z");
            assert_eq!(
                format(UNIX_EPOCH + Duration::from_secs(951_782_400)),
                "2000-02-29T00:00:00Z"
            );
            assert_eq!(
                format(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
                "2024-02-29T23:59:59Z"
            );
            assert_eq!(
                format(UNIX_EPOCH + Duration::from_secs(1_795_354_200)),
                "2026-11-22T13:30:00Z"
            );
        }

        #[test]
        fn parses_offsets_and_refuses_junk() {
            assert_eq!(parse("1970-01-01T01:00:00+01:00"), Some(UNIX_EPOCH));
            assert_eq!(
                parse("2000-02-29T00:00:00Z"),
                Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
            );
            for bad in [
                "",
                "2026-13-01T00:00:00Z",
                "2026-11-22",
                "2026-11-22T10:00:00",
                "2026-11-22T10:00:00.Z",
                "yesterday-xx-xxTxx:xx:xxZ",
            ] {
                assert_eq!(parse(bad), None, "{bad}");
            }
        }
    }
}
