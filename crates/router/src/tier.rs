//! Model tiers in the router's domain, ordered from cheapest to strongest (the order "one tier
//! up" moves along), with their proto and config names.

use serde::{Deserialize, Serialize};
use tollgate_proto::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Local,
    Cheap,
    Standard,
    Premium,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Local, Tier::Cheap, Tier::Standard, Tier::Premium];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Cheap => "cheap",
            Tier::Standard => "standard",
            Tier::Premium => "premium",
        }
    }

    /// The next stronger tier; the strongest stays where it is.
    pub fn up(self) -> Tier {
        match self {
            Tier::Local => Tier::Cheap,
            Tier::Cheap => Tier::Standard,
            Tier::Standard | Tier::Premium => Tier::Premium,
        }
    }

    /// The next cheaper tier; the cheapest stays where it is.
    pub fn down(self) -> Tier {
        match self {
            Tier::Local | Tier::Cheap => Tier::Local,
            Tier::Standard => Tier::Cheap,
            Tier::Premium => Tier::Standard,
        }
    }

    /// `None` for TIER_UNSPECIFIED (and unknown numbers, which the caller reports).
    pub fn from_proto(value: i32) -> Option<Tier> {
        match pb::Tier::try_from(value).ok()? {
            pb::Tier::Unspecified => None,
            pb::Tier::Local => Some(Tier::Local),
            pb::Tier::Cheap => Some(Tier::Cheap),
            pb::Tier::Standard => Some(Tier::Standard),
            pb::Tier::Premium => Some(Tier::Premium),
        }
    }

    pub fn to_proto(self) -> pb::Tier {
        match self {
            Tier::Local => pb::Tier::Local,
            Tier::Cheap => pb::Tier::Cheap,
            Tier::Standard => pb::Tier::Standard,
            Tier::Premium => pb::Tier::Premium,
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
