//! What shoppers do: actions and validated interactions.

use crate::domain::{ProductId, UserId};

/// What a shopper did with a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    View,
    Click,
    AddToCart,
    Purchase,
    /// Negative evidence: pushes similar products away.
    Dislike,
}

impl Action {
    /// The stored code: the action's number in the API.
    pub fn code(self) -> u8 {
        match self {
            Self::View => 1,
            Self::Click => 2,
            Self::AddToCart => 3,
            Self::Purchase => 4,
            Self::Dislike => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::View,
            2 => Self::Click,
            3 => Self::AddToCart,
            4 => Self::Purchase,
            5 => Self::Dislike,
            _ => return None,
        })
    }

    /// A stable lower-case name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::View => "view",
            Self::Click => "click",
            Self::AddToCart => "add_to_cart",
            Self::Purchase => "purchase",
            Self::Dislike => "dislike",
        }
    }

    /// For "because you ..." reasons.
    pub fn past_tense(self) -> &'static str {
        match self {
            Self::View => "viewed",
            Self::Click => "clicked",
            Self::AddToCart => "added to your cart",
            Self::Purchase => "bought",
            Self::Dislike => "disliked",
        }
    }
}

/// A validated interaction with an absolute time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    pub user: UserId,
    pub product: ProductId,
    pub action: Action,
    /// Unix epoch milliseconds, not in the future by more than a day.
    pub timestamp_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_codes_round_trip() {
        for a in [
            Action::View,
            Action::Click,
            Action::AddToCart,
            Action::Purchase,
            Action::Dislike,
        ] {
            assert_eq!(Action::from_code(a.code()), Some(a));
        }
        assert_eq!(Action::from_code(0), None);
    }
}
