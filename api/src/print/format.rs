//! The text of values every kind prints alike: placeholders, ages, label maps and selectors.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use crate::{meta::time, selector::LabelSelector};

/// What an empty list or unset value prints as.
pub const NONE: &str = "<none>";

/// What a value nobody has reported yet prints as.
pub const UNKNOWN: &str = "<unknown>";

/// `s`, or [`NONE`] when empty.
pub fn or_none(s: &str) -> String {
    if s.is_empty() { NONE } else { s }.to_owned()
}

/// `s`, or [`UNKNOWN`] when empty.
pub fn or_unknown(s: &str) -> String {
    if s.is_empty() { UNKNOWN } else { s }.to_owned()
}

/// The time from `t` to `now`; zero when `t` is ahead of this clock (a clock behind the
/// server's shows `0s`, not a negative age).
pub(super) fn since(t: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or_default()
}

/// `5s`, `3m`, `2h`, `4d`, `2y`: the largest whole unit.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        86_400..31_536_000 => format!("{}d", s / 86_400),
        _ => format!("{}y", s / 31_536_000),
    }
}

/// The AGE of an object created at `created` (RFC 3339), [`UNKNOWN`] without a timestamp.
pub fn age(created: Option<&str>, now: SystemTime) -> String {
    match created.and_then(time::parse) {
        Some(t) => human_duration(since(t, now)),
        None => UNKNOWN.to_owned(),
    }
}

/// `a=1,b=2`, [`NONE`] when empty.
pub fn labels(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return NONE.to_owned();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A spec selector as query text (`app=web`), [`NONE`] when empty.
pub fn selector(s: &LabelSelector) -> String {
    if s.is_empty() {
        return NONE.to_owned();
    }
    s.to_selector()
        .map_or_else(|e| format!("<invalid: {e}>"), |sel| sel.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let cases = [
            (0, "0s"),
            (5, "5s"),
            (59, "59s"),
            (60, "1m"),
            (180, "3m"),
            (3_599, "59m"),
            (3_600, "1h"),
            (7_200, "2h"),
            (86_400, "1d"),
            (4 * 86_400 + 3_600, "4d"),
            (31_536_000, "1y"),
            (800 * 86_400, "2y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), want, "{secs}");
        }
    }

    #[test]
    fn an_age_is_unknown_without_a_timestamp_and_never_negative() {
        // 2026-11-18T11:06:40Z.
        let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(age(None, now), "<unknown>");
        assert_eq!(age(Some("2026-11-18T11:06:35Z"), now), "5s");
        assert_eq!(age(Some("2026-11-18T12:00:00Z"), now), "0s");
    }

    #[test]
    fn empty_labels_and_selectors_print_as_none() {
        assert_eq!(labels(&BTreeMap::new()), "<none>");
        let l: BTreeMap<String, String> = [("app", "web"), ("tier", "fe")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        assert_eq!(labels(&l), "app=web,tier=fe");
        assert_eq!(selector(&LabelSelector::default()), "<none>");
        let s = LabelSelector {
            match_labels: l,
            ..LabelSelector::default()
        };
        assert_eq!(selector(&s), "app=web,tier=fe");
    }
}
