//! The machinery behind the one declaration of a group's numbers (`group.rs`): what the
//! declaration says of each field ([`Field`], [`Kind`]), the walk over a group's values that
//! the views and the exporters share ([`Visit`]), and the macro that turns the declaration into
//! [`GroupReport`](super::GroupReport) and its metadata.

use super::TierShare;

/// What kind of number a field holds; it fixes how the field is summed from the ledger, how
/// many CSV columns it writes and how a view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The group's label: one CSV text cell.
    Key,
    /// Integer micro-USD: CSV micros and dollars; summed as is.
    Money,
    /// Micro-USD that may not exist: CSV micros and dollars, both empty when missing.
    OptMoney,
    /// A count: one CSV cell; summed, never below zero; exported as a Prometheus counter.
    Count,
    /// A ratio or a score that may not exist: one CSV cell with six decimals, empty when missing.
    Ratio,
    /// Hours: one CSV cell with four decimals; summed from the ledger's seconds.
    Hours,
    /// Decisions and spend per tier: CSV `tier:tasks` and `tier:spend_micros` lists.
    Tiers,
}

impl Kind {
    /// How many CSV columns a field of this kind writes.
    pub const fn csv_width(self) -> usize {
        match self {
            Kind::Money | Kind::OptMoney | Kind::Tiers => 2,
            Kind::Key | Kind::Count | Kind::Ratio | Kind::Hours => 1,
        }
    }
}

/// The Prometheus family a field's ledger increments are exported to (the `tokenwise_` prefix
/// and a counter's `_total` are added by the registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    /// Family name.
    pub name: &'static str,
    /// Its help text; `None` on a second field exported to the same family.
    pub help: Option<&'static str>,
}

/// What the declaration says of one field of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Field name (in Rust, the JSON and the proto alike).
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its place among the CSV's fields (after `group_by`), ascending.
    pub csv: u32,
    /// Its CSV column names ([`Kind::csv_width`] of them).
    pub csv_columns: &'static [&'static str],
    /// The ledger metric whose sum it is; `None` for a field the report derives from others.
    pub ledger: Option<&'static str>,
    /// Where its ledger increments are exported, if they are.
    pub export: Option<Export>,
    /// Its label in a column of its own in the table and the page (before the tier mix); `None`
    /// for the fields those views lay out by hand, or not at all.
    pub column: Option<&'static str>,
}

/// A walk over one group's values in declaration order, one method per [`Kind`]: how a view
/// (CSV, table, page) handles each kind of number without listing the fields itself.
pub trait Visit {
    /// The group's label.
    fn key(&mut self, f: &Field, v: &str);
    /// Micro-USD.
    fn money(&mut self, f: &Field, v: &i64);
    /// Micro-USD that may not exist.
    fn opt_money(&mut self, f: &Field, v: &Option<i64>);
    /// A count.
    fn count(&mut self, f: &Field, v: &u64);
    /// A ratio or score that may not exist.
    fn ratio(&mut self, f: &Field, v: &Option<f64>);
    /// Hours.
    fn hours(&mut self, f: &Field, v: &f64);
    /// Decisions and spend per tier.
    fn tiers(&mut self, f: &Field, v: &[TierShare]);
}

/// A summed field's value from its ledger metric's sum, by kind (only these kinds are sums).
pub mod sums {
    /// A count: negative sums (which a store can only hold if corrupted) read as zero.
    pub fn count(sum: i64) -> u64 {
        sum.max(0) as u64
    }

    /// Micro-USD, as summed.
    pub fn money(sum: i64) -> i64 {
        sum
    }

    /// Hours, from the ledger's seconds.
    pub fn hours(seconds: i64) -> f64 {
        seconds as f64 / 3600.0
    }
}

/// Turns the declaration of a group's fields (in the grammar of `group_report_fields!`) into
/// the [`GroupReport`](super::GroupReport) struct, its [`Field`] metadata (`FIELDS`), its
/// `from_sums` and `visit`, and a compile-time check that each field names as many CSV columns
/// as its kind writes.
macro_rules! define_group_report {
    (@kind key) => { $crate::report::field::Kind::Key };
    (@kind money) => { $crate::report::field::Kind::Money };
    (@kind opt_money) => { $crate::report::field::Kind::OptMoney };
    (@kind count) => { $crate::report::field::Kind::Count };
    (@kind ratio) => { $crate::report::field::Kind::Ratio };
    (@kind hours) => { $crate::report::field::Kind::Hours };
    (@kind tiers) => { $crate::report::field::Kind::Tiers };
    (@opt) => { None };
    (@opt $e:expr) => { Some($e) };
    ($(
        $(#[$attr:meta])*
        $name:ident: $ty:ty {
            $kind:ident, csv($csv:literal: $($column:literal),+)
            $(, sum($metric:ident) $(, prometheus($family:literal $(, $help:literal)?))?)?
            $(, column($label:literal))?
        }
    ),+ $(,)?) => {
        /// The numbers of one group (or of the total). Declared once, field by field, in
        /// `report/group.rs`: the proto conversion, the CSV, the table's and the page's own
        /// columns and the Prometheus families follow from that declaration ([`Self::FIELDS`]).
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, Default)]
        pub struct GroupReport {
            $( $(#[$attr])* pub $name: $ty, )+
        }

        /// Each field's metadata, one constant a field, named after it.
        #[allow(non_upper_case_globals)]
        mod declared {
            use $crate::report::field::{Export, Field};
            $(
                pub(super) const $name: Field = Field {
                    name: stringify!($name),
                    kind: $crate::report::field::define_group_report!(@kind $kind),
                    csv: $csv,
                    csv_columns: &[$($column),+],
                    ledger: $crate::report::field::define_group_report!(@opt $($crate::domain::books::metric::$metric)?),
                    export: $crate::report::field::define_group_report!(@opt $($(Export {
                        name: $family,
                        help: $crate::report::field::define_group_report!(@opt $($help)?),
                    })?)?),
                    column: $crate::report::field::define_group_report!(@opt $($label)?),
                };
                const _: () = assert!(
                    $name.kind.csv_width() == $name.csv_columns.len(),
                    concat!(stringify!($name), ": as many CSV columns as its kind writes")
                );
            )+
        }

        impl GroupReport {
            /// Every field's metadata, in declaration (struct, JSON) order.
            pub const FIELDS: &'static [$crate::report::field::Field] = &[$(declared::$name),+];

            /// A group with every summed field set from `sum` (the sum of a ledger metric over
            /// the group); the fields the report derives are left at their defaults.
            pub fn from_sums(sum: impl Fn(&str) -> i64) -> Self {
                Self {
                    $($(
                        $name: $crate::report::field::sums::$kind(
                            sum($crate::domain::books::metric::$metric),
                        ),
                    )?)+
                    ..Self::default()
                }
            }

            /// Walks the fields in declaration order, each by its kind.
            pub fn visit(&self, v: &mut impl $crate::report::field::Visit) {
                $( v.$kind(&declared::$name, &self.$name); )+
            }
        }
    };
}

pub(super) use define_group_report;
