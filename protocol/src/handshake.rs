//! Version ranges and negotiation.

use serde::{Deserialize, Serialize};

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u16,
    /// Newest version spoken.
    pub max: u16,
}

impl VersionRange {
    /// Whether `version` lies in the range.
    pub fn contains(&self, version: u16) -> bool {
        self.min <= version && version <= self.max
    }
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

/// Picks the newest version in both ranges, or `None` when they do not overlap
/// (or either range is empty).
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Option<u16> {
    let newest = ours.max.min(theirs.max);
    let oldest = ours.min.max(theirs.min);
    (oldest <= newest).then_some(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn picks_newest_common_version() {
        assert_eq!(negotiate(r(1, 3), r(2, 5)), Some(3));
        assert_eq!(negotiate(r(1, 1), r(1, 1)), Some(1));
        assert_eq!(negotiate(r(4, 9), r(1, 4)), Some(4));
    }

    #[test]
    fn disjoint_or_empty_ranges_do_not_negotiate() {
        assert_eq!(negotiate(r(1, 1), r(2, 2)), None);
        assert_eq!(negotiate(r(5, 6), r(1, 4)), None);
        assert_eq!(negotiate(r(1, 3), r(3, 1)), None);
    }

    #[test]
    fn displays_ranges() {
        assert_eq!(r(1, 1).to_string(), "1");
        assert_eq!(r(1, 3).to_string(), "1..=3");
        assert!(r(1, 3).contains(2) && !r(1, 3).contains(4));
    }
}
